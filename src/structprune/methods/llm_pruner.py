"""LLM-Pruner, block-wise (Ma et al., NeurIPS 2023, arXiv 2305.11627).

    calibration  10 BookCorpus windows x 64 tokens
    score        Taylor importance of coupled groups: s_k = W_k dL/dW_k of the LM loss, for the
                 prunable linears of the layers in range only; per row / column of a member linear
                 param_first (Element^1) sum_k |s_k|, vectorize |sum_k s_k|, param_mix (Element^2)
                 sum_k |s_k - 1/2 W_k^2 F_kk| with the diagonal Fisher F; a group sums its members:
                   KV group g: q rows of its n_rep query heads (contiguous), k and v rows of KV head g,
                               o_proj columns of its query heads (the original's GQA path credits strided
                               query heads: a defect, not reproduced)
                   MLP channel c: gate row c, up row c, down_proj column c
    allocation   layer_range: in every layer of the range (paper: 4-29 of LLaMA-7B's 32) keep the
                 int(n (1 - r)) highest groups and channels; r is per group (0.25 ~ 20 % of LLaMA-7B)
    compensation none (recovery by LoRA: structprune.recovery)
"""

from __future__ import annotations

from ..composition import Composition
from ..scores import TAYLOR_IMPORTANCES
from .base import Method, choice

IMPORTANCES = (*TAYLOR_IMPORTANCES, "random")


def composition(importance: str = "param_first", layer_start: int | None = None, layer_end: int | None = None,
          target_params: float | None = None, round_to: int = 1, seed: int = 42) -> Composition:
    choice("importance", importance, IMPORTANCES)
    score, score_options = ("random", {"seed": seed}) if importance == "random" else ("taylor", {"importance": importance})
    return Composition(score=score, score_options=score_options, allocation="layer_range",
                       allocation_options={"layer_start": layer_start, "layer_end": layer_end,
                                           "target_params": target_params}, round_to=round_to)


METHOD = Method(
    name="llm_pruner",
    label="LLM-Pruner",
    composition=composition,
    calibration=("bookcorpus", 10, 64),
    summary="block-wise Taylor importance of coupled groups, uniform per-group ratio inside a layer range",
    source="Ma et al., NeurIPS 2023 (arXiv 2305.11627); horseee/LLM-Pruner @128a07d",
    option_help={"importance": " | ".join(IMPORTANCES),
                 "target_params": "its own whole-model fraction, kept for earlier records: use --target-params "
                                  "(prune(target_params=...)), which does this for every method",
                 "seed": "seed of the random importance"},
)
