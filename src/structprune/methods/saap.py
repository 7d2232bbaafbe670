"""SAAP-style: adaptive pruning with structural importance awareness (Zheng, Ren et al., arXiv 2412.15127).

No code and no equations were available: the pipeline is SAAP's (LLM-Pruner's groups and Taylor
importances, uncertainty-weighted fusion, adaptive layer choice by an importance fluctuation indicator,
group fine-tuning); every formula is a reconstruction, and each choice is an option. Hence "-style".

    calibration  10 BookCorpus windows x 64 tokens, in `batches` mini-batches, LM-loss gradients of each
    score        uncertainty fusion: I_vec(G) = sum over members |sum_k W_k dL/dW_k|,
                 I_elem(G) = sum_k |W_k dL/dW_k| (means over batches);
                 I(G) = I_vec(G) / (2 s1^2) + I_elem(G) / (2 s2^2), s_k^2 = mean of I_k over the scope (closed
                 form; "learned": Adam on log s_k^2 of Kendall et al.'s objective), per layer and module type
    allocation   saap: M_l = mean fused score of the layer, per type over its mean across layers; fluctuation
                 F_l = coefficient of variation of M_l over batches; the `excluded` most fluctuating layers
                 are never pruned; the fewest least important others take LLM-Pruner's parameter count at
                 the same ratio (its default layer range), so both compare at equal size: a uniform share of
                 KV groups, then MLP channels to within one channel of the target
    compensation none (recovery by group fine-tuning: structprune.recovery)
"""

from __future__ import annotations

from ..composition import Composition
from ..scores import FUSION_SCOPES, FUSIONS
from .base import Method, choice


def composition(fusion: str = "closed", scope: str = "layer_type", batches: int = 5, excluded: int | None = None,
          max_layer_ratio: float | None = None) -> Composition:
    choice("SAAP fusion", fusion, FUSIONS)
    choice("SAAP scope", scope, FUSION_SCOPES)
    return Composition(score="uncertainty_fusion", score_options={"fusion": fusion, "scope": scope},
                       allocation="saap", allocation_options={"excluded": excluded, "max_layer_ratio": max_layer_ratio,
                                                              "layer_fusion": fusion},
                       gradient_batches=batches)


METHOD = Method(
    name="saap",
    label="SAAP-style",
    composition=composition,
    calibration=("bookcorpus", 10, 64),
    summary="LLM-Pruner groups; vector- and element-wise Taylor importance fused by homoscedastic uncertainty; "
            "layers chosen by importance ranking and fluctuation, at LLM-Pruner's size for the same ratio",
    source="Zheng, Ren et al., arXiv 2412.15127 (no code or equations available)",
    option_help={"scope": "layer_type (per layer and module type) | type | global: where s_k^2 is fitted",
                 "batches": "calibration mini-batches for the gradients and the fluctuation indicator"},
    label_of=lambda options: "SAAP-style" if options.get("fusion", "closed") == "closed" else "SAAP-style (learned sigma)",
)
