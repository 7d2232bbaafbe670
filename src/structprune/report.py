"""Tables and figures from run records, shared by the notebooks and `make report`.

Tables go to results/tables/<name>.{md,tex,csv} and figures to results/figures/<name>.{png,pdf}, each
file written atomically. Every table carries a caption that states its protocol. The papers' numbers
live as data in results/paper/*.csv with the source of each row; nothing here types a number in.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .evaluate import PAPER_METRIC, PAPER_TASKS, average_stderr
from .records import atomic_write_text, results_dir
from .staging import remove_orphans, temporary_file, tidy

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
        tmp = temporary_file(path, suffix=f".{ext}")
        fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf"
                    else None)
        os.replace(tmp, path)
        paths[ext] = path
    tidy(folder)
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


def paired_text(paired: dict, against: str = "") -> str:
    """A paired perplexity ratio (`evaluate.paired_perplexity`) as "ratio<against> [low, high]"."""
    return f"{paired['ratio']:.2f}{against} [{paired['ci95'][0]:.2f}, {paired['ci95'][1]:.2f}]"


def matched_rows(records: list[dict], dense: dict) -> pd.DataFrame:
    """Methods at matched parameter counts (pruning records with `target_params`): the target and the achieved
    share of the model removed, the method's solved ratio, parameters, perplexity with its 95 % interval, and a
    paired comparison on the same windows with the lowest-perplexity method at the same target."""
    from .evaluate import paired_perplexity

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
    from .evaluate import paired_accuracy

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


def long_protocol_rows(records: list[dict]) -> pd.DataFrame:
    """Perplexity records of `experiments.perplexity_run` (the dense model's among them), one row each: the
    protocol (window length, windows, dtype), the perplexity with its 95 % interval, and the paired ratio to
    the dense model on the same windows with its 95 % interval."""
    from .evaluate import paired_perplexity

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


GRID_SETS = {"wikitext2": "WikiText-2", "c4": "C4"}  # the grid's evaluation sets (C4: its validation split)


def grid_perplexities(record: dict) -> dict[str, dict]:
    """{dataset: perplexity result} of a pruning record evaluated on several sets (`pruning_run(also=...)`)."""
    evaluation, metrics = record["config"]["evaluation"], record["metrics"]
    return {evaluation["dataset"]: metrics["perplexity"],
            **{dataset: metrics[f"perplexity_{dataset}"] for dataset in evaluation.get("also", [])}}


def composition_parts(record: dict) -> dict[str, str]:
    """The score, allocation and compensation names of a composition's pruning record."""
    options = record["config"]["options"]
    return {kind: options[kind]["name"] for kind in ("score", "allocation", "compensation")}


def _lowest(models: list[tuple[dict, dict[str, dict]]], target: float, dataset: str) -> tuple[dict, dict[str, dict]]:
    peers = [m for m in models if m[0]["config"]["target_params"] == target]
    return min(peers, key=lambda m: m[1][dataset]["perplexity"])


def grid_rows(grid: list[dict], papers: list[tuple[dict, dict[str, dict]]], dense: dict[str, dict]) -> pd.DataFrame:
    """One row per composition of the grid (pruning records, each evaluated on `GRID_SETS`): the target, its
    parts, parameters, and on each set the perplexity with its 95 % interval, its ratio to the dense model, and
    the paired ratio to the lowest paper method at the same target on the same windows (with its interval).
    papers: (matched paper record, {dataset: perplexity}) on the grid's protocol; dense: {dataset: perplexity}."""
    from .evaluate import paired_perplexity

    rows = []
    for record in grid:
        target, ppls = record["config"]["target_params"], grid_perplexities(record)
        row = {"target": target, **composition_parts(record), "parameters": record["metrics"]["params_after"]}
        for dataset, name in GRID_SETS.items():
            ppl = ppls[dataset]
            paper, paper_ppls = _lowest(papers, target, dataset)
            paired = paired_perplexity(ppl, paper_ppls[dataset])
            row.update({name: ppl["perplexity"], f"{name} 95 %": f"[{ppl['ci95'][0]:.1f}, {ppl['ci95'][1]:.1f}]",
                        f"{name} x dense": ppl["perplexity"] / dense[dataset]["perplexity"],
                        f"{name} paired x lowest paper": paired_text(paired, f" x {method_label(paper)}")
                        + {"a lower": " (lower)", "b lower": " (higher)"}.get(paired["verdict"], " (n.d.)")})
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["target", "WikiText-2"]).reset_index(drop=True)


