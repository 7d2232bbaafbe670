"""Compensations: what a cut changes in the kept part of the next linear, o_proj or down_proj.

One signature for every compensation, per linear whose input columns were cut:

    compensate(weight, stats, kept_columns, **options) -> Compensation

`weight` is the dense linear's [out, in] weight, `stats` the `ChannelStats` of its inputs and
`kept_columns` the sorted input columns that stay. A compensation returns a bias to add, new weights for
the kept columns, or neither (nothing was removed, or "none").
- `none`: nothing changes (Wanda-sp, LLM-Pruner, CFSP).
- `mean_bias`: B_0 = W[:, removed] mean(X[removed]), the removed inputs' mean output (FLAP's baseline bias compensation).
- `least_squares`: W_S <- W G[:, S] (G[S, S] + lambda I)^-1 with G = X^T X, the kept columns that best
  reproduce the dense output (FASP's restoration); lambda = damping x mean diag G[S, S]. The damping pulls
  the solution toward zero (`damping_toward="zero"`, ridge regression) or toward the kept columns' own
  weights (`"kept"`: W_S <- (W G[:, S] + lambda W[:, S]) (G[S, S] + lambda I)^-1, so a large damping means
  no restoration rather than shrunken weights).
- `affine_least_squares`: the kept columns and a bias refitted together, argmin_{V, b} ||W X - V X_S - b||^2
  (least squares on [X_S, 1]; the damping acts on V only). It contains both others: with V held at W[:, S]
  (damping toward the kept weights, lambda -> inf) the best bias is FLAP's B_0, and with b held at 0 it is
  `least_squares`; the solution is never worse on the calibration tokens than either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .parts import Part


@dataclass
class Compensation:
    bias: list[float] | None = None  # added to the linear's bias (hidden size)
    weight: torch.Tensor | None = None  # [out, kept columns]: replaces the kept columns' weights


@dataclass(frozen=True)
class CompensationRule(Part):
    """A compensation (`parts.Part`): what the kept columns of o_proj / down_proj become."""

    adds_bias: bool = False  # a bias vector on o_proj / down_proj (counted in the parameters after)
    rewrites_weights: bool = False  # kept weights change: re-applying a plan needs its calibration tokens


def _removed(columns: int, kept: torch.Tensor) -> torch.Tensor:
    removed = torch.ones(columns, dtype=torch.bool)
    removed[kept] = False
    return removed


def none(weight: torch.Tensor, stats, kept: torch.Tensor) -> Compensation:
    return Compensation()


def mean_bias(weight: torch.Tensor, stats, kept: torch.Tensor) -> Compensation:
    """B_0 = W[:, removed] @ mean[removed] (FLAP), in float64."""
    removed = _removed(weight.shape[1], kept)
    if not removed.any():
        return Compensation()
    weight = weight.detach().to(torch.float64)
    columns = removed.to(weight.device)
    return Compensation(bias=(weight[:, columns] @ stats.mean.to(weight.device)[columns]).cpu().tolist())


SOLVER_DTYPES = {"float64": torch.float64, "float32": torch.float32}


DAMPING_TARGETS = ("zero", "kept")


def _damped_normal_equations(weight: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor, damping: float,
                             dtype: torch.dtype, toward: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The normal equations of argmin_V ||W X - V X_S||^2 + lambda ||V - V_0||^2 (V_0 = 0 toward "zero",
    W[:, S] toward "kept"): the system G[S, S] + lambda I, the right-hand side W G[:, S] + lambda V_0, and W
    in the solver's dtype; lambda = damping x mean diag G[S, S]."""
    if toward not in DAMPING_TARGETS:
        raise ValueError(f"unknown damping target {toward!r}: choose one of {', '.join(DAMPING_TARGETS)}")
    gram = gram.to(dtype)
    kept = kept.to(gram.device)
    g_ss = gram.index_select(0, kept).index_select(1, kept)
    lam = damping * g_ss.diagonal().mean()
    g_ss = g_ss + lam * torch.eye(len(kept), dtype=dtype, device=gram.device)
    weight = weight.detach().to(device=gram.device, dtype=dtype)
    rhs = weight @ gram.index_select(1, kept)  # [out, |S|]
    if toward == "kept":
        rhs = rhs + lam * weight.index_select(1, kept)
    return g_ss, rhs, weight


def restore_columns(weight: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor, damping: float = 0.01,
                    dtype: torch.dtype = torch.float64, toward: str = "zero") -> torch.Tensor:
    """argmin_V ||W X - V X_S||^2 + lambda ||V - V_0||^2 with V_0 = 0 (toward "zero") or W[:, S] ("kept"):
    V = (W G[:, S] + lambda V_0) (G[S, S] + lambda I)^-1, by Cholesky."""
    system, rhs, _ = _damped_normal_equations(weight, gram, kept, damping, dtype, toward)
    return torch.cholesky_solve(rhs.T, torch.linalg.cholesky(system)).T


