"""The runs the notebooks are made of: prune -> perplexity, then zero-shot and speed of the same plan.

Each run is a record (`records.run_once`): an interrupted notebook resumes where it stopped and a finished
run is never repeated. A pruning record stores the whole plan (kept units and compensation biases), so
zero-shot and speed runs rebuild the pruned model with `apply_plan` instead of pruning again, and FLAP's
one-shot statistics are cached across ratios and ablations (`stats.collect_statistics`).

Every config carries its protocol: model spec, method and options, calibration set, sample count,
length and seed, evaluation set, window length and subset, zero-shot tasks and limit.
"""

from __future__ import annotations

import copy
import functools

from .api import prune
from .apply import apply_plan
from .architectures import count_parameters, window_bos_id
from .composition import COMPOSED, Composition, compose, composition_from
from .data import calibration_batches, random_calibration, token_digest
from .evaluate import PAPER_TASKS, perplexity, zero_shot
from .methods import get_method, resolve_options
from .plan import Plan
from .progress import progress
from .records import config_hash, run_once
from .speed import macs_per_token, prefill_macs, speed


@functools.lru_cache(maxsize=2)
def _dense(spec: str, device: str = "cpu", dtype: str = "float32"):
    from .models import load_model  # transformers: only when a run computes

    return load_model(spec, dtype=dtype, device=device)


# Where a profile's runs compute. A config names its device and dtype only when they differ from this, so a
# record's numbers never depend on which machine ran the notebook (a GPU in reach does not switch to float16).
DEFAULT_PRECISION = {"device": "cpu", "dtype": "float32"}


def precision_of(settings_or_config: dict) -> dict:
    """{"device", "dtype"} of a profile's settings or of a run config (CPU float32 unless they say otherwise)."""
    return {key: settings_or_config.get(key) or value for key, value in DEFAULT_PRECISION.items()}


def dense_model(spec: str, device: str = "cpu", dtype: str = "float32"):
    """A fresh copy of the dense model `spec` (loaded once per process) and its tokenizer."""
    model, tokenizer = _dense(spec, device, dtype)
    fresh = copy.deepcopy(model)
    fresh.structprune_source = model.structprune_source
    return fresh, tokenizer


def calibration_of(settings: dict, method: str, nsamples: int | None = None) -> dict | None:
    """The calibration protocol of `method` under a profile: its paper's set, the profile's counts."""
    dataset, paper_nsamples, seqlen = get_method(method).calibration
    dataset, count, seqlen = settings["calibration"].get(method, (dataset, paper_nsamples, seqlen))
    if dataset is None:
        return None
    return {"dataset": dataset, "nsamples": nsamples or count, "seqlen": seqlen, "seed": settings["seed"]}


def evaluation_of(settings: dict, max_windows: int | None = None) -> dict:
    windows = settings["eval_max_windows"] if max_windows is None else max_windows
    return {"dataset": settings["eval_dataset"], "split": "test", "seqlen": settings["eval_seqlen"],
            "max_windows": windows}


def _prune_as_configured(model, tokenizer, config: dict):
    """Run the pruning a pruning-run config describes (method or composition, ratio or target_params, options,
    calibration, seed)."""
    calibration, options = config["calibration"] or {}, config["options"]
    if config["method"] == COMPOSED:  # a composition of parts: its options are its whole description
        return prune(model, composition_from(options), config["ratio"], calibration=calibration.get("dataset"),
                     tokenizer=tokenizer, nsamples=calibration.get("nsamples"), seqlen=calibration.get("seqlen"),
                     seed=calibration.get("seed", 0), target_params=config.get("target_params"))
    return prune(model, config["method"], config["ratio"], calibration=calibration.get("dataset"),
                 tokenizer=tokenizer, nsamples=calibration.get("nsamples"), seqlen=calibration.get("seqlen"),
                 seed=options.get("seed", calibration.get("seed", 0)), target_params=config.get("target_params"),
                 # LLM-Pruner's own target_params option is always None in records: prune's argument is the one
                 **{k: v for k, v in options.items() if k != "seed" and not (k == "target_params" and v is None)})


