"""Tables and figures from run records, shared by the notebooks and `make report`.

Tables go to results/tables/<name>.{md,tex,csv} and figures to results/figures/<name>.{png,pdf}, each file
written atomically. Every table carries a caption that states its protocol. The papers' numbers live as data in
results/paper/*.csv with the source of each row; nothing here types a number in.

One module per concern, every public name also here (`report.write_table`, `report.grid_rows`, ...):
- `io`: where files go and how they are written; REPORT.md and the README's results block;
- `labels`: how records are named in tables and captions;
- `perplexity`, `zero_shot`, `speed`, `grid`: the tables (and figures) of each kind of measurement;
- `leaderboard`: tables across notebooks, read from the records, and what each notebook cost;
- `findings`: what the notebooks conclude from their tables.
"""

from ..paths import results_dir
from .findings import cfsp_findings, fasp_findings, flap_findings, headline_comparisons
from .grid import (
    GRID_SETS,
    against_papers_rows,
    composition_parts,
    frontier_figure,
    grid_heatmap,
    grid_perplexities,
    grid_rows,
    target_status_rows,
)
from .io import (
    NOTEBOOK_TITLES,
    README_BLOCK,
    figures_dir,
    markdown,
    paper_dir,
    paper_rows,
    readme_block,
    save_figure,
    tables_dir,
    update_readme_block,
    write_report,
    write_table,
)
from .labels import (
    TASK_NAMES,
    calibration_note,
    device_name,
    method_label,
    metric_note,
    paired_text,
    precision_caption,
    protocol_caption,
    variant_label,
    variant_marks,
)
from .leaderboard import (
    compute_cost,
    leaderboard,
    main_rows,
    matched_leaderboard,
    readme_results,
    record_seconds,
)
from .perplexity import (
    kept_fractions,
    layer_range_of,
    long_protocol_rows,
    lowest_per_target,
    matched_rows,
    pruning_rows,
    recovery_rows,
)
from .speed import column_of, engine_rows, engine_study, pareto_front, prefill_speedups, speed_row
from .zero_shot import compare_zero_shot, matched_zero_shot_rows, paired_zero_shot_rows, zero_shot_rows

__all__ = [
    "GRID_SETS", "NOTEBOOK_TITLES", "README_BLOCK", "TASK_NAMES", "against_papers_rows", "compare_zero_shot",
    "composition_parts", "compute_cost", "device_name", "engine_rows", "figures_dir", "frontier_figure",
    "grid_heatmap", "grid_perplexities", "grid_rows", "layer_range_of", "leaderboard", "long_protocol_rows",
    "lowest_per_target", "markdown", "matched_leaderboard", "matched_rows", "matched_zero_shot_rows",
    "method_label", "metric_note", "paired_text", "paired_zero_shot_rows", "paper_dir", "paper_rows",
    "pareto_front", "precision_caption", "prefill_speedups", "protocol_caption", "pruning_rows", "record_seconds",
    "results_dir", "save_figure", "speed_row", "tables_dir", "target_status_rows", "update_readme_block",
    "variant_label", "write_report", "write_table", "zero_shot_rows", "calibration_note", "variant_marks",
    "main_rows", "kept_fractions", "recovery_rows", "column_of", "flap_findings", "cfsp_findings",
    "fasp_findings", "headline_comparisons", "engine_study", "readme_block", "readme_results",
]