def _solver_dtype(name: str) -> torch.dtype:
    if name not in SOLVER_DTYPES:
        raise ValueError(f"unknown solver_dtype {name!r}: choose one of {', '.join(SOLVER_DTYPES)}")
    return SOLVER_DTYPES[name]


def least_squares(weight: torch.Tensor, stats, kept: torch.Tensor, damping: float = 0.01,
                  solver_dtype: str = "float64", damping_toward: str = "zero") -> Compensation:
    dtype = _solver_dtype(solver_dtype)
    if len(kept) == weight.shape[1] or len(kept) == 0:  # nothing removed, or nothing left to restore
        return Compensation()
    return Compensation(weight=restore_columns(weight, stats.gram, kept, damping, dtype, damping_toward))


def restore_affine(weight: torch.Tensor, gram: torch.Tensor, column_sum: torch.Tensor, count: int, kept: torch.Tensor,
                   damping: float = 0.01, dtype: torch.dtype = torch.float64,
                   toward: str = "kept") -> tuple[torch.Tensor, torch.Tensor]:
    """argmin_{V, b} ||W X - V X_S - b||^2 + lambda ||V - V_0||^2 (V_0 as in `restore_columns`) from the Gram
    G = X^T X, the column sums s = X^T 1 and the token count n: the normal equations of [X_S, 1],
    [V, b] = (W [G[:, S], s] + lambda [V_0, 0]) [[G[S, S] + lambda I, s_S], [s_S^T, n]]^-1, by Cholesky."""
    g_ss, rhs, weight = _damped_normal_equations(weight, gram, kept, damping, dtype, toward)
    # bordered by the constant input: [[G[S, S] + lambda I, s_S], [s_S^T, n]] and [rhs, W s]
    column_sum = column_sum.to(device=g_ss.device, dtype=dtype)
    kept_sum = column_sum[kept.to(g_ss.device)]
    count = torch.tensor([[float(count)]], dtype=dtype, device=g_ss.device)
    system = torch.cat([torch.cat([g_ss, kept_sum[:, None]], dim=1), torch.cat([kept_sum[None], count], dim=1)])
    rhs = torch.cat([rhs, (weight @ column_sum)[:, None]], dim=1)  # [out, |S| + 1]
    size = len(kept)
    solution = torch.cholesky_solve(rhs.T, torch.linalg.cholesky(system)).T
    return solution[:, :size], solution[:, size]


def affine_least_squares(weight: torch.Tensor, stats, kept: torch.Tensor, damping: float = 0.01,
                         solver_dtype: str = "float64", damping_toward: str = "kept") -> Compensation:
    dtype = _solver_dtype(solver_dtype)
    if len(kept) == weight.shape[1]:
        return Compensation()
    if len(kept) == 0:  # nothing left to refit: the best constant is the mean output, FLAP's bias
        return mean_bias(weight, stats, kept)
    new_weight, bias = restore_affine(weight, stats.gram, stats.mean * stats.count, stats.count, kept, damping,
                                      dtype, damping_toward)
    return Compensation(weight=new_weight, bias=bias.cpu().tolist())


COMPENSATIONS: dict[str, CompensationRule] = {rule.name: rule for rule in (
    CompensationRule("none", none, summary="kept weights unchanged"),
    CompensationRule("mean_bias", mean_bias, frozenset({"stats"}), adds_bias=True,
                     summary="FLAP: removed inputs' mean output folded into a bias"),
    CompensationRule("least_squares", least_squares, frozenset({"stats", "gram"}),
                     {"damping": "lambda = damping x mean diag G[S, S] (0: plain least squares)",
                      "solver_dtype": "float64 | float32 Cholesky solve",
                      "damping_toward": "zero (ridge) | kept (toward the kept columns' own weights)"},
                     rewrites_weights=True,
                     summary="FASP: kept columns refitted to the dense output by least squares"),
    CompensationRule("affine_least_squares", affine_least_squares, frozenset({"stats", "gram"}),
                     {"damping": "lambda = damping x mean diag G[S, S], on the weights only",
                      "solver_dtype": "float64 | float32 Cholesky solve",
                      "damping_toward": "kept (toward the kept columns' own weights and FLAP's bias) | zero"},
                     adds_bias=True, rewrites_weights=True,
                     summary="kept columns and a bias refitted together to the dense output (FLAP's bias and "
                             "FASP's least squares in one solve)"),
)}
