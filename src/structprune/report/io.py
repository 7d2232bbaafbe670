"""Where tables, figures and the report go, and how they are written: Markdown (caption first), LaTeX and CSV
tables, PNG and PDF figures, each file atomically; the papers' numbers as data (results/paper/); REPORT.md and
the README's generated results block."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..paths import results_dir
from ..records import atomic_write_text
from ..staging import remove_orphans, temporary_file, tidy

REPOSITORY = Path(__file__).resolve().parents[3]  # paper data and README.md live in the repository


def tables_dir() -> Path:
    return results_dir() / "tables"


def figures_dir() -> Path:
    return results_dir() / "figures"


def paper_dir() -> Path:
    """The papers' reported numbers: the repository's results/paper/ (data, not outputs: it does not move
    with $STRUCTPRUNE_RESULTS)."""
    return REPOSITORY / "results" / "paper"


def paper_rows(name: str) -> pd.DataFrame:
    """A table of a paper's reported numbers (results/paper/<name>.csv, with a `source` column)."""
    path = paper_dir() / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no paper table {path}: the files in results/paper/ are "
                                f"{', '.join(p.stem for p in path.parent.glob('*.csv'))}")
    return pd.read_csv(path)


def markdown(frame: pd.DataFrame) -> str:
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
    atomic_write_text(paths["md"], f"{caption}\n\n{markdown(frame)}\n")
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


def readme_block(table: pd.DataFrame, caption: str) -> str:
    """The README's marked results block holding `table` (Markdown) and its caption, markers included."""
    start, end = README_BLOCK
    return f"{start}\n{caption}\n\n{markdown(table)}\n{end}"


def update_readme_block(table: pd.DataFrame, caption: str, readme: Path | None = None) -> Path:
    """Rewrite README.md's marked results block with `table` (Markdown) and its caption."""
    readme = readme or REPOSITORY / "README.md"
    text = readme.read_text()
    start, end = README_BLOCK
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no results block: add the lines {start!r} and {end!r}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, f"{head}{readme_block(table, caption)}{tail}")
    return readme