EVALUATION_SPLIT = {"c4": "validation"}  # the C4 sample has no test split (the papers use C4 validation)


def recover(model, tokenizer, plan: Plan, recovery: dict) -> dict:
    """LoRA recovery of a pruned model as a run config describes it (merged in place); the record fields.

    recovery: {"method": "lora" (default) | "group_lora", "ranks": "uniform" | "importance" | "pruned", plus
    `lora_recover` / `group_lora_recover` options}. The importance-guided ranks (CFSP's IG-LoRA, inferred)
    read the plan's per-block keep ratios; group_lora is SAAP-style group fine-tuning (QA-LoRA reading).
    """
    from .recovery import group_lora_recover, importance_guided_ranks, lora_recover

    options = dict(recovery)
    kind = options.pop("method", "lora")
    if kind == "group_lora":
        return group_lora_recover(model, tokenizer, **options)
    if kind != "lora":
        raise ValueError(f"unknown recovery method {kind!r}: choose lora or group_lora")
    direction, rank = options.pop("ranks", "uniform"), options.get("r", 8)
    pattern = None
    if direction != "uniform":
        keep = plan.extras.get("keep_ratios")
        if keep is None:
            raise ValueError(f"importance-guided LoRA ranks need per-block keep ratios; method {plan.method!r} "
                             "does not record them (use ranks='uniform')")
        pattern = importance_guided_ranks(model, keep, rank, direction)
    return lora_recover(model, tokenizer, rank_pattern=pattern, **options)


def pruning_run(settings: dict, method: str | Composition, ratio: float | None, options: dict | None = None,
                nsamples: int | None = None, max_windows: int | None = None, also: tuple[str, ...] = (),
                experiment: str = "sweep", calibration: dict | None = None, recovery: dict | None = None,
                target_params: float | None = None, eval_dtype: str = "float32") -> dict:
    """Prune the profile's model with `method` at `ratio` and measure perplexity; the record.

    method "dense" (ratio 0) evaluates the unpruned model under the same protocol; a `Composition` (parts,
    `compose(...)`) is recorded as method "composed" with its description as options, and calibrates on
    `calibration` (which it then needs).
    nsamples: calibration samples (default: the profile's); max_windows: evaluation subset (default:
    the profile's); also: further perplexity datasets (e.g. ("c4",)), metrics `perplexity_<name>`.
    calibration: {"dataset", "nsamples", "seqlen", "seed"} instead of the method's own (same-footing
    baselines); recovery: LoRA recovery after pruning (see `recover`); eval_dtype: the dtype perplexity is
    evaluated in (the model is pruned in the profile's, then cast; float32 records name none).
    """
    evaluation = evaluation_of(settings, max_windows)
    if also:
        evaluation["also"] = list(also)
    if eval_dtype != "float32":
        evaluation["dtype"] = eval_dtype
    config = {"profile": settings["profile"], "model": settings["model"], "method": method, "ratio": ratio,
              "evaluation": evaluation}
    if target_params is not None:  # matched size: the method's ratio is solved for this fraction of the model
        config.update(ratio=None, target_params=target_params)
    config.update({k: v for k, v in precision_of(settings).items() if v != DEFAULT_PRECISION[k]})
    options = dict(options or {})
    if isinstance(method, Composition):
        if options or calibration is None:
            raise ValueError("a composition's options go into compose(...), and it needs calibration= "
                             "({dataset, nsamples, seqlen, seed}, e.g. calibration_of(settings, 'flap'))")
        config.update(method=COMPOSED, label=method.check().label, options=method.describe(),
                      calibration=calibration if method.needs_data() else None)
    elif method != "dense":
        spec = get_method(method)
        if "seed" in spec.defaults:  # methods that draw random numbers follow the profile's seed
            options.setdefault("seed", settings["seed"])
        options = resolve_options(spec, options)
        config.update(label=spec.label_for(options), options=options,
                      calibration=calibration or calibration_of(settings, method, nsamples))
        if recovery is not None:
            config["recovery"] = recovery

    return run_once(experiment, config, lambda: pruning_metrics(config))


