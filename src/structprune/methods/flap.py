"""FLAP: fluctuation-based adaptive structured pruning (An et al., AAAI 2024, arXiv 2312.11983).

    statistics  one pass of the *dense* model over WikiText-2, 1024 x 128 tokens
    score       WIFV: S_j = Var(X_j) ||W_:,j||^2 on o_proj / down_proj input columns  (the paper's fluctuation metric)
                (IFV: Var(X_j); WIFN: the Wanda score)
    allocation  AL-AM: per-layer, per-module z-scores of the scores (attention columns squared, as the
                released code), a KV group scores the mean of its columns; one global threshold with
                every unit weighted by its parameters (adaptive structure search)
                (UL-UM, UL-MM, AL-MM: the paper's ablation structures)
    compensation  B_0 = W[:, removed] mean(X[removed]) folded into o_proj / down_proj biases (baseline bias compensation)

attention=False: FFN channels only, one global z-score threshold (UL-UM: uniform), as CFSP's code runs FLAP.
The variance is the exact token-level one (the released code's running estimate is about T times it, a
factor per layer that the standardisation removes).
"""

from __future__ import annotations

from ..allocate import FLAP_STRUCTURES
from ..composition import Composition
from .base import Method, choice, ffn_variant_label

METRICS = ("IFV", "WIFV", "WIFN")


def composition(metric: str = "WIFV", structure: str = "AL-AM", bias_compensation: bool = True,
          remove_groups: int | None = None, round_to: int = 1, batch_size: int = 8,
          attention: bool = True) -> Composition:
    choice("FLAP metric", metric, METRICS)
    choice("FLAP structure", structure, FLAP_STRUCTURES)
    if attention:
        allocation, allocation_options = "flap", {"structure": structure, "remove_groups": remove_groups}
    else:
        allocation, allocation_options = ("uniform" if structure == "UL-UM" else "global"), {}
    return Composition(score={"WIFN": "wanda"}.get(metric, metric.lower()), allocation=allocation,
                       allocation_options=allocation_options,
                       compensation="mean_bias" if bias_compensation else "none",
                       attention=attention, round_to=round_to, batch_size=batch_size)


METHOD = Method(
    name="flap",
    label="FLAP",
    composition=composition,
    calibration=("wikitext2", 1024, 128),
    summary="fluctuation metric on o_proj/down_proj inputs, global adaptive structure, bias compensation",
    source="An et al., AAAI 2024 (arXiv 2312.11983); CASIA-IVA-Lab/FLAP @3bb57db",
    option_help={"metric": "IFV | WIFV | WIFN", "bias_compensation": "fold removed channels' means into a bias"},
    label_of=ffn_variant_label("FLAP"),
)
