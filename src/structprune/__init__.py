"""structprune: retraining-free structured pruning of large language models.

Pipeline (one direction): calibration batches (data) -> statistics (stats) -> scores (methods) ->
plan (allocate) -> surgery -> pruned model -> evaluation (evaluate) -> run record (records) -> report.
"""

__version__ = "0.1.0"

# The public names, imported on first use (PEP 562): `import structprune.records` or reading run records
# does not pay for transformers' modeling code.
_EXPORTS = {
    "Plan": "allocate", "calibration_batches": "data", "evaluation_text": "data", "perplexity": "evaluate",
    "speed": "evaluate", "zero_shot": "evaluate", "METHODS": "methods", "PruneResult": "methods", "prune": "methods",
    "load_model": "models", "tiny_llama": "models", "load_records": "records", "write_record": "records",
    "apply_plan": "surgery", "load_pruned": "surgery", "save_pruned": "surgery",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'structprune' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
