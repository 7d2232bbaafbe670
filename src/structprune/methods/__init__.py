"""The paper methods: a registry (`METHODS`) of declarations.

Each method file is a declaration: its parts (score, allocation, compensation; `structprune.composition`) as a
function of its options, whose keyword defaults are the paper's, its calibration set, and its docstring, the
paper's algorithm box. `structprune.api.prune` runs a method, or any composition of parts, through the one
pipeline.
"""

from __future__ import annotations

from . import cfsp, fasp, flap, llm_pruner, magnitude, random, saap, wanda_sp
from .base import Method

METHODS: dict[str, Method] = {module.METHOD.name: module.METHOD for module in (
    flap, wanda_sp, llm_pruner, magnitude, random, cfsp, fasp, saap)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: available methods are {', '.join(sorted(METHODS))}")
    return METHODS[name]


def resolve_options(method: Method, options: dict) -> dict:
    """The method's defaults updated by `options`; unknown options fail, listing the valid ones."""
    defaults = method.defaults
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        valid = ", ".join(f"{k} (default {v!r})" for k, v in defaults.items()) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for method {method.name!r}; valid options: {valid}")
    return {**defaults, **options}