def against_papers_rows(best: list[dict], papers: list[tuple[dict, dict[str, dict]]]) -> pd.DataFrame:
    """The best composition at each target (grid records) against every paper method at the same target, on
    every set of `GRID_SETS` and the same windows: both perplexities and the paired ratio composition / paper
    method with its 95 % interval and verdict."""
    from .evaluate import paired_perplexity

    rows = []
    for record in best:
        target, ppls = record["config"]["target_params"], grid_perplexities(record)
        for paper, paper_ppls in papers:
            if paper["config"]["target_params"] != target:
                continue
            row = {"target": target, "composition": method_label(record), "paper method": method_label(paper),
                   "parameters (composition / paper)": f"{record['metrics']['params_after']:,} / "
                                                       f"{paper['metrics']['params_after']:,}"}
            for dataset, name in GRID_SETS.items():
                paired = paired_perplexity(ppls[dataset], paper_ppls[dataset])
                row.update({f"{name}: paper": paper_ppls[dataset]["perplexity"],
                            f"{name}: ratio [95 %]": paired_text(paired),
                            f"{name}: verdict": {"a lower": "composition lower", "b lower": "paper lower"}.get(
                                paired["verdict"], "not distinguishable")})
            rows.append(row)
    return pd.DataFrame(rows)


def target_status_rows(best: list[dict], papers: list[tuple[dict, dict[str, dict]]], dense: dict[str, dict],
                       goals: dict[float, float]) -> pd.DataFrame:
    """Per target: the best composition's WikiText-2 perplexity as a multiple of the dense model's against the
    goal, and whether it is below every paper method beyond the paired 95 % interval on each set."""
    from .evaluate import paired_perplexity

    rows = []
    for record in best:
        target, ppls = record["config"]["target_params"], grid_perplexities(record)
        ratio = ppls["wikitext2"]["perplexity"] / dense["wikitext2"]["perplexity"]
        row = {"target": target, "best composition": method_label(record), "WikiText-2 x dense": ratio,
               "goal (x dense)": goals.get(target), "goal met": "yes" if ratio <= goals.get(target, 0) else "no"}
        for dataset, name in GRID_SETS.items():
            beaten = [paired_perplexity(ppls[dataset], p[dataset])["verdict"] == "a lower"
                      for r, p in papers if r["config"]["target_params"] == target]
            row[f"below every paper method on {name}"] = f"{'yes' if all(beaten) else 'no'} ({sum(beaten)} of {len(beaten)})"
        rows.append(row)
    return pd.DataFrame(rows)


def grid_heatmap(table: pd.DataFrame, dataset: str = "WikiText-2"):
    """A heatmap per (compensation, target) of `grid_rows`: scores by allocations, coloured by the log of
    the perplexity's multiple of the dense model's, each cell annotated with the perplexity."""
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [(c, t) for c in table.compensation.unique() for t in sorted(table.target.unique())]
    scores, allocations = list(table.score.unique()), list(table.allocation.unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 0.55 * len(scores) + 1.6), squeeze=False)
    ratios = np.log10(table[f"{dataset} x dense"].to_numpy())
    low, high = ratios.min(), min(ratios.max(), ratios.min() + 2)
    for ax, (compensation, target) in zip(axes[0], panels, strict=True):
        panel = table[(table.compensation == compensation) & (table.target == target)]
        grid, multiple = (np.full((len(scores), len(allocations)), np.nan) for _ in range(2))
        for _, row in panel.iterrows():
            cell = scores.index(row.score), allocations.index(row.allocation)
            grid[cell], multiple[cell] = row[dataset], row[f"{dataset} x dense"]
        ax.imshow(np.log10(multiple), vmin=low, vmax=high, cmap="viridis_r", aspect="auto")
        for i in range(len(scores)):
            for j in range(len(allocations)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8, color="white")
        ax.set_xticks(range(len(allocations)), allocations, fontsize=8)
        ax.set_yticks(range(len(scores)), scores if ax is axes[0][0] else [""] * len(scores), fontsize=8)
        ax.set_title(f"{target:.0%} removed, {compensation}", fontsize=9)
    fig.suptitle(f"{dataset} perplexity of every composition (colour: log multiple of dense)", fontsize=10)
    fig.tight_layout()
    return fig


