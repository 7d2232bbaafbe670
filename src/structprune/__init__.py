"""structprune: retraining-free structured pruning of large language models.

Pipeline (one direction): calibration batches (data) -> evidence (stats, evidence) -> scores (scores) ->
allocation (allocate) -> compensation and cut (compensate, apply, surgery) -> pruned model -> checkpoint ->
evaluation (evaluate, speed) -> run record (records) -> report. `api.prune` checks its input and runs a
composition of parts (`composition`) through `pipeline`; `methods` declares the paper methods as compositions.
"""

__version__ = "0.1.0"

# The public names, imported on first use (PEP 562): `import structprune.records` or reading run records
# does not pay for transformers' modeling code. Every name is a function or class; submodules (such as
# `structprune.speed`) are always the modules, whatever was imported first.
_EXPORTS = {
    "Plan": "plan", "calibration_batches": "data", "evaluation_text": "data", "perplexity": "evaluate",
    "zero_shot": "evaluate", "export_gguf": "export", "METHODS": "methods", "PruneResult": "api", "prune": "api",
    "prune_streamed": "api", "Composition": "composition", "compose": "composition", "load_model": "models",
    "tiny_llama": "models", "load_records": "records", "write_record": "records", "apply_plan": "apply",
    "load_pruned": "models", "save_pruned": "checkpoint", "streamed_perplexity": "streaming",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    import importlib

    if name not in _EXPORTS:
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            raise AttributeError(f"module 'structprune' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
