"""Wanda-sp: Wanda's score extended to structures, FLAP's baseline (FLAP repo `prune_wanda_sp`).

    for each layer l, sequentially (layer l calibrates on the outputs of the pruned layers before it):
        statistics  inputs of o_proj and down_proj over C4, 128 x 128 tokens
        score       s_j = ||X_j||_2 mean_i |W_ij|  (Wanda's |W_ij| ||X_j||, averaged over column j);
                    a KV group scores the sum over its n_rep * head_dim o_proj columns
        allocation  uniform: remove the floor(r G) lowest groups and floor(r I) lowest channels
        compensation  none

allocation="global" is CFSP's same-footing baseline: one-shot statistics of the dense model, per-layer
z-scores and one global threshold keeping the top 1 - r of each kind of unit; attention=False prunes FFN
channels only.
"""

from __future__ import annotations

from ..composition import Composition
from .base import Method, choice, ffn_variant_label

ALLOCATIONS = ("uniform", "global")


def composition(round_to: int = 1, batch_size: int = 8, attention: bool = True, allocation: str = "uniform") -> Composition:
    choice("Wanda-sp allocation", allocation, ALLOCATIONS)
    return Composition(score="wanda", allocation=allocation, attention=attention,
                       sequential=allocation == "uniform", round_to=round_to, batch_size=batch_size)


METHOD = Method(
    name="wanda_sp",
    label="Wanda-sp",
    composition=composition,
    calibration=("c4", 128, 128),
    summary="Wanda score averaged per column on o_proj/down_proj inputs, uniform per layer, sequential, no bias",
    source="FLAP repo lib/prune.py::prune_wanda_sp (baseline of An et al. 2024); Wanda: Sun et al. 2023",
    option_help={"allocation": "uniform (FLAP's Wanda-sp, sequential) | global (CFSP's: z-scores, one threshold)"},
    label_of=ffn_variant_label("Wanda-sp"),
)