def frontier_figure(papers: list[tuple[dict, dict[str, dict]]], grid: list[dict], best: list[dict],
                    dense: tuple[dict, dict[str, dict]], dataset: str = "wikitext2"):
    """Perplexity against parameters: every paper method at the matched targets (lines), every composition of
    the grid (dots) and the best compositions (stars), the dense model (cross), all on the same protocol."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    by_method: dict[str, list] = {}
    for record, ppls in papers:
        by_method.setdefault(method_label(record), []).append((record["metrics"]["params_after"] / 1e6,
                                                               ppls[dataset]["perplexity"]))
    for label, points in by_method.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=label)
    ax.scatter([r["metrics"]["params_after"] / 1e6 for r in grid],
               [grid_perplexities(r)[dataset]["perplexity"] for r in grid], s=8, color="grey", alpha=0.5,
               label="grid compositions")
    ax.scatter([r["metrics"]["params_after"] / 1e6 for r in best],
               [grid_perplexities(r)[dataset]["perplexity"] for r in best], marker="*", s=160, color="black",
               label="best composition", zorder=3)
    ax.scatter([dense[0]["metrics"]["params_after"] / 1e6], [dense[1][dataset]["perplexity"]], marker="x", s=60,
               color="red", label="dense", zorder=3)
    ax.set_yscale("log")
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel(f"{GRID_SETS[dataset]} perplexity (log)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def matched_leaderboard(profile: str = "default", model: str = "embedded", root: Path | None = None) -> pd.DataFrame:
    """`matched_rows` of every matched-size record (results/runs/matched) of a profile's model, against the
    dense sweep record of the same evaluation protocol."""
    import json

    root = Path(root or results_dir() / "runs")

    def records(experiment):
        return [json.loads(p.read_text()) for p in sorted((root / experiment).glob("*.json"))]

    matched = [r for r in records("matched") if r["config"].get("profile") == profile
               and r["config"].get("model") == model]
    if not matched:
        return pd.DataFrame()
    evaluation = matched[0]["config"]["evaluation"]
    dense = next((r for r in records("sweep") if r["config"]["method"] == "dense" and r["config"].get("profile") == profile
                  and r["config"].get("model") == model and r["config"]["evaluation"] == evaluation), None)
    if dense is None:
        return pd.DataFrame()
    return matched_rows([r for r in matched if r["config"]["evaluation"] == evaluation], dense)


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
    from .evaluate import paired_accuracy

    verdict = paired_accuracy(a["metrics"]["zero_shot"], b["metrics"]["zero_shot"])["average"]["verdict"]
    return {"a higher": "higher", "b higher": "lower"}.get(verdict, verdict)


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


def _pruning_key(config: dict) -> str:
    """A pruning run's identity without its evaluation protocol (the same model evaluated two ways)."""
    import json

    return json.dumps({k: v for k, v in config.items() if k != "evaluation"}, sort_keys=True, default=str)


def leaderboard(profile: str = "default", model: str = "embedded", root: Path | None = None) -> pd.DataFrame:
    """All methods x ratios of a profile's model from the records: parameters, WikiText-2 perplexity per
    evaluation subset, 7-task zero-shot average, measured prefill speedup and decode speed.

    Rows join the sweep, zero-shot and speed records of the same pruning run (same config but for the
    evaluation); a cell no record measured is NaN. Speeds are against the dense speed record of the same
    protocol (threads, repeats, shapes)."""
    import json

    from .profiles import profile_settings
    from .speed import speedup

    root = Path(root or results_dir() / "runs")

    def records(experiment):
        return [json.loads(p.read_text()) for p in sorted((root / experiment).glob("*.json"))]

    rows: dict[str, dict] = {}
    for record in records("sweep"):
        config = record["config"]
        if config.get("profile") != profile or config.get("model") != model:
            continue
        evaluation = config["evaluation"]
        if evaluation["dataset"] != "wikitext2" or evaluation["split"] != "test":
            continue
        row = rows.setdefault(_pruning_key(config), {
            "method": variant_label(config), "ratio": config["ratio"],
            "parameters": record["metrics"]["params_after"]})
        windows = evaluation["max_windows"]
        row[f"PPL ({'all' if windows is None else windows} windows)"] = record["metrics"]["perplexity"]["perplexity"]
    settings = profile_settings(profile)  # one zero-shot protocol for every row: the profile's
    for record in records("zero_shot"):
        key, config = _pruning_key(record["config"]["pruning"]), record["config"]
        if (key in rows and config["limit"] == settings["zero_shot_limit"]
                and config.get("dtype", "float32") == settings["zero_shot_dtype"]):
            limit = config["limit"]
            rows[key][f"zero-shot avg ({'all' if limit is None else limit} docs)"] = \
                100 * record["metrics"]["zero_shot"]["average"]
    speeds: dict[str, list[dict]] = {}
    for record in records("speed"):
        speeds.setdefault(_pruning_key(record["config"]["pruning"]), []).append(record)
    dense_speeds = [r for r in records("speed") if r["config"]["pruning"]["method"] == "dense"
                    and r["config"]["pruning"].get("profile") == profile]
    devices: set[str] = set()
    for key, row in rows.items():
        # the record with the most prefill shapes (the full protocol), measured against a dense one alike
        candidates = sorted(speeds.get(key, []), key=lambda r: -len(r["config"].get("prefill_shapes") or []))
        for record in candidates:
            dense = next((d for d in dense_speeds if _same_protocol(d, record)), None)
            if dense is None:
                continue
            measured = record["metrics"]["speed"]
            if "device" in measured:
                devices.add(device_name(measured))
            largest = speedup(dense["metrics"]["speed"], measured)[-1]
            row["decode tok/s (batch 1)"] = measured["decode"][0]["tokens_per_second"]
            row[f"prefill x ({largest['batch']}x{largest['tokens']})"] = largest["measured"]
            row["ideal x"] = largest["ideal"]
            break
    frame = pd.DataFrame(list(rows.values()))
    frame = frame.sort_values(["ratio", "method"]).reset_index(drop=True) if not frame.empty else frame
    frame.attrs["speed_devices"] = " / ".join(sorted(devices))  # where the speeds were measured
    return frame