def _prune_and_recover(model, tokenizer, config: dict):
    """Prune as the config says, then recover if it asks to: (PruneResult, recovery record or None)."""
    result = _prune_as_configured(model, tokenizer, config)
    recovery = config.get("recovery")
    return result, (recover(model, tokenizer, result.plan, recovery) if recovery is not None else None)


def pruning_metrics(config: dict) -> tuple[dict, dict]:
    """(metrics, timings) of a pruning-run config: everything the run needs is in the config, so a record
    can be recomputed from itself (`recompute_metrics`)."""
    evaluation = config["evaluation"]
    model, tokenizer = dense_model(config["model"], **precision_of(config))
    metrics = {"model_source": model.structprune_source}
    timings = {}
    if config["method"] == "dense":
        metrics.update(params_before=count_parameters(model), params_after=count_parameters(model))
    else:
        result, recovered = _prune_and_recover(model, tokenizer, config)
        metrics.update(params_before=result.params_before, params_after=result.params_after,
                       plan=result.plan.to_dict(), plan_summary=result.plan.summary(),
                       calibration=result.calibration, peak_memory=result.peak_memory)
        timings["prune_seconds"] = result.seconds
        if recovered is not None:
            metrics["recovery"] = recovered
            timings["recovery_seconds"] = recovered["seconds"]
    if "dtype" in evaluation:
        from .models import DTYPES

        model.to(DTYPES[evaluation["dtype"]])
    metrics["perplexity"] = perplexity(model, tokenizer, evaluation["dataset"], evaluation["split"],
                                       evaluation["seqlen"], evaluation["max_windows"])
    timings["perplexity_seconds"] = metrics["perplexity"]["seconds"]
    for dataset in evaluation.get("also", []):
        metrics[f"perplexity_{dataset}"] = perplexity(model, tokenizer, dataset, EVALUATION_SPLIT.get(dataset, "test"),
                                                      evaluation["seqlen"], evaluation["max_windows"])
    return metrics, timings


GRID_ALSO = ("c4",)  # the grid's evaluation sets beside the profile's own (WikiText-2)


def grid_runs(settings: dict, targets: list[float]) -> list[dict]:
    """Every composition of the profile's grid (`settings["grid"]`: scores x allocations x compensations) at
    every target share of the model's parameters, one-shot on the calibration of the grid's named method,
    evaluated on WikiText-2 and C4 in the grid's dtype; the pruning records (experiment "grid")."""
    grid = settings["grid"]
    calibration = calibration_of(settings, grid["calibration"])
    cells = [(target, score, allocation, compensation) for target in targets for score in grid["scores"]
             for allocation in grid["allocations"] for compensation in grid["compensations"]]
    return [pruning_run(settings, compose(score, allocation, compensation), None, target_params=target,
                        calibration=calibration, also=GRID_ALSO, experiment="grid", eval_dtype=grid["eval_dtype"])
            for target, score, allocation, compensation in progress(cells, "composition grid", unit="cell")]


def grid_protocol_perplexities(settings: dict, record: dict) -> dict[str, dict]:
    """{dataset: perplexity} of any pruning record on the grid's protocol (the profile's set and `GRID_ALSO`,
    the profile's windows, the grid's dtype): `perplexity_run` records, so the paper methods and the dense
    model compare with the grid on the same windows in the same dtype."""
    evaluation = evaluation_of(settings)
    return {dataset: perplexity_run(record, evaluation["seqlen"], evaluation["max_windows"], dataset,
                                    EVALUATION_SPLIT.get(dataset, "test"), dtype=settings["grid"]["eval_dtype"])
            ["metrics"]["perplexity"] for dataset in (evaluation["dataset"], *GRID_ALSO)}


def recompute_metrics(record: dict) -> dict:
    """The metrics of a pruning record's config computed again (nothing written): the determinism check."""
    return pruning_metrics(record["config"])[0]


