"""Speed tables: measured prefill and decode speedups against the dense model and the MACs ideal, in PyTorch and
in llama.cpp, and the Pareto front of speed against accuracy."""

from __future__ import annotations

import pandas as pd

from ..experiments import pruning_run
from ..speed import speedup
from .labels import method_label


def prefill_speedups(dense: dict, measured: dict) -> dict:
    """Columns of the measured prefill speedup at every shape, and the MACs-ratio ideal (the same for every
    shape up to rounding: the largest shape's)."""
    cases = speedup(dense, measured)
    return {**{f"prefill x ({c['batch']}x{c['tokens']})": c["measured"] for c in cases}, "ideal x": cases[-1]["ideal"]}


def speed_row(record: dict, measured: dict, dense: dict) -> dict:
    """One row of a speedup table: the pruning record's method, size and perplexity, and its measured speed
    against the dense model's at the largest prefill shape and at every decode batch."""
    largest = speedup(dense, measured)[-1]  # the largest prefill shape (batch 8 x 512 by default)
    shape = f"({largest['batch']}x{largest['tokens']})"
    row = {"method": method_label(record), "ratio": record["config"]["ratio"],
           "parameters": measured["parameters"], "MACs/token (M)": measured["macs_per_token"]["total"] / 1e6,
           "perplexity": record["metrics"]["perplexity"]["perplexity"], f"ideal x {shape}": largest["ideal"],
           f"prefill x {shape}": largest["measured"], "fraction of ideal": largest["fraction_of_ideal"]}
    for d, p in zip(dense["decode"], measured["decode"], strict=True):
        row[f"decode x (batch {p['batch']})"] = p["tokens_per_second"] / d["tokens_per_second"]
        row[f"decode tok/s (batch {p['batch']})"] = p["tokens_per_second"]
    row["weights MiB"] = measured["memory"]["weights_mib"]
    return row


def engine_rows(records: dict[str, dict], runs: dict[tuple[str, str], dict], macs: dict[str, dict],
                pytorch: dict[str, float]) -> pd.DataFrame:
    """llama.cpp speed of pruned models against the dense model's (same GGUF weight type), beside the MACs ideal
    and PyTorch eager. records: {name: pruning record} (the dense one named "Dense"); runs: {(name, dtype):
    `experiments.engine_speed_run` record}; macs: {name: `experiments.macs_of`}, whose ratio to the dense
    model's is the ideal of prefill and of decode; pytorch: {name: PyTorch prefill speedup, measured against
    a dense run of the same machine}, where measured."""
    rows = []
    for (name, dtype), run in runs.items():
        engine, dense_engine = run["metrics"]["engine_speed"], runs[("Dense", dtype)]["metrics"]["engine_speed"]
        prefill = engine["prefill_tokens_per_second"] / dense_engine["prefill_tokens_per_second"]
        decode = engine["decode_tokens_per_second"] / dense_engine["decode_tokens_per_second"]
        ideal = {kind: macs["Dense"][kind] / macs[name][kind] for kind in ("prefill", "decode")}
        rows.append({"model": name, "gguf": dtype, "parameters": engine["params_after"],
                     "perplexity": records[name]["metrics"]["perplexity"]["perplexity"],
                     "ideal prefill x": ideal["prefill"], "ideal decode x": ideal["decode"],
                     "PyTorch prefill x": pytorch.get(name), "llama.cpp prefill tok/s": engine["prefill_tokens_per_second"],
                     "llama.cpp prefill x": prefill, "llama.cpp decode tok/s": engine["decode_tokens_per_second"],
                     "llama.cpp decode x": decode, "prefill of ideal": prefill / ideal["prefill"],
                     "decode of ideal": decode / ideal["decode"]})
    return pd.DataFrame(rows)


def pareto_front(points: pd.DataFrame, faster: str, better: str) -> pd.DataFrame:
    """The rows no other row beats on both columns (higher is better on each), fastest first: scanning from
    the fastest, each row that is more accurate than every faster one."""
    front, best = [], float("-inf")
    for _, row in points.sort_values(faster, ascending=False).iterrows():
        if row[better] > best:
            front.append(row)
            best = row[better]
    return pd.DataFrame(front)


def _same_protocol(a: dict, b: dict) -> bool:
    keys = ("threads", "repeats", "prefill_shapes", "decode_batches", "new_tokens")
    return all(a["config"].get(k) == b["config"].get(k) for k in keys)


# Columns whose names carry the measured protocol (e.g. "prefill x (8x512)", "zero-shot avg (50 docs)").
MEASURED_COLUMNS = {"prefill": "prefill x", "ideal": "ideal x", "decode": "decode x", "decode tokens": "decode tok/s",
                    "zero-shot": "zero-shot avg"}


def column_of(frame: pd.DataFrame, kind: str, last: bool = False, required: bool = True) -> str | None:
    """The column of a speed table or leaderboard that holds `kind` (prefill, ideal, decode, decode tokens,
    zero-shot), whose name carries its protocol: the first such column, or the last with `last`; None when the
    table has none and it is not `required`."""
    names = [c for c in frame.columns if c.startswith(MEASURED_COLUMNS[kind])]
    if not names:
        if required:
            raise KeyError(f"no {kind} column ({MEASURED_COLUMNS[kind]} ...) in {list(frame.columns)}")
        return None
    return names[-1] if last else names[0]


def engine_study(settings: dict, dense: dict, methods: list[str], ratios: list[float], round_to_method: str,
                 round_to_ratio: float, round_to_values: list[int], speed_table, rounding) -> tuple[dict, dict]:
    """The models notebook 05 times in llama.cpp, by name ("Dense", "<label> <ratio>", "<label> <ratio> round_to
    <k>"), and their PyTorch prefill speedups where the speed tables measured them: ({name: pruning record},
    {name: PyTorch prefill x}). speed_table: a `report.speed_row` per method and ratio; rounding: the same per
    round_to value (column "round_to")."""
    prefill = column_of(speed_table, "prefill")  # PyTorch, the largest prefill shape
    records, pytorch = {"Dense": dense}, {"Dense": 1.0}
    for ratio in ratios:
        for method in methods:
            record = pruning_run(settings, method, ratio)
            name = f"{method_label(record)} {ratio:.0%}"
            records[name] = record
            pytorch[name] = speed_table[(speed_table.method == method_label(record))
                                        & (speed_table.ratio == ratio)][prefill].item()
    for k in round_to_values:
        record = pruning_run(settings, round_to_method, round_to_ratio, {"round_to": k})
        name = f"{method_label(record)} {round_to_ratio:.0%} round_to {k}"
        records[name] = record
        if k in set(rounding.round_to):
            pytorch[name] = rounding[rounding.round_to == k][prefill].item()
    return records, pytorch