def pruned_layer_range(record: dict) -> tuple[int, int]:
    """The [start, end) layer range an LLM-Pruner record pruned (its plan's extras; older records resolved
    it into the plan's options)."""
    plan = record["metrics"]["plan"]
    where = plan["extras"] if "layer_start" in plan.get("extras", {}) else plan["options"]
    return where["layer_start"], where["layer_end"]


def device_name(speed: dict) -> str:
    """"CPU" or "CUDA": where a speed record measured (its `device`, e.g. cpu or cuda:0)."""
    return speed["device"].split(":")[0].upper()


def precision_caption(speed: dict) -> str:
    """Device and dtype of a speed record, as captions name them: e.g. "CPU float32", "CUDA bfloat16"."""
    return f"{device_name(speed)} {speed['dtype'].removeprefix('torch.')}"


def prefill_speedups(dense: dict, measured: dict) -> dict:
    """Columns of the measured prefill speedup at every shape, and the MACs-ratio ideal (the same for every
    shape up to rounding: the largest shape's)."""
    from .speed import speedup

    cases = speedup(dense, measured)
    return {**{f"prefill x ({c['batch']}x{c['tokens']})": c["measured"] for c in cases}, "ideal x": cases[-1]["ideal"]}


def speed_row(record: dict, measured: dict, dense: dict) -> dict:
    """One row of a speedup table: the pruning record's method, size and perplexity, and its measured speed
    against the dense model's at the largest prefill shape and at every decode batch."""
    from .speed import speedup

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


# Options a method's label already names (label_of), or that do not change the pruned model.
_NAMED_OPTIONS = {"attention", "allocation", "fine_metric", "fusion", "seed", "batch_size"}


def variant_label(config: dict) -> str:
    """The method's label plus what differs from its profile defaults: options, calibration, recovery
    (e.g. "FASP-style [restore=False]", "FLAP [nsamples=32]", "CFSP + lora (importance ranks)")."""
    if config["method"] == "dense":
        return "Dense"
    from .experiments import calibration_of
    from .methods import get_method
    from .pipeline import COMPOSED

    if config["method"] == COMPOSED:  # a composition's label names every part
        return config["label"]
    from .profiles import PROFILES, profile_settings

    defaults = get_method(config["method"]).defaults
    marks = [f"{k}={v}" for k, v in config.get("options", {}).items()
             if k not in _NAMED_OPTIONS and k in defaults and v != defaults[k]]
    if config.get("profile") in PROFILES:
        usual = calibration_of(profile_settings(config["profile"]), config["method"])
        calibration = config.get("calibration") or {}
        differs = [k for k in ("dataset", "nsamples", "seqlen") if usual and calibration.get(k) != usual[k]]
        if differs == ["nsamples"]:
            marks.append(f"nsamples={calibration['nsamples']}")
        elif differs and calibration:
            marks.append(f"calibration={calibration['dataset']} {calibration['nsamples']}x{calibration['seqlen']}")
    label = config["label"] + (f" [{', '.join(marks)}]" if marks else "")
    recovery = config.get("recovery")
    if recovery:
        ranks = recovery.get("ranks", "uniform")
        label += f" + {recovery.get('method', 'lora')}" + (f" ({ranks} ranks)" if ranks != "uniform" else "")
    return label


