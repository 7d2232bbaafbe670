"""CFSP: coarse-to-fine activation-based structured pruning (Wang et al., COLING 2025, arXiv 2409.13199).

Read in the official code (wyxscir/CFSP `prune_cfsp`, `block_metrics.py`). Only FFN intermediate channels
are removed; attention is untouched.

    statistics  one pass of the *dense* model over WikiText-2, 128 x 1024 tokens
    allocation  coarse, per block l: I_l = sum over tokens of arccos(cos(h_in, h_out)) / pi
                keep_l = sigmoid keep ratios of the I_l, mean exactly 1 - r (code)
                block l keeps its top cfsp_kept_count(m, keep_l, round_to) channels (round_to 128 is the
                code's --cuda_friendly)
    score       fine, per channel j: a_j = ||X_j||_2 of the down_proj input ("activation", the released
                code: the weight terms of its three_w_one_wa formula cancel, see
                scores.cfsp_code_score_reference); "relative": the paper's Eq. 8 (arXiv v2) intent with weights
                normalised across channels (inferred axes, so "-style")
    compensation  none (the code's `compress`, not `compress_bias`)
"""

from __future__ import annotations

from ..composition import Composition
from ..stats import BLOCK_METRICS
from .base import Method, choice

FINE_METRICS = ("activation", "relative")


def composition(a: float = 1.0, fine_metric: str = "activation", block_metric: str = "angular", round_to: int = 1,
          importance_tokens: int | None = None, batch_size: int = 8) -> Composition:
    choice("CFSP fine_metric", fine_metric, FINE_METRICS)
    choice("CFSP block_metric", block_metric, BLOCK_METRICS)
    return Composition(score="activation" if fine_metric == "activation" else "activation_relative",
                       allocation="cfsp", allocation_options={"a": a, "block_metric": block_metric,
                                                              "importance_tokens": importance_tokens},
                       attention=False, round_to=round_to, batch_size=batch_size)


METHOD = Method(
    name="cfsp",
    label="CFSP",
    composition=composition,
    calibration=("wikitext2", 128, 1024),
    summary="FFN channels only: sigmoid per-block budgets from angular block importance, channels by "
            "activation norm (the released code)",
    source="Wang et al., COLING 2025 (arXiv 2409.13199); wyxscir/CFSP lib/prune.py::prune_cfsp",
    option_help={"fine_metric": "activation (released code: channels by ||X_j||) | relative (paper Eq. 8 "
                                "intent, inferred normalisation)",
                 "round_to": "keep each block's channel count a multiple of k (code: 128, --cuda_friendly)"},
    label_of=lambda options: "CFSP" if options.get("fine_metric", "activation") == "activation"
    else "CFSP-style (relative score)",
)
