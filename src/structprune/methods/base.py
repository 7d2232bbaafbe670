"""What a paper method is: a name, its composition of parts as a function of its options, and its paper defaults."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from ..allocate import ALLOCATIONS
from ..compensate import COMPENSATIONS
from ..composition import PASS_OPTION_HELP, Composition
from ..scores import SCORES


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # how outputs name the method ("-style" where details of the original are inferred)
    # The method's options -> its composition of parts. Its keyword defaults are the paper's: the one place they live.
    composition: Callable[..., Composition]
    calibration: tuple[str | None, int, int]  # the paper's (dataset, nsamples, seqlen); dataset None = no data
    summary: str
    source: str = ""
    option_help: dict = field(default_factory=dict)  # its own options only: shared ones are explained once
    label_of: Callable[[dict], str] | None = None  # the label of a variant chosen by options

    @property
    def defaults(self) -> dict:
        """Every option and its paper default, read from `composition`'s signature."""
        return {name: p.default for name, p in inspect.signature(self.composition).parameters.items()}

    def help_for(self, option: str) -> str:
        """What an option means: the method's own words where it has them, else the pass's or the part's that
        the option reaches (each written once, beside what it explains)."""
        if option in self.option_help:
            return self.option_help[option]
        if option in PASS_OPTION_HELP:
            return PASS_OPTION_HELP[option]
        composition = self.composition(**self.defaults)
        for part in (SCORES[composition.score], ALLOCATIONS[composition.allocation],
                     COMPENSATIONS[composition.compensation]):
            if option in part.option_help:
                return part.option_help[option]
        return ""

    def label_for(self, options: dict) -> str:
        """How outputs name this method run with `options` (e.g. "Wanda-sp (FFN, global)")."""
        return self.label_of(options) if self.label_of else self.label


def ffn_variant_label(base: str) -> Callable[[dict], str]:
    """Labels of `base` marked when options restrict it to FFN channels or a global threshold (CFSP's baselines)."""
    def label(options: dict) -> str:
        marks = [m for m, on in (("FFN", options.get("attention") is False),
                                 ("global", options.get("allocation") == "global")) if on]
        return f"{base} ({', '.join(marks)})" if marks else base

    return label


def choice(name: str, value, valid: tuple) -> None:
    """Refuse an option value outside its choices, listing them."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(map(str, valid))}")