def _same_protocol(a: dict, b: dict) -> bool:
    keys = ("threads", "repeats", "prefill_shapes", "decode_batches", "new_tokens")
    return all(a["config"].get(k) == b["config"].get(k) for k in keys)



def record_seconds(record: dict) -> float | None:
    """The compute time a record took: run_once's wall time, else (older records) the sum of its timings;
    None when the record kept no timing (speed records before wall_seconds was recorded)."""
    timings = {k: v for k, v in (record.get("timings") or {}).items() if isinstance(v, int | float)}
    if "wall_seconds" in timings:
        return timings["wall_seconds"]
    return sum(timings.values()) if timings else None


def compute_cost(folder: Path | None = None, root: Path | None = None) -> pd.DataFrame:
    """What a from-scratch run of each notebook costs, from the records it used.

    `make reproduce` runs each notebook with $STRUCTPRUNE_RECORD_LOG=<executed notebook>.records.jsonl
    (records.run_once logs every record it reads or writes); this sums the recorded compute time of each
    notebook's distinct records per machine (cpu_count, "not recorded" for the oldest records)."""
    import json

    folder = Path(folder or results_dir() / "notebooks")
    root = Path(root or results_dir() / "runs")
    rows = []
    for log in sorted(folder.glob("*.records.jsonl")):
        notebook = log.name.removesuffix(".records.jsonl").removesuffix(".ipynb")
        used = {(e["experiment"], e["run_id"]) for e in map(json.loads, log.read_text().splitlines()) if e}
        for experiment, run_id in sorted(used):
            path = root / experiment / f"{run_id}.json"
            if not path.is_file():
                continue
            record = json.loads(path.read_text())
            cpus = record.get("cpu_count")
            device = str(record.get("device") or "cpu")
            machine = device if not device.startswith("cpu") else (
                f"{cpus}-core CPU" if cpus else "CPU, cores not recorded")
            rows.append({"notebook": notebook, "machine": machine, "seconds": record_seconds(record)})
    if not rows:
        return pd.DataFrame(columns=["notebook", "machine", "records", "untimed records", "minutes"])
    frame = pd.DataFrame(rows)
    return (frame.groupby(["notebook", "machine"])
            .agg(records=("seconds", "size"), **{"untimed records": ("seconds", lambda s: int(s.isna().sum()))},
                 minutes=("seconds", lambda s: s.sum() / 60))
            .reset_index())


NOTEBOOK_TITLES = {"01": "FLAP, Wanda-sp and LLM-Pruner (FLAP's paper)", "02": "SAAP-style against LLM-Pruner",
                   "03": "CFSP against its FFN-only baselines", "04": "FASP-style against FLAP and Wanda-sp",
                   "05": "Measured speed against the MACs ideal", "06": "The paper methods at matched parameter counts, and the composition grid",
                   "99": "Leaderboards and compute cost"}
README_BLOCK = ("<!-- results: written by notebook 99 (make report) -->", "<!-- end of results -->")


def write_report(profile: str = "default") -> Path:
    """results/REPORT.md: every table the notebooks wrote for `profile` (each with its caption, which states its
    protocol), by notebook. Each number comes from the records through the tables; nothing is typed."""
    sections = [f"# Results ({profile} profile)\n\nWritten by notebook 99 from the run records (`make report`); "
                "the executed notebooks in `results/notebooks/` show the findings each table supports.\n"]
    for number, title in NOTEBOOK_TITLES.items():
        tables = sorted(tables_dir().glob(f"{number}_{profile}_*.md"))
        if tables:
            sections.append(f"## {number} · {title}\n")
            sections += [f"### {path.stem.removeprefix(f'{number}_{profile}_').replace('_', ' ')}\n\n"
                         f"{path.read_text().strip()}\n" for path in tables]
    path = results_dir() / "REPORT.md"
    atomic_write_text(path, "\n".join(sections))
    return path


def update_readme_block(table: pd.DataFrame, caption: str, readme: Path | None = None) -> Path:
    """Rewrite README.md's marked results block with `table` (Markdown) and its caption."""
    readme = readme or Path(__file__).resolve().parents[2] / "README.md"
    text = readme.read_text()
    start, end = README_BLOCK
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no results block: add the lines {start!r} and {end!r}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, f"{head}{start}\n{caption}\n\n{_markdown(table)}\n{end}{tail}")
    return readme
