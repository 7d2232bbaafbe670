"""Random structured baseline (LLM-Pruner's Table 1 "Random"): units chosen uniformly at random (seeded),
the same count removed in every layer.

    score       uniform random   allocation  uniform   compensation  none
"""

from __future__ import annotations

from ..composition import Composition
from .base import Method


def composition(seed: int = 0, round_to: int = 1) -> Composition:
    return Composition(score="random", score_options={"seed": seed}, allocation="uniform", round_to=round_to)


METHOD = Method(
    name="random",
    label="Random",
    composition=composition,
    calibration=(None, 0, 0),
    summary="random KV groups and channels, uniform per layer (seeded)",
    source="LLM-Pruner paper, Table 1 'Random' baseline",
)
