"""Zero-shot evaluation: the local task mirrors yield the official lm-eval tasks' documents, and the
scores come from lm-eval itself."""

import bz2
import gzip
import json
from pathlib import Path

import datasets
import lm_eval
import pytest
import torch
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks._yaml_loader import load_yaml

from structprune.data import default_data_dir
from structprune.evaluate import LOCAL_TASKS, PAPER_METRIC, tasks_dir, zero_shot

OFFICIAL = Path(lm_eval.__file__).parent / "tasks"
OFFICIAL_YAML = {
    "boolq": "super_glue/boolq/default.yaml", "piqa": "piqa/piqa.yaml", "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
}


def _lines(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def hf_rows(task: str) -> tuple[str, list[dict]]:
    """Rows in the Hugging Face datasets' shape, read here directly from the files as shared/data/README.md
    documents them (independently of structprune's loaders)."""
    data = default_data_dir()
    if task == "boolq":
        return "validation", [{**r, "label": {"true": 1, "false": 0}[r["label"]]} for r in _lines(data / "boolq/val.jsonl.gz")]
    if task == "piqa":
        labels = (data / "piqa/valid-labels.lst").read_text().split()
        return "validation", [{**r, "label": int(y)} for r, y in zip(_lines(data / "piqa/valid.jsonl"), labels, strict=True)]
    if task == "winogrande":
        return "validation", _lines(data / "winogrande/dev.jsonl")
    files = {"arc_easy": "arc/ARC-Easy-Test.jsonl", "arc_challenge": "arc/ARC-Challenge-Test.jsonl",
             "openbookqa": "openbookqa/test.jsonl"}
    field = "question_stem" if task == "openbookqa" else "question"
    rows = [{"id": r["id"], field: r["question"]["stem"], "answerKey": r["answerKey"],
             "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                         "label": [c["label"] for c in r["question"]["choices"]]}} for r in _lines(data / files[task])]
    return "test", rows


def official_task(task: str, split: str, rows: list[dict]) -> ConfigurableTask:
    """lm-eval's own task config (prompts, choices, targets, metrics, processing), fed the given rows."""
    config = load_yaml(OFFICIAL / OFFICIAL_YAML[task])
    dropped = ("dataset_path", "dataset_name", "tag", "training_split", "validation_split", "test_split")
    config = {k: v for k, v in config.items() if k not in dropped}
    config[f"{split}_split"] = split  # the split the paper evaluates (validation, or test for ARC/OBQA)
    config["custom_dataset"] = lambda **_: datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})
    return ConfigurableTask(config=config)


def local_task(task: str) -> ConfigurableTask:
    return ConfigurableTask(config=load_yaml(tasks_dir() / f"{LOCAL_TASKS[task]}.yaml"))


def documents(task: ConfigurableTask) -> list[tuple]:
    docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
    return [(task.doc_to_text(d), task.doc_to_choice(d), task.doc_to_target(d)) for d in docs]


@pytest.mark.parametrize("task", ["boolq", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa"])
@pytest.mark.slow
def test_local_task_yields_the_official_documents(task):
    split, rows = hf_rows(task)
    official, local = official_task(task, split, rows), local_task(task)
    expected = {"boolq": 3270, "piqa": 1838, "winogrande": 1267, "arc_easy": 2376, "arc_challenge": 1172,
                "openbookqa": 500}[task]
    assert documents(local) == documents(official)
    assert len(documents(local)) == expected
    assert local.config.metadata["version"] == official.config.metadata["version"]
    assert [m["metric"] for m in local.config.metric_list] == [m["metric"] for m in official.config.metric_list]


@pytest.mark.slow
def test_hellaswag_approximation_is_official_processing_without_the_ctx_split():
    """The derived file joined ctx_a and ctx_b and dropped the split. Fed to lm-eval's own HellaSwag
    processing with the whole context as ctx_a (ctx_b empty), the official task yields exactly the local
    documents. So the only difference from the real task is letter case inside ctx_b, which lm-eval
    passes through str.capitalize() (first letter upper, the rest lower): queries can differ in case,
    never in any other character; choices and gold labels are identical."""
    local = local_task("hellaswag")
    with bz2.open(default_data_dir() / "hellaswag/hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as handle:
        lines = handle.read().rstrip("\n").split("\n")
    rows = []
    for i in range(0, len(lines), 6):
        activity_label, _, ctx = lines[i].partition(": ")
        rows.append({"activity_label": activity_label, "ctx_a": ctx, "ctx_b": "", "endings": lines[i + 2:i + 6],
                     "label": lines[i + 1]})
    official = official_task("hellaswag", "validation", rows)
    ours, theirs = documents(local), documents(official)
    assert len(ours) == 10042
    assert [(c, g) for _, c, g in ours] == [(c, g) for _, c, g in theirs]
    assert sum(q1 != q2 for (q1, _, _), (q2, _, _) in zip(ours, theirs, strict=True)) == 0


def test_task_file_with_a_missing_field_is_refused(tmp_path):
    from structprune.tasks import local_data

    (tmp_path / "winogrande").mkdir()
    (tmp_path / "winogrande" / "dev.jsonl").write_text(json.dumps({"sentence": "a _ b", "option1": "x"}) + "\n")
    with pytest.raises(ValueError, match="row 1: missing field\\(s\\) option2, answer"):
        local_data.winogrande_rows(str(tmp_path))


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown zero-shot task\\(s\\) rte"):
        zero_shot(None, None, tasks=["rte"])


@pytest.mark.embedded
def test_zero_shot_scores_are_lm_evals_loglikelihood_argmax(embedded):
    model, tokenizer = embedded
    result = zero_shot(model, tokenizer, tasks=["arc_easy", "boolq"], limit=6, batch_size=4)
    arc = result["tasks"]["arc_easy"]
    assert arc["documents"] == 6 and arc["source"] == "local" and arc["version"] == 1.0
    assert arc["paper_metric"] == PAPER_METRIC["arc_easy"] == "acc_norm" and arc["score"] == arc["acc_norm"]
    assert arc["acc_stderr"] > 0 and result["tasks"]["boolq"]["score"] == result["tasks"]["boolq"]["acc"]
    assert result["average"] == pytest.approx((arc["acc_norm"] + result["tasks"]["boolq"]["acc"]) / 2)
    # Independent scoring of the same six questions: sum of continuation log-probabilities, argmax.
    _, rows = hf_rows("arc_easy")
    correct = correct_norm = 0
    for row in rows[:6]:
        context = f"Question: {row['question']}\nAnswer:"
        scores, lengths = [], []
        for choice in row["choices"]["text"]:
            ctx_ids = tokenizer(context).input_ids
            cont_ids = tokenizer(context + " " + choice).input_ids[len(ctx_ids):]
            ids = torch.tensor([ctx_ids + cont_ids])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(ids).logits[0].double(), -1)
            scores.append(sum(logprobs[len(ctx_ids) + k - 1, t].item() for k, t in enumerate(cont_ids)))
            lengths.append(len(" " + choice))
        gold = row["choices"]["label"].index(row["answerKey"])
        correct += max(range(len(scores)), key=scores.__getitem__) == gold
        correct_norm += max(range(len(scores)), key=lambda i: scores[i] / lengths[i]) == gold
    assert arc["acc"] == pytest.approx(correct / 6)
    assert arc["acc_norm"] == pytest.approx(correct_norm / 6)


@pytest.mark.slow  # lm-eval builds its tasks: about 15 s
def test_shared_context_loop_scores_as_lm_evals_own_and_keeps_each_document():
    from structprune.models import load_model

    model, tokenizer = load_model("tiny-smollm2")
    tasks = ["arc_easy", "boolq", "winogrande"]  # shared contexts, one-token answers, shared continuations
    ours = zero_shot(model, tokenizer, tasks, limit=6)
    theirs = zero_shot(model, tokenizer, tasks, limit=6, loglikelihood="lm_eval")
    assert ours["loglikelihood"] == "shared_context" and theirs["loglikelihood"] == "lm_eval"
    for task, result in ours["tasks"].items():
        other = theirs["tasks"][task]
        assert (result["acc"], result.get("acc_norm"), result["correct"]) == (
            other["acc"], other.get("acc_norm"), other["correct"])
        assert len(result["correct"]) == result["documents"] == 6
        assert result["score"] == pytest.approx(sum(result["correct"]) / 6)
    with pytest.raises(ValueError, match="loglikelihood must be one of"):
        zero_shot(model, tokenizer, tasks=["boolq"], limit=1, loglikelihood="fast")
