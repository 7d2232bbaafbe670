"""FASP-style: fast and accurate structured pruning (Hu et al., arXiv 2501.09412).

No code was released; "-style" because the calibration order, the damping and the per-head value width
are inferred (each is an option here).

    for each decoder layer l, sequentially (it sees the already pruned layers < l; inferred):
        statistics  inputs X of o_proj and down_proj on WikiText-2, 128 x 2048 tokens; G = X^T X (float64)
        score       Wanda's column score ||X_j||_2 |W_:,j|
        units       attention: value channel (g, c) = v_proj row (g, c) + o_proj columns (h, c) of every query
                    head h of KV group g, scored by the sum over the group's heads; every group keeps its
                    top d - floor(r d), so all heads keep one value width (inferred)
                    MLP: channel j = gate/up rows j + down_proj column j
        allocation  uniform: the top n - floor(r n) channels in every layer
        compensation  least squares: W_S <- W G[:, S] (G[S, S] + lambda I)^-1,
                    lambda = damping x mean diag G[S, S] (damping inferred)
Q and K are never pruned. Biases of o_proj/down_proj are unchanged (the Gram is uncentred).
OPT: the same with v_proj/out_proj and fc1/fc2 (fc1's bias rows go with its rows).
"""

from __future__ import annotations

from ..compensate import SOLVER_DTYPES
from ..composition import Composition
from .base import Method, choice


def composition(attention: bool = True, restore: bool = True, damping: float = 0.01, sequential: bool = True,
          solver_dtype: str = "float64", round_to: int = 1, batch_size: int = 8) -> Composition:
    choice("solver_dtype", solver_dtype, tuple(SOLVER_DTYPES))
    return Composition(score="wanda", allocation="uniform",
                       compensation="least_squares" if restore else "none",
                       compensation_options={"damping": damping, "solver_dtype": solver_dtype} if restore else {},
                       attention=attention, attention_unit="value_channel", sequential=sequential,
                       round_to=round_to, batch_size=batch_size)


METHOD = Method(
    name="fasp",
    label="FASP-style",
    composition=composition,
    calibration=("wikitext2", 128, 2048),
    summary="coupled column/row pruning (o_proj+v_proj value channels, down+gate/up channels), Wanda column "
            "score, least-squares restoration of the kept columns",
    source="Hu et al., arXiv 2501.09412 (no code released)",
    option_help={"attention": "also prune value channels (v_proj rows + o_proj columns)",
                 "restore": "least-squares restoration of o_proj/down_proj kept columns",
                 "round_to": "keep value widths and MLP channel counts a multiple of k (GPU speed)"},
)
