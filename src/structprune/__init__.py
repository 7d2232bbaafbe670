"""structprune: retraining-free structured pruning of large language models.

Pipeline (one direction): calibration batches (data) -> statistics (stats) -> scores (methods) ->
plan (allocate) -> surgery -> pruned model -> evaluation (evaluate) -> run record (records) -> report.
"""

__version__ = "0.1.0"

from .allocate import Plan  # noqa: E402
from .data import calibration_batches, evaluation_text  # noqa: E402
from .evaluate import perplexity, speed, zero_shot  # noqa: E402
from .methods import METHODS, PruneResult, prune  # noqa: E402
from .models import load_model, tiny_llama  # noqa: E402
from .records import load_records, write_record  # noqa: E402
from .surgery import apply_plan, load_pruned, save_pruned  # noqa: E402

__all__ = ["METHODS", "Plan", "PruneResult", "apply_plan", "calibration_batches", "evaluation_text", "load_model",
           "load_pruned", "load_records", "perplexity", "prune", "save_pruned", "speed", "tiny_llama",
           "write_record", "zero_shot"]
