"""Tables and figures from run records, shared by the notebooks and `make report`.

Tables go to results/tables/<name>.{md,tex,csv} and figures to results/figures/<name>.{png,pdf}, each
file written atomically. Every table carries a caption that states its protocol. The papers' numbers
live as data in results/paper/*.csv with the source of each row; nothing here types a number in.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from .evaluate import PAPER_METRIC, PAPER_TASKS
from .records import atomic_write_text, remove_orphans, results_dir, temporary_prefix

TASK_NAMES = {"boolq": "BoolQ", "piqa": "PIQA", "hellaswag": "HellaSwag", "winogrande": "WinoGrande",
              "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA"}


def tables_dir() -> Path:
    return results_dir() / "tables"


def figures_dir() -> Path:
    return results_dir() / "figures"


def paper_dir() -> Path:
    """The papers' reported numbers: the repository's results/paper/ (data, not outputs: it does not move
    with $STRUCTPRUNE_RESULTS)."""
    return Path(__file__).resolve().parents[2] / "results" / "paper"


def paper_rows(name: str) -> pd.DataFrame:
    """A table of a paper's reported numbers (results/paper/<name>.csv, with a `source` column)."""
    path = paper_dir() / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no paper table {path}: the files in results/paper/ are "
                                f"{', '.join(p.stem for p in path.parent.glob('*.csv'))}")
    return pd.read_csv(path)


def _markdown(frame: pd.DataFrame) -> str:
    cells = [[str(c) for c in frame.columns]] + [[_cell(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "---|" * len(frame.columns))
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        if value != value:  # NaN: not measured
            return "–"
        return f"{value:,.2f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def write_table(frame: pd.DataFrame, name: str, caption: str) -> dict[str, Path]:
    """Write `frame` as Markdown (caption first), LaTeX (table with caption) and CSV; the paths."""
    folder = tables_dir()
    paths = {ext: folder / f"{name}.{ext}" for ext in ("md", "tex", "csv")}
    atomic_write_text(paths["md"], f"{caption}\n\n{_markdown(frame)}\n")
    latex = frame.to_latex(index=False, float_format=lambda v: _cell(float(v)), caption=caption,
                           label=f"tab:{name}", na_rep="--", escape=True)
    atomic_write_text(paths["tex"], latex)
    atomic_write_text(paths["csv"], frame.to_csv(index=False))
    return paths


def save_figure(fig, name: str) -> dict[str, Path]:
    """Save a matplotlib figure as PNG and PDF (atomically); the paths."""
    folder = figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    remove_orphans(folder)
    paths = {}
    for ext in ("png", "pdf"):
        path = folder / f"{name}.{ext}"
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=temporary_prefix(path.name), suffix=f".{ext}")
        os.close(handle)
        fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf"
                    else None)
        os.replace(tmp, path)
        paths[ext] = path
    return paths


def method_label(record: dict) -> str:
    config = record["config"]
    return "Dense" if config["method"] == "dense" else config["label"]


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


def zero_shot_rows(records: list[dict]) -> pd.DataFrame:
    """One row per zero-shot record: each task's paper metric (in %) and the average."""
    rows = []
    for record in records:
        pruning, result = record["config"]["pruning"], record["metrics"]["zero_shot"]
        row = {"method": "Dense" if pruning["method"] == "dense" else pruning["label"], "ratio": pruning["ratio"]}
        for task in PAPER_TASKS:
            row[TASK_NAMES[task]] = 100 * result["tasks"][task]["score"]
        row["Average"] = 100 * result["average"]
        rows.append(row)
    return pd.DataFrame(rows)


def metric_note() -> str:
    metrics = ", ".join(f"{TASK_NAMES[t]} {PAPER_METRIC[t]}" for t in PAPER_TASKS)
    return f"metrics: {metrics} (the papers' convention); HellaSwag from the derived local text (approximation)"


def protocol_caption(record: dict) -> str:
    """The protocol of a pruning record's numbers, for captions."""
    config = record["config"]
    evaluation = config["evaluation"]
    windows = "all windows" if evaluation["max_windows"] is None else f"first {evaluation['max_windows']} windows"
    return (f"model {config['model']} ({config['profile']} profile); {evaluation['dataset']} {evaluation['split']} "
            f"perplexity, non-overlapping {evaluation['seqlen']}-token windows, {windows}")
