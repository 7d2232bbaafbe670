"""Zero-shot tables: each task's paper metric, the average with its standard error, and paired comparisons on
the same documents."""

from __future__ import annotations

import pandas as pd

from ..evaluate import PAPER_TASKS, average_stderr, paired_accuracy
from .labels import TASK_NAMES, method_label


def matched_zero_shot_rows(pairs: list[tuple[dict, dict]]) -> pd.DataFrame:
    """(pruning record, zero-shot record) pairs, one row each: the target, method and parameters, each task's
    paper metric (in %), the average with its standard error, and the documents per task."""
    rows = []
    for record, run in pairs:
        result = run["metrics"]["zero_shot"]
        row = {"target": record["config"].get("target_params"), "method": method_label(record),
               "parameters": record["metrics"]["params_after"]}
        for task in PAPER_TASKS:
            row[TASK_NAMES[task]] = 100 * result["tasks"][task]["score"]
        row["Average"] = 100 * result["average"]
        row["± (s.e.)"] = 100 * average_stderr(result["tasks"])
        row["documents per task"] = result["limit"] if result["limit"] is not None else "all"
        rows.append(row)
    return pd.DataFrame(rows)


def paired_zero_shot_rows(comparisons: list[tuple[dict, dict, dict, dict]]) -> pd.DataFrame:
    """(pruning record a, zero-shot record a, pruning record b, zero-shot record b) comparisons on the same
    documents (`evaluate.paired_accuracy`): the difference a - b of the seven-task average and of each task's
    paper metric, in points, with the average's 95 % interval and the verdict."""
    rows = []
    for record_a, run_a, record_b, run_b in comparisons:
        paired = paired_accuracy(run_a["metrics"]["zero_shot"], run_b["metrics"]["zero_shot"])
        average, a, b = paired["average"], method_label(record_a), method_label(record_b)
        row = {"target": record_a["config"].get("target_params"), "a": a, "b": b,
               "a - b (points)": 100 * average["difference"], "95 % low": 100 * average["ci95"][0],
               "95 % high": 100 * average["ci95"][1],
               "verdict": {"a higher": f"{a} higher", "b higher": f"{b} higher"}.get(average["verdict"],
                                                                                 average["verdict"])}
        for task in PAPER_TASKS:
            row[f"{TASK_NAMES[task]} a - b"] = 100 * paired["tasks"][task]["difference"]
        rows.append(row)
    return pd.DataFrame(rows)


def zero_shot_rows(records: list[dict]) -> pd.DataFrame:
    """One row per zero-shot record: each task's paper metric (in %) and the average."""
    rows = []
    for record in records:
        pruning, result = record["config"]["pruning"], record["metrics"]["zero_shot"]
        row = {"method": "Dense" if pruning["method"] == "dense" else pruning["label"], "ratio": pruning["ratio"]}
        for task in PAPER_TASKS:
            row[TASK_NAMES[task]] = 100 * result["tasks"][task]["score"]
        row["Average"] = 100 * result["average"]
        stderr = average_stderr(result["tasks"])
        row["± (s.e.)"] = float("nan") if stderr is None else 100 * stderr
        rows.append(row)
    return pd.DataFrame(rows)


def compare_zero_shot(a: dict, b: dict) -> str:
    """Whether the zero-shot average of record a is above b's beyond noise, paired on the same documents
    (`evaluate.paired_accuracy`): "higher", "lower", or "not distinguishable" when the 95 % interval of the
    difference includes 0."""
    verdict = paired_accuracy(a["metrics"]["zero_shot"], b["metrics"]["zero_shot"])["average"]["verdict"]
    return {"a higher": "higher", "b higher": "lower"}.get(verdict, verdict)