def calibration_tokens(tokenizer, calibration: dict, bos_token_id: int | None = None):
    """The calibration token ids a pruning record names (dataset, nsamples, seqlen, seed; windows starting with
    `bos_token_id` for the families that need it), checked against the digest the record holds."""
    ids = calibration_batches(tokenizer, calibration["dataset"], calibration["nsamples"], calibration["seqlen"],
                              calibration["seed"], bos_token_id=bos_token_id)
    digest = token_digest(ids)
    if calibration.get("token_sha256") not in (None, digest):
        raise ValueError(f"the calibration tokens of {calibration['dataset']} are not the ones the record was pruned "
                         f"with (sha256 {digest} != {calibration['token_sha256']}): the data files changed; prune again")
    return ids


# The last rebuilt model (a copy is handed out): several measurements of one record rebuild it once, which
# matters for plans whose least squares is recomputed from the calibration tokens.
_REBUILT: dict[str, tuple] = {}


def rebuild(record: dict):
    """The pruned model of a pruning record and the tokenizer: a dense copy with the record's plan applied
    (a least-squares restoration recomputed from the record's calibration tokens), or, after LoRA recovery,
    the same seeded pruning and fine-tuning again."""
    key = record["config_hash"]
    if key not in _REBUILT:
        _REBUILT.clear()
        _REBUILT[key] = _rebuild(record)
    model, tokenizer = _REBUILT[key]
    fresh = copy.deepcopy(model)
    fresh.structprune_source = getattr(model, "structprune_source", None)
    return fresh, tokenizer


def _rebuild(record: dict):
    config = record["config"]
    model, tokenizer = dense_model(config["model"], **precision_of(config))
    if config["method"] == "dense":
        return model, tokenizer
    if "recovery" in config:
        _prune_and_recover(model, tokenizer, config)
        return model, tokenizer
    plan = Plan.from_dict(record["metrics"]["plan"])
    calibration = (calibration_tokens(tokenizer, record["metrics"]["calibration"], window_bos_id(model))
                   if plan.restores_weights else None)
    apply_plan(model, plan, calibration)
    return model, tokenizer


def model_identity(record: dict) -> tuple[str, dict]:
    """(hash, config) that name the model of a pruning record, for the runs measured on that model.

    Extra perplexity sets (`evaluation.also`, e.g. notebook 04's C4 column) change what the pruning record
    measured, not the model, so they are left out: zero-shot and speed records are then shared with the same
    run evaluated on WikiText-2 alone. A record without them keeps its own hash (existing records stay valid)."""
    config = record["config"]
    if "also" not in config.get("evaluation", {}):
        return record["config_hash"], config
    config = copy.deepcopy(config)
    del config["evaluation"]["also"]
    return config_hash(config), config


def zero_shot_run(record: dict, limit: int | None, tasks=PAPER_TASKS, batch_size: int = 8,
                  dtype: str = "float32") -> dict:
    """Zero-shot accuracy (lm-eval, the seven paper tasks) of the model of a pruning record, evaluated in
    `dtype` (the model is rebuilt in float32, then cast); the record."""
    from .models import DTYPES

    of, pruning = model_identity(record)
    config = {"of": of, "pruning": pruning, "tasks": list(tasks), "limit": limit,
              "num_fewshot": 0}
    if dtype != "float32":  # float32 records keep the hash they had before the dtype was a setting
        config["dtype"] = dtype

    def compute():
        model, tokenizer = rebuild(record)
        result = zero_shot(model.to(DTYPES[dtype]), tokenizer, list(tasks), limit=limit, batch_size=batch_size)
        return {"zero_shot": result, "params_after": count_parameters(model)}, {"seconds": result["seconds"]}

    return run_once("zero_shot", config, compute)


def perplexity_run(record: dict, seqlen: int, max_windows: int | None = None, dataset: str = "wikitext2",
                   split: str = "test", dtype: str = "float32") -> dict:
    """Perplexity of the model of a pruning record under another protocol than its own (e.g. the full test
    set at seqlen 2048), evaluated in `dtype` (the model is rebuilt in float32, then cast); the record."""
    from .models import DTYPES

    of, pruning = model_identity(record)
    config = {"of": of, "pruning": pruning, "dataset": dataset, "split": split, "seqlen": seqlen,
              "max_windows": max_windows, "dtype": dtype}

    def compute():
        model, tokenizer = rebuild(record)
        result = perplexity(model.to(DTYPES[dtype]), tokenizer, dataset, split, seqlen, max_windows)
        return {"perplexity": result, "params_after": count_parameters(model)}, {"seconds": result["seconds"]}

    return run_once("long_perplexity", config, compute)


