"""Every in-process cache of structprune, and one call that empties them all.

- `stats._CACHE`: one-shot calibration statistics of a dense CPU model (a sweep pays for its pass once);
- `evidence._BLOCK_PASSES`: the block-distance pass of the model being swept (CFSP-style allocations);
- `experiments._REBUILT`: the last model a record rebuilt (zero-shot and speed runs of one record);
- `experiments._dense`: the dense models the runs of a notebook load.
Tests start each from none of them (tests/conftest.py), so no test reads what another one left.
"""

from __future__ import annotations


def reset_caches() -> None:
    """Empty every cache listed above."""
    from . import evidence, experiments, stats  # the modules that own the caches (experiments loads slowly)

    stats.clear_statistics_cache()
    evidence._BLOCK_PASSES.clear()
    experiments._REBUILT.clear()
    experiments._dense.cache_clear()
