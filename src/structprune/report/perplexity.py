"""Perplexity tables: per pruning record, at matched parameter counts (paired against the lowest), and under
longer protocols (paired against the dense model)."""

from __future__ import annotations

import pandas as pd

from ..evaluate import paired_perplexity
from .labels import method_label, paired_text


def pruning_rows(records: list[dict]) -> pd.DataFrame:
    """One row per pruning record: method, ratio, perplexity, parameters, removed fraction, time."""
    rows = []
    for record in records:
        metrics, config = record["metrics"], record["config"]
        summary = metrics.get("plan_summary", {})
        rows.append({
            "method": method_label(record), "ratio": config["ratio"],
            "perplexity": metrics["perplexity"]["perplexity"],
            "parameters": metrics["params_after"],
            "removed_of_model": 1 - metrics["params_after"] / metrics["params_before"],
            "removed_of_prunable": summary.get("removed_fraction_of_prunable", 0.0),
            "prune_seconds": record["timings"].get("prune_seconds", 0.0),
        })
    return pd.DataFrame(rows)


def matched_rows(records: list[dict], dense: dict) -> pd.DataFrame:
    """Methods at matched parameter counts (pruning records with `target_params`): the target and the achieved
    share of the model removed, the method's solved ratio, parameters, perplexity with its 95 % interval, and a
    paired comparison on the same windows with the lowest-perplexity method at the same target."""
    rows = []
    for record in records:
        metrics, config = record["metrics"], record["config"]
        ppl = metrics["perplexity"]
        rows.append({"target": config["target_params"], "method": method_label(record),
                     "removed (% of model)": 100 * (1 - metrics["params_after"] / metrics["params_before"]),
                     "method ratio": metrics["plan"]["ratio"], "parameters": metrics["params_after"],
                     "perplexity": ppl["perplexity"], "95 % low": ppl["ci95"][0], "95 % high": ppl["ci95"][1],
                     "x dense": ppl["perplexity"] / dense["metrics"]["perplexity"]["perplexity"], "_ppl": ppl})
    frame = pd.DataFrame(rows)
    verdicts = []
    for _, row in frame.iterrows():
        peers = frame[frame.target == row.target]
        best = peers.loc[peers.perplexity.idxmin()]
        if best.method == row.method:
            verdicts.append("lowest")
            continue
        paired = paired_perplexity(row._ppl, best._ppl)
        verdicts.append(paired_text(paired, f" x {best.method}")
                        + (" (not distinguishable)" if paired["verdict"] == "not distinguishable" else ""))
    frame["paired vs lowest"] = verdicts
    return frame.drop(columns="_ppl").sort_values(["target", "perplexity"]).reset_index(drop=True)


def lowest_per_target(records: list[dict], count: int = 1) -> list[dict]:
    """The `count` lowest-perplexity matched-size records at each target (the headline rows), in target order,
    lowest first within a target."""
    by_target: dict[float, list[dict]] = {}
    for record in records:
        by_target.setdefault(record["config"]["target_params"], []).append(record)
    return [record for target in sorted(by_target)
            for record in sorted(by_target[target], key=lambda r: r["metrics"]["perplexity"]["perplexity"])[:count]]


def long_protocol_rows(records: list[dict]) -> pd.DataFrame:
    """Perplexity records of `experiments.perplexity_run` (the dense model's among them), one row each: the
    protocol (window length, windows, dtype), the perplexity with its 95 % interval, and the paired ratio to
    the dense model on the same windows with its 95 % interval."""
    dense = {(r["config"]["seqlen"], r["config"]["dtype"]): r["metrics"]["perplexity"]
             for r in records if r["config"]["pruning"]["method"] == "dense"}
    rows = []
    for record in records:
        config, metrics = record["config"], record["metrics"]
        ppl, pruning = metrics["perplexity"], config["pruning"]
        is_dense = pruning["method"] == "dense"
        paired = None if is_dense else paired_perplexity(ppl, dense[(config["seqlen"], config["dtype"])])
        rows.append({"seqlen": config["seqlen"], "windows": ppl["windows"], "dtype": config["dtype"],
                     "target": None if is_dense else pruning["target_params"],
                     "method": method_label({"config": pruning}), "parameters": metrics["params_after"],
                     "perplexity": ppl["perplexity"], "95 % low": ppl["ci95"][0], "95 % high": ppl["ci95"][1],
                     "paired x dense": "" if is_dense else paired_text(paired)})
    frame = pd.DataFrame(rows)
    frame["_order"] = frame.target.fillna(-1)
    return frame.sort_values(["seqlen", "_order"]).drop(columns="_order").reset_index(drop=True)


def layer_range_of(record: dict) -> tuple[int, int]:
    """The [start, end) layer range an LLM-Pruner record pruned (its plan's extras; older records resolved
    it into the plan's options)."""
    plan = record["metrics"]["plan"]
    where = plan["extras"] if "layer_start" in plan.get("extras", {}) else plan["options"]
    return where["layer_start"], where["layer_end"]


def kept_fractions(record: dict, unit: str = "channels") -> list[float]:
    """Per layer, the fraction of its KV groups (unit "groups") or MLP channels ("channels") a pruning record kept."""
    summary = record["metrics"]["plan_summary"]
    return [k / d for k, d in zip(summary[f"kept_{unit}_per_layer"], summary[f"dense_{unit}_per_layer"], strict=True)]


def recovery_rows(unrecovered: dict[str, dict], recovered: dict[str, dict], column: str = "model") -> pd.DataFrame:
    """Perplexity before and after recovery: a row per unrecovered record (perplexity), then a row per recovered
    one (perplexity, the first and last training loss, the recovery's seconds), named in `column`."""
    rows = [{column: name, "perplexity": r["metrics"]["perplexity"]["perplexity"]} for name, r in unrecovered.items()]
    for name, record in recovered.items():
        curve = record["metrics"]["recovery"]["loss_curve"]
        rows.append({column: name, "perplexity": record["metrics"]["perplexity"]["perplexity"],
                     "first loss": curve[0][1], "last loss": curve[-1][1],
                     "seconds": record["timings"]["recovery_seconds"]})
    return pd.DataFrame(rows)
