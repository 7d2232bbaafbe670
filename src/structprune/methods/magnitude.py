"""Magnitude-sp: the structured magnitude baseline (FLAP repo `mag_sp`). No calibration data.

    score       s_j = ||W_:,j||_2 on o_proj / down_proj columns; a KV group sums its columns
    allocation  uniform: remove floor(r G) groups and floor(r I) channels in every layer
    compensation  none
attention=False: FFN channels only (CFSP code's `prune_magnitude_sp`).
"""

from __future__ import annotations

from ..composition import Composition
from .base import Method, ffn_variant_label


def composition(round_to: int = 1, attention: bool = True) -> Composition:
    return Composition(score="magnitude", allocation="uniform", attention=attention, round_to=round_to)


METHOD = Method(
    name="magnitude",
    label="Magnitude-sp",
    composition=composition,
    calibration=(None, 0, 0),
    summary="L2 norm of o_proj/down_proj columns, uniform per layer, no data",
    source="FLAP repo lib/prune.py (mag_sp baseline)",
    label_of=ffn_variant_label("Magnitude-sp"),
)
