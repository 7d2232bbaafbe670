"""What was lost and what was gained: perplexity and zero-shot accuracy (speed: `structprune.speed`).

Perplexity follows the pruning papers' protocol (FLAP `lib/eval.py`, LLM-Pruner `evaluator/ppl.py`):
the evaluation text is tokenised once, cut into non-overlapping windows of `seqlen` tokens (the
remainder dropped), each window scored on its seqlen - 1 next-token predictions, and
PPL = exp(mean token NLL). FLAP and LLM-Pruner use seqlen 128; Wanda/SparseGPT use 2048.
"""

from __future__ import annotations

import math
import os
import time
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F

from .architectures import window_bos_id
from .data import default_data_dir, evaluation_text
from .loglikelihood import shared_context_lm
from .progress import progress


def model_context_length(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


BATCH_TOKENS = 4096


def check_windows(model, ids: torch.Tensor, seqlen: int, max_windows: int | None, batch_size: int) -> torch.Tensor:
    """The [windows, seqlen] evaluation windows of `ids`, after checking the arguments against the model."""
    for name, value, least in (("seqlen", seqlen, 2), ("max_windows", max_windows, 1), ("batch_size", batch_size, 1)):
        if value is not None and (not isinstance(value, int) or value < least):
            raise ValueError(f"{name} must be a whole number of at least {least}, got {value!r}")
    context = model_context_length(model)
    if context is not None and seqlen > context:
        raise ValueError(f"seqlen {seqlen} is longer than the model's context ({context} tokens): use seqlen <= {context}")
    bos = window_bos_id(model)
    if bos is not None:  # each window: BOS, then seqlen - 1 tokens of the text, all of them scored
        ids = ids[1:] if ids.numel() and ids[0] == bos else ids
    width = seqlen - (bos is not None)
    windows = ids.numel() // width
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows < 1:
        raise ValueError(f"the evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    chunks = ids[: windows * width].view(windows, width)
    return chunks if bos is None else torch.cat([torch.full((windows, 1), bos, dtype=chunks.dtype), chunks], 1)


@torch.no_grad()
def perplexity_of_ids(model, ids: torch.Tensor, seqlen: int, max_windows: int | None = None,
                      batch_size: int = 8) -> dict:
    """Perplexity of a 1-D tensor of token ids over non-overlapping windows of `seqlen` tokens."""
    chunks = check_windows(model, ids, seqlen, max_windows, batch_size)
    windows = chunks.shape[0]
    device = next(model.parameters()).device
    # At most BATCH_TOKENS tokens per forward: a batch's logits are tokens x vocabulary floats (8 x 2048 x 49,152
    # is 3 GiB), and past that size the batch is slower, not faster (3x at seqlen 2048 on a 2-core CPU).
    batch_size = max(1, min(batch_size, BATCH_TOKENS // seqlen))
    total_nll, total_tokens, window_nll = 0.0, 0, []
    start = time.perf_counter()
    for first in progress(range(0, windows, batch_size), f"perplexity ({windows} windows of {seqlen})", unit="batch"):
        batch = chunks[first:first + batch_size].to(device)
        logits = model(batch, use_cache=False).logits.float()
        flat_logits, targets = logits[:, :-1].reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1)
        per_token = F.cross_entropy(flat_logits, targets, reduction="none")  # one pass over the vocabulary
        total_nll += per_token.sum().item()  # float32 sum, as reduction="sum" would give
        total_tokens += batch[:, 1:].numel()
        window_nll += per_token.double().view(len(batch), -1).mean(1).tolist()
    return summarise_windows(window_nll, total_nll, total_tokens, seqlen, time.perf_counter() - start)


def summarise_windows(window_nll: list[float], total_nll: float, total_tokens: int, seqlen: int,
                      seconds: float) -> dict:
    """A perplexity result from the windows' negative log-likelihoods."""
    mean_nll = total_nll / total_tokens
    if not math.isfinite(mean_nll):
        raise FloatingPointError(f"the model's loss is {mean_nll} on these windows (NaN or Inf in its outputs): the "
                                 "weights are damaged or overflow in this dtype; check them, or evaluate in float32")
    low, high = perplexity_interval(window_nll)
    return {
        "perplexity": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "ci95": [low, high],  # delta method over windows (perplexity_interval)
        "window_nll": window_nll,  # per window: paired comparisons of two models on the same windows
        "windows": len(window_nll),
        "tokens": total_tokens,
        "seqlen": seqlen,
        "seconds": seconds,
    }


def average_stderr(tasks: dict) -> float | None:
    """Standard error of the unweighted task average: sqrt(sum of squared task standard errors) / tasks (the
    tasks' documents are independent). Each task's is lm-eval's stderr of its paper metric (acc for BoolQ and
    WinoGrande, acc_norm for the others); None when a task has none."""
    errors = [t.get(f"{PAPER_METRIC.get(name, 'acc')}_stderr") for name, t in tasks.items()]
    if not errors or any(e is None or e != e for e in errors):
        return None
    return math.sqrt(sum(e * e for e in errors)) / len(errors)


Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def perplexity_interval(window_nll: list[float], z: float = Z95) -> tuple[float, float]:
    """95 % interval of the perplexity over evaluation windows, by the delta method on the log scale: every
    window has the same number of predicted tokens, so log PPL is the mean of the window mean NLLs; its
    standard error is their sample standard deviation / sqrt(windows), and the interval is
    exp(mean +- z SE). One window gives no spread: the interval is the point."""
    values = torch.tensor(window_nll, dtype=torch.float64)
    mean = values.mean().item()
    se = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return math.exp(mean - z * se), math.exp(mean + z * se)


def paired_perplexity(a: dict, b: dict, z: float = Z95) -> dict:
    """Model a against model b on the same windows (two perplexity results with `window_nll`): the ratio
    PPL_a / PPL_b = exp(mean of the per-window NLL differences), its 95 % interval from the paired standard
    error, and the verdict: "a lower", "b lower", or "not distinguishable" when the interval includes 1."""
    if "window_nll" not in a or "window_nll" not in b:
        raise ValueError("paired comparisons need per-window losses (window_nll): records computed before they were "
                         "kept have none; compute them again")
    if len(a["window_nll"]) != len(b["window_nll"]) or a.get("seqlen") != b.get("seqlen"):
        raise ValueError(f"not the same windows: {len(a['window_nll'])} x {a.get('seqlen')} against "
                         f"{len(b['window_nll'])} x {b.get('seqlen')} tokens")
    diff = torch.tensor(a["window_nll"], dtype=torch.float64) - torch.tensor(b["window_nll"], dtype=torch.float64)
    mean = diff.mean().item()
    se = diff.std().item() / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
    low, high = math.exp(mean - z * se), math.exp(mean + z * se)
    verdict = "a lower" if high < 1 else "b lower" if low > 1 else "not distinguishable"
    return {"ratio": math.exp(mean), "ci95": [low, high], "windows": len(diff), "verdict": verdict}


def paired_accuracy(a: dict, b: dict, z: float = Z95) -> dict:
    """Model a against model b on the same documents (two `zero_shot` results with per-document `correct`):
    per task and for the unweighted task average, the difference of the paper metric a - b, the standard
    error of the paired per-document differences (sd / sqrt(n)), the 95 % interval, and the verdict: "a
    higher", "b higher", or "not distinguishable" when the interval includes 0. The average's standard error
    is sqrt(sum of the tasks' squared errors) / tasks (the tasks' documents are independent)."""

    def compared(difference: float, se: float, **extra) -> dict:
        low, high = difference - z * se, difference + z * se
        verdict = "a higher" if low > 0 else "b higher" if high < 0 else "not distinguishable"
        return {"difference": difference, "se": se, "ci95": [low, high], "verdict": verdict, **extra}

    tasks = {}
    for name, task in a["tasks"].items():
        other = b["tasks"].get(name)
        if "correct" not in task or other is None or "correct" not in other:
            raise ValueError(f"paired comparisons need per-document results ({name}: `correct`); records computed "
                             "before they were kept have none: compute them again")
        if len(task["correct"]) != len(other["correct"]):
            raise ValueError(f"{name}: not the same documents ({len(task['correct'])} against {len(other['correct'])})")
        diff = torch.tensor(task["correct"], dtype=torch.float64) - torch.tensor(other["correct"], dtype=torch.float64)
        se = diff.std().item() / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
        tasks[name] = compared(diff.mean().item(), se, documents=len(diff))
    average = sum(t["difference"] for t in tasks.values()) / len(tasks)
    average_se = math.sqrt(sum(t["se"] ** 2 for t in tasks.values())) / len(tasks)
    return {"tasks": tasks, "average": compared(average, average_se)}


# Tokenised evaluation texts of this process (WikiText-2 test: about 1 s to tokenise, the C4 sample 5 s): a
# sweep evaluates many models on the same text. Keyed by the text's source and the tokenizer's identity.
_EVALUATION_IDS: dict[tuple, torch.Tensor] = {}


def evaluation_ids(tokenizer, dataset: str, split: str, data_path=None) -> torch.Tensor:
    """The token ids of a dataset's evaluation text (joined as the papers join it), tokenised once."""
    key = (dataset, split, str(data_path), os.environ.get("STRUCTPRUNE_DATA"), tokenizer.name_or_path,
           len(tokenizer), type(tokenizer).__name__)
    if key not in _EVALUATION_IDS:
        text = evaluation_text(dataset, split, data_path)
        if len(_EVALUATION_IDS) >= 4:
            _EVALUATION_IDS.pop(next(iter(_EVALUATION_IDS)))
        _EVALUATION_IDS[key] = torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)
    return _EVALUATION_IDS[key]


def perplexity(model, tokenizer, dataset: str = "wikitext2", split: str = "test", seqlen: int = 128,
               max_windows: int | None = None, batch_size: int = 8, data_path=None) -> dict:
    """Perplexity on a dataset's evaluation split; the result carries its protocol."""
    ids = evaluation_ids(tokenizer, dataset, split, data_path)
    return with_protocol(perplexity_of_ids(model, ids, seqlen, max_windows, batch_size), dataset, split, max_windows,
                         ids)


def with_protocol(result: dict, dataset: str, split: str, max_windows: int | None, ids: torch.Tensor) -> dict:
    """A perplexity result with the evaluation set and windows it was measured on."""
    result.update({
        "dataset": dataset, "split": split, "max_windows": max_windows, "text_tokens": ids.numel(),
        "protocol": f"non-overlapping {result['seqlen']}-token windows, first {result['windows']} of "
                    f"{ids.numel() // result['seqlen']}",
    })
    return result


# ---------------------------------------------------------------------------------------------------------
# Zero-shot accuracy through EleutherAI's lm-evaluation-harness (lm-eval 0.4.13), never re-implemented.

PAPER_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
# Local mirrors in src/structprune/tasks/ (official prompts, choices, targets and metrics on the files of
# the data folder). HellaSwag's local copy is a derived text: an approximation, named so.
LOCAL_TASKS = {
    "boolq": "boolq_local", "piqa": "piqa_local", "hellaswag": "hellaswag_approx_local",
    "winogrande": "winogrande_local", "arc_easy": "arc_easy_local", "arc_challenge": "arc_challenge_local",
    "openbookqa": "openbookqa_local",
}
# The papers' metric per task (FLAP's and LLM-Pruner's tables): acc for BoolQ and WinoGrande, acc_norm for the other five.
PAPER_METRIC = {"boolq": "acc", "winogrande": "acc", "piqa": "acc_norm", "hellaswag": "acc_norm",
                "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "openbookqa": "acc_norm"}


def tasks_dir() -> Path:
    return Path(__file__).resolve().parent / "tasks"


LOGLIKELIHOOD_LOOPS = ("shared_context", "lm_eval")


def zero_shot(model, tokenizer, tasks=PAPER_TASKS, limit: int | None = None, batch_size: int = 8,
              source: str = "auto", data_path=None, loglikelihood: str = "shared_context") -> dict:
    """Zero-shot accuracy of an in-memory model on lm-eval tasks.

    tasks: official names (boolq, piqa, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa).
    source: `local` runs the mirrors in structprune/tasks on the data folder; `official` runs lm-eval's
    own tasks (needs their data from the hub); `auto` is local when the data folder has the task files.
    limit: the first N documents of each task (a documented fixed subset), None for all.
    loglikelihood: `shared_context` scores the answers of a question behind one pass over its context
    (`structprune.loglikelihood`, the same log-probabilities up to float rounding); `lm_eval` runs lm-eval's
    own loop. Tasks, prompts, metrics and standard errors are lm-eval's either way.
    Returns per task acc and acc_norm with stderr, the number of documents, the task version, the
    paper's metric for the task, and the average of the paper metrics.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager


    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in LOCAL_TASKS]
    if unknown:
        raise ValueError(f"unknown zero-shot task(s) {', '.join(unknown)}: choose from {', '.join(PAPER_TASKS)}")
    if source == "auto":
        folder = data_path or default_data_dir()
        local = folder is not None and (Path(folder) / "boolq").is_dir()
        if not local and any(os.environ.get(v, "").lower() in ("1", "true", "yes")
                             for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")):
            raise FileNotFoundError(f"no local zero-shot task data in {folder or 'the data folder (STRUCTPRUNE_DATA unset)'}"
                                    " and the hub is offline: set STRUCTPRUNE_DATA to the data folder, or run online "
                                    "with --task-source official")
        source = "local" if local else "official"
    if source not in ("local", "official"):
        raise ValueError(f"source must be auto, local or official, got {source!r}")
    names = {t: LOCAL_TASKS[t] if source == "local" else t for t in tasks}
    manager = TaskManager(include_path=str(tasks_dir()),
                          metadata={"data_path": str(data_path)} if data_path else None)
    if loglikelihood not in LOGLIKELIHOOD_LOOPS:
        raise ValueError(f"loglikelihood must be one of {', '.join(LOGLIKELIHOOD_LOOPS)}, got {loglikelihood!r}")
    lm = (shared_context_lm(model, tokenizer, batch_size) if loglikelihood == "shared_context"
          else HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size))
    start = time.perf_counter()
    output = simple_evaluate(model=lm, tasks=list(names.values()), task_manager=manager, limit=limit,
                             num_fewshot=0, log_samples=True, bootstrap_iters=100)  # mean metrics: closed-form stderr
    seconds = time.perf_counter() - start
    results = {}
    for task, name in names.items():
        raw = output["results"][name]
        entry = {"task": name, "source": source, "version": output["versions"].get(name),
                 "documents": output["n-samples"][name]["effective"], "paper_metric": PAPER_METRIC[task],
                 "approximation": task == "hellaswag" and source == "local"}
        for metric in ("acc", "acc_norm"):
            if f"{metric},none" in raw:
                entry[metric] = raw[f"{metric},none"]
                entry[f"{metric}_stderr"] = raw.get(f"{metric}_stderr,none")
        entry["score"] = entry[PAPER_METRIC[task]]
        entry["score_stderr"] = entry.get(f"{PAPER_METRIC[task]}_stderr")
        # per document, in document order: 1 where the paper metric counts it correct (paired comparisons)
        samples = sorted(output["samples"][name], key=lambda sample: sample["doc_id"])
        entry["correct"] = [int(sample[PAPER_METRIC[task]]) for sample in samples]
        results[task] = entry
    return {
        "tasks": results,
        "average": sum(r["score"] for r in results.values()) / len(results),
        "average_stderr": average_stderr(results),
        "metric_convention": "acc for boolq and winogrande, acc_norm for the others; average unweighted",
        "limit": limit, "num_fewshot": 0, "seconds": seconds, "lm_eval_version": version("lm_eval"),
        "loglikelihood": loglikelihood,
    }
