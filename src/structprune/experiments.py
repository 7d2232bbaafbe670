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

from .allocate import Plan
from .architectures import count_parameters
from .evaluate import PAPER_TASKS, perplexity, zero_shot
from .methods import get_method, prune, resolve_options
from .models import load_model
from .records import run_once
from .surgery import apply_plan


@functools.lru_cache(maxsize=2)
def _dense(spec: str):
    return load_model(spec)


def dense_model(spec: str):
    """A fresh copy of the dense model `spec` (loaded once per process) and its tokenizer."""
    model, tokenizer = _dense(spec)
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
    """Run the pruning a pruning-run config describes (method, ratio, options, calibration, seed)."""
    calibration, options = config["calibration"] or {}, config["options"]
    return prune(model, config["method"], config["ratio"], calibration=calibration.get("dataset"),
                 tokenizer=tokenizer, nsamples=calibration.get("nsamples"), seqlen=calibration.get("seqlen"),
                 seed=options.get("seed", calibration.get("seed", 0)),
                 **{k: v for k, v in options.items() if k != "seed"})


EVALUATION_SPLIT = {"c4": "validation"}  # the C4 sample has no test split (the papers use C4 validation)


def pruning_run(settings: dict, method: str, ratio: float, options: dict | None = None,
                nsamples: int | None = None, max_windows: int | None = None, also: tuple[str, ...] = (),
                experiment: str = "sweep") -> dict:
    """Prune the profile's model with `method` at `ratio` and measure perplexity; the record.

    method "dense" (ratio 0) evaluates the unpruned model under the same protocol.
    nsamples: calibration samples (default: the profile's); max_windows: evaluation subset (default:
    the profile's); also: further perplexity datasets (e.g. ("c4",)), metrics `perplexity_<name>`.
    """
    evaluation = evaluation_of(settings, max_windows)
    if also:
        evaluation["also"] = list(also)
    config = {"profile": settings["profile"], "model": settings["model"], "method": method, "ratio": ratio,
              "evaluation": evaluation}
    options = dict(options or {})
    if method != "dense":
        spec = get_method(method)
        if "seed" in spec.defaults:  # methods that draw random numbers follow the profile's seed
            options.setdefault("seed", settings["seed"])
        options = resolve_options(spec, options)
        config.update(label=spec.label, options=options, calibration=calibration_of(settings, method, nsamples))

    def compute():
        model, tokenizer = dense_model(settings["model"])
        metrics = {"model_source": model.structprune_source}
        timings = {}
        if method == "dense":
            metrics.update(params_before=count_parameters(model), params_after=count_parameters(model))
        else:
            result = _prune_as_configured(model, tokenizer, config)
            metrics.update(params_before=result.params_before, params_after=result.params_after,
                           plan=result.plan.to_dict(), plan_summary=result.plan.summary(),
                           calibration=result.calibration, peak_memory=result.peak_memory)
            timings["prune_seconds"] = result.seconds
        metrics["perplexity"] = perplexity(model, tokenizer, evaluation["dataset"], evaluation["split"],
                                           evaluation["seqlen"], evaluation["max_windows"])
        timings["perplexity_seconds"] = metrics["perplexity"]["seconds"]
        for dataset in also:
            metrics[f"perplexity_{dataset}"] = perplexity(model, tokenizer, dataset,
                                                          EVALUATION_SPLIT.get(dataset, "test"),
                                                          evaluation["seqlen"], evaluation["max_windows"])
        return metrics, timings

    return run_once(experiment, config, compute)


def rebuild(record: dict):
    """The pruned model of a pruning record and the tokenizer: dense copy + its plan, or, for methods that
    also change the kept weights (FASP's restoration), the same deterministic pruning run again."""
    config = record["config"]
    model, tokenizer = dense_model(config["model"])
    if config["method"] == "dense":
        return model, tokenizer
    if get_method(config["method"]).plan_rebuilds_model:
        apply_plan(model, Plan.from_dict(record["metrics"]["plan"]))
        return model, tokenizer
    _prune_as_configured(model, tokenizer, config)
    return model, tokenizer


def zero_shot_run(record: dict, limit: int | None, tasks=PAPER_TASKS, batch_size: int = 8) -> dict:
    """Zero-shot accuracy (lm-eval, the seven paper tasks) of the model of a pruning record."""
    config = {"of": record["config_hash"], "pruning": record["config"], "tasks": list(tasks), "limit": limit,
              "num_fewshot": 0}

    def compute():
        model, tokenizer = rebuild(record)
        result = zero_shot(model, tokenizer, list(tasks), limit=limit, batch_size=batch_size)
        return {"zero_shot": result, "params_after": count_parameters(model)}, {"seconds": result["seconds"]}

    return run_once("zero_shot", config, compute)


def speed_run(record: dict, threads: int | None = 2, repeats: int = 3, **speed_options) -> dict:
    """Measured speed (structprune.speed.speed) of the model of a pruning record."""
    from .speed import speed

    config = {"of": record["config_hash"], "pruning": record["config"], "threads": threads, "repeats": repeats,
              **speed_options}

    def compute():
        model, _ = rebuild(record)
        result = speed(model, repeats=repeats, threads=threads, **speed_options)
        return {"speed": result}, {}

    return run_once("speed", config, compute)