def macs_of(record: dict, prompt_tokens: int = 512, new_tokens: int = 128) -> dict[str, float]:
    """MACs of the model of a pruning record, from its real widths: one batch-1 prefill of `prompt_tokens`
    (`speed.prefill_macs`), and one decode step at the mean context of `new_tokens` steps after it."""
    model = rebuild(record)[0]
    return {"prefill": prefill_macs(model, 1, prompt_tokens),
            "decode": macs_per_token(model, context=prompt_tokens + new_tokens / 2)["total"]}


def engine_speed_run(record: dict, dtype: str = "f32", threads: int = 2, repeats: int = 3,
                     prompt_tokens: int = 512, new_tokens: int = 128) -> dict:
    """Speed in llama.cpp (`llamacpp.engine_speed`) of the model of a pruning record, exported to GGUF in
    `dtype` (`export.export_gguf`); the record."""
    from .llamacpp import model_engine_speed

    of, pruning = model_identity(record)
    config = {"of": of, "pruning": pruning, "engine": "llama.cpp", "gguf_dtype": dtype, "threads": threads,
              "repeats": repeats, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens}

    def compute():
        model, tokenizer = rebuild(record)
        return {"engine_speed": model_engine_speed(model, tokenizer, dtype, prompt_tokens, new_tokens, threads,
                                                   repeats)}, {}

    return run_once("engine_speed", config, compute)


def speed_run(record: dict, threads: int | None = 2, repeats: int = 3, baseline: dict | None = None,
              **speed_options) -> dict:
    """Measured speed (structprune.speed.speed) of the model of a pruning record. With `baseline` (another
    pruning record, e.g. the dense model's), that model is timed too, just before, in the same process
    (metrics `baseline_speed`): a speedup then never divides timings taken on different days or machines."""
    of, pruning = model_identity(record)
    config = {"of": of, "pruning": pruning, "threads": threads, "repeats": repeats,
              **speed_options}
    if baseline is not None:
        config["baseline"] = model_identity(baseline)[0]

    def compute():
        metrics = {}
        if baseline is not None:
            metrics["baseline_speed"] = speed(rebuild(baseline)[0], repeats=repeats, threads=threads, **speed_options)
        model, _ = rebuild(record)
        metrics["speed"] = speed(model, repeats=repeats, threads=threads, **speed_options)
        return metrics, {}

    return run_once("speed", config, compute)


def fasp_time_run(hidden: int, tokens: tuple[int, int] = (8, 128), layers: int = 4) -> dict:
    """FASP-style pruning time at ratio 0.2 against one plain forward over the same calibration tokens, on a
    random LLaMA-shaped model of `layers` layers, width `hidden` and MLP 2.75 x hidden, on the CPU; the record."""
    import time

    import torch

    from .models import tiny_llama

    config = {"method": "fasp", "ratio": 0.2, "hidden": hidden, "layers": layers, "intermediate": int(2.75 * hidden),
              "heads": max(hidden // 32, 2), "calibration": list(tokens), "threads": torch.get_num_threads()}

    def compute():
        model = tiny_llama(num_layers=layers, hidden_size=hidden, num_heads=config["heads"],
                           num_kv_heads=config["heads"], intermediate_size=config["intermediate"], vocab_size=1024)
        ids = random_calibration(1024, *tokens, seed=0)
        start = time.perf_counter()
        with torch.no_grad():
            for batch in ids.split(8):
                model(batch, use_cache=False)
        forward = time.perf_counter() - start
        result = prune(model, "fasp", 0.2, calibration=ids)
        return {"forward_seconds": forward, "prune_seconds": result.seconds, "params_before": result.params_before,
                "params_after": result.params_after}, {}

    return run_once("fasp_time", config, compute)


