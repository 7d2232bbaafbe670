"""Where structprune keeps things: results (records, tables, figures) and its cache (converted models, locks)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "STRUCTPRUNE_CACHE"
RESULTS_ENV = "STRUCTPRUNE_RESULTS"


def cache_dir() -> Path:
    """Where converted models are cached: $STRUCTPRUNE_CACHE, default ~/.cache/structprune."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "structprune")


def results_dir() -> Path:
    """$STRUCTPRUNE_RESULTS, default the repository's results/ folder (or ./results)."""
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV])
    repo = Path(__file__).resolve().parents[2]
    return repo / "results" if (repo / "pyproject.toml").is_file() else Path.cwd() / "results"
