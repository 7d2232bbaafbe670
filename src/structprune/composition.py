"""Compositions of parts: a score, an allocation and a compensation with their options, and how the pass runs
(`Composition`, `compose`); plain data that plans and records store (`describe`, `composition_from`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .allocate import ALLOCATIONS
from .compensate import COMPENSATIONS
from .options import check_option_values
from .parts import EVIDENCE
from .scores import SCORE_ALIASES, SCORES, column_scores
from .stats import BLOCK_METRICS
from .units import ATTENTION_UNITS

COMPOSED = "composed"  # the method name of plans and records of a composition of parts (not a paper method)



# Scores that give o_proj column scores, which value-channel and query-head units regroup.
DATA_EVIDENCE = EVIDENCE  # every kind of evidence is measured on calibration data



GRADIENT_EVIDENCE = frozenset({"gradients", "fisher", "batch_taylor"})



@dataclass(frozen=True)
class Composition:
    """A pruning method as parts. Plain data: `describe()` is what plans and records store."""

    score: str = "wanda"
    allocation: str = "uniform"
    compensation: str = "none"
    score_options: dict = field(default_factory=dict)
    allocation_options: dict = field(default_factory=dict)
    compensation_options: dict = field(default_factory=dict)
    attention: bool = True  # False: FFN channels only, every KV group stays
    attention_unit: str = "kv_group"  # "value_channel": FASP's value channels inside every KV group;
    # "query_head": query heads inside every KV group (the same number from each group of a layer)
    sequential: bool = False  # each layer calibrates on the already pruned layers before it
    round_to: int = 1  # kept MLP channel counts (and value widths) a multiple of k
    batch_size: int = 8  # calibration batch of the statistics pass
    gradient_batches: int = 5  # calibration mini-batches of per-batch Taylor importances (SAAP-style)

    def needs(self) -> frozenset[str]:
        return (SCORES[self.score].needs_for(self.score_options)
                | ALLOCATIONS[self.allocation].needs_for(self.allocation_options)
                | COMPENSATIONS[self.compensation].needs_for(self.compensation_options))

    def needs_data(self) -> bool:
        return bool(self.needs() & DATA_EVIDENCE)

    def describe(self) -> dict:
        """Every part with every option, defaults included: what plans and records name."""
        return {"score": {"name": self.score, **SCORES[self.score].defaults, **self.score_options},
                "allocation": {"name": self.allocation, **ALLOCATIONS[self.allocation].defaults,
                               **self.allocation_options},
                "compensation": {"name": self.compensation, **COMPENSATIONS[self.compensation].defaults,
                                 **self.compensation_options},
                "attention": self.attention, "attention_unit": self.attention_unit, "sequential": self.sequential,
                "round_to": self.round_to, "batch_size": self.batch_size,
                "gradient_batches": self.gradient_batches}

    @property
    def label(self) -> str:
        parts = f"{self.score} × {self.allocation} × {self.compensation}"
        unit_mark = ATTENTION_UNITS[self.attention_unit].mark if self.attention_unit in ATTENTION_UNITS else None
        marks = [m for m, on in (("FFN", not self.attention), ("sequential", self.sequential),
                                 (unit_mark, unit_mark is not None)) if on]
        return f"{parts} ({', '.join(marks)})" if marks else parts

    def check(self) -> Composition:
        """Fail at once, listing the valid choices, on an unknown part, option or impossible combination."""
        for kind, name, registry in (("score", self.score, SCORES), ("allocation", self.allocation, ALLOCATIONS),
                                     ("compensation", self.compensation, COMPENSATIONS)):
            if name not in registry:
                raise ValueError(f"unknown {kind} {name!r}: choose one of {', '.join(registry)}")
        for kind, options, part in (("score", self.score_options, SCORES[self.score]),
                                    ("allocation", self.allocation_options, ALLOCATIONS[self.allocation]),
                                    ("compensation", self.compensation_options, COMPENSATIONS[self.compensation])):
            unknown = sorted(set(options) - set(part.defaults))
            if unknown:
                valid = ", ".join(f"{k} (default {v!r})" for k, v in part.defaults.items()) or "none"
                raise ValueError(f"unknown option(s) {', '.join(unknown)} for {kind} {part.name!r}; valid: {valid}")
        for kind, options, part in (("score", self.score_options, SCORES[self.score]),
                                    ("allocation", self.allocation_options, ALLOCATIONS[self.allocation]),
                                    ("compensation", self.compensation_options, COMPENSATIONS[self.compensation])):
            check_option_values(part.fn, options, f"{kind} {part.name!r}")
        check_option_values(Composition, {k: getattr(self, k) for k in COMPOSITION_FIELDS}, "the composition")
        if self.attention_unit not in ATTENTION_UNITS:
            raise ValueError(f"unknown attention unit {self.attention_unit!r}: choose one of {', '.join(ATTENTION_UNITS)}")
        if self.sequential and not ALLOCATIONS[self.allocation].layerwise:
            layerwise = [a.name for a in ALLOCATIONS.values() if a.layerwise]
            raise ValueError(f"allocation {self.allocation!r} needs every layer's scores before any cut, so it cannot "
                             f"run sequentially: use sequential=False, or a layer-wise allocation "
                             f"({', '.join(layerwise)})")
        if self.sequential and self.needs() & GRADIENT_EVIDENCE:
            raise ValueError(f"score {self.score!r} / allocation {self.allocation!r} need LM-loss gradients, which are "
                             "taken once on the dense model: use sequential=False")
        if ATTENTION_UNITS[self.attention_unit].inside_groups and self.attention and not SCORES[self.score].gives_columns:
            raise ValueError(f"{self.attention_unit.replace('_', '-')} units regroup o_proj column scores; score "
                             f"{self.score!r} has none: "
                             f"choose one of {', '.join(column_scores())}, or attention_unit='kv_group'")
        block_metric = self.allocation_options.get("block_metric", "angular")
        if block_metric not in BLOCK_METRICS:
            raise ValueError(f"unknown block_metric {block_metric!r}: choose one of {', '.join(BLOCK_METRICS)}")
        return self



COMPOSITION_FIELDS = ("attention", "attention_unit", "sequential", "round_to", "batch_size", "gradient_batches")



# What the pass options mean, written once (methods and `structprune methods` read it).
PASS_OPTION_HELP = {
    "attention": "also prune KV groups (False: FFN channels only, CFSP's baseline)",
    "attention_unit": " | ".join(ATTENTION_UNITS) + ": the attention unit inside every layer",
    "sequential": "later layers calibrate on the pruned layers' outputs (False: one-shot)",
    "round_to": "keep MLP channel counts a multiple of k",
    "batch_size": "calibration batch",
    "gradient_batches": "calibration mini-batches of per-batch Taylor importances",
}



def compose(score: str = "wanda", allocation: str = "uniform", compensation: str = "none", **options) -> Composition:
    """A composition of parts by name; each option goes to the part that declares it (`structprune methods`
    lists them), or to the pass (attention, attention_unit, sequential, round_to, batch_size, gradient_batches).
    Unknown parts and options, and combinations that cannot run, fail at once with the valid choices."""
    score = SCORE_ALIASES.get(score, score)
    parts = {"score": SCORES.get(score), "allocation": ALLOCATIONS.get(allocation),
             "compensation": COMPENSATIONS.get(compensation)}
    routed: dict[str, dict] = {kind: {} for kind in parts}
    passing = {}
    for key, value in options.items():
        owners = [kind for kind, part in parts.items() if part is not None and key in part.defaults]
        if key in COMPOSITION_FIELDS:
            passing[key] = value
        elif len(owners) == 1:
            routed[owners[0]][key] = value
        elif owners:
            raise ValueError(f"option {key!r} belongs to several parts ({', '.join(owners)}): pass it in "
                             f"{owners[0]}_options")
        else:
            valid = sorted({k for part in parts.values() if part is not None for k in part.defaults}
                           | set(COMPOSITION_FIELDS))
            raise ValueError(f"unknown option {key!r} for score {score!r}, allocation {allocation!r}, compensation "
                             f"{compensation!r}; valid options: {', '.join(valid)}")
    return Composition(score=score, allocation=allocation, compensation=compensation,
                       score_options=routed["score"], allocation_options=routed["allocation"],
                       compensation_options=routed["compensation"], **passing).check()



def composition_from(description: dict) -> Composition:
    """The composition that `Composition.describe()` wrote (records and plans store it): the inverse of describe."""
    parts = {kind: dict(description[kind]) for kind in ("score", "allocation", "compensation")}
    return Composition(score=parts["score"].pop("name"), allocation=parts["allocation"].pop("name"),
                       compensation=parts["compensation"].pop("name"), score_options=parts["score"],
                       allocation_options=parts["allocation"], compensation_options=parts["compensation"],
                       **{k: description[k] for k in COMPOSITION_FIELDS if k in description}).check()
