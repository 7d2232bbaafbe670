"""What every part declares: a name, its function, the evidence it needs, help for its options, a summary.

A part's options, and their defaults, are its function's keyword parameters: they are read from the signature
(`Part.defaults`), never written a second time. Each kind of part has one signature (`SIGNATURES`):

    score(model, index, evidence, **options) -> LayerScores          (scores.py)
    allocate(scores, budget, evidence, **options) -> Kept             (allocate.py)
    compensate(weight, stats, kept, **options) -> Compensation        (compensate.py)

Adding a part is one function and one registry entry beside it; tests/parts/test_parts_registry.py checks every
entry against these rules.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

# The evidence the calibration passes can collect (`evidence.Evidence`): what a part may name in `needs`.
EVIDENCE = frozenset({"stats", "gram", "gradients", "fisher", "batch_taylor", "block_importance"})
SIGNATURES = {"score": ("model", "index", "evidence"), "allocation": ("scores", "budget", "evidence"),
              "compensation": ("weight", "stats", "kept")}


@dataclass(frozen=True)
class Part:
    name: str
    fn: Callable
    # The evidence kinds it reads, or a function of its options that says which (e.g. Taylor's l1/l2 need none).
    needs: frozenset[str] | Callable[[dict], frozenset[str]] = frozenset()
    option_help: dict = field(default_factory=dict)
    summary: str = ""

    @property
    def defaults(self) -> dict:
        """Every option and its default: the function's keyword parameters (evidence is not an option)."""
        return {name: p.default for name, p in inspect.signature(self.fn).parameters.items()
                if p.default is not inspect.Parameter.empty and name != "evidence"}

    def needs_for(self, options: dict | None = None) -> frozenset[str]:
        """The evidence this part needs with these options."""
        return self.needs({**self.defaults, **(options or {})}) if callable(self.needs) else self.needs
