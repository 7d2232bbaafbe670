"""The composition grid: every score x allocation x compensation at matched sizes against the paper methods on
the same windows, its heatmap and the perplexity-parameters frontier."""

from __future__ import annotations

import pandas as pd

from ..evaluate import paired_perplexity
from .labels import method_label, paired_text

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
