"""FASP-style: fast and accurate structured pruning (Hu et al., arXiv 2501.09412; ICLR 2025 submission).

Spec: shared/specs/saap_cfsp_fasp.md §2. No code was released; "-style" because the calibration order,
the damping and the per-head value width are inferred (each is an option here).

    for each decoder layer l (sequential: it sees the already pruned layers < l)          [INF §2.6]
        X <- inputs of o_proj and down_proj on the calibration tokens;  G = X^T X (float64)
        s_j = ||X_j||_2 * ||W[:, j]||_1        Wanda's score summed over column j of W    (§2.3)
        attention: unit (g, c) = v_proj row (g, c) + o_proj columns (h, c) of every query head h of
                   KV group g (§2.10); score = sum over the group's heads; keep the top d - floor(r d)
                   value channels in every group, so all heads keep one value width  [INF, §2.2 option (i)]
        MLP:       unit j = gate/up rows j + down_proj column j; keep the top n - floor(r n)    (§2.4)
        restore:   W_S <- W G[:, S] (G[S, S] + lambda I)^-1,  lambda = damping * mean diag G[S, S]
                   (least squares of the layer output on the kept inputs, §2.5; damping INF)
Q and K are never pruned. Biases of o_proj/down_proj are unchanged (the Gram is uncentred).
OPT: the same with v_proj/out_proj and fc1/fc2 (fc1's bias rows go with its rows).
"""

from __future__ import annotations

import math

import torch

from ..allocate import Plan, keep_highest, round_kept
from ..architectures import (
    adapter_for,
    attention_of,
    decoder_layers,
    head_dim,
    queries_per_group,
    value_head_dim,
)
from ..stats import ChannelStats, collect_statistics
from ..surgery import finalize_pruned, prune_layer, prune_value_channels
from . import Method, register
from .common import down_proj, empty_plan, o_proj, output_linears

SOLVER_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def column_scores(weight: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """s_j = ||X_j||_2 * ||W[:, j]||_1 over all calibration tokens (§2.3)."""
    return stats.sumsq.sqrt() * weight.detach().to(torch.float64).abs().sum(0).to(stats.sumsq.device)


def restore_columns(weight: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor, damping: float = 0.01,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """argmin_V ||W X - V X_S||^2 (+ lambda ||V||^2): V = W G[:, S] (G[S, S] + lambda I)^-1, by Cholesky (§2.5)."""
    gram = gram.to(dtype)
    kept = kept.to(gram.device)
    g_ss = gram.index_select(0, kept).index_select(1, kept)
    g_ss = g_ss + damping * g_ss.diagonal().mean() * torch.eye(len(kept), dtype=dtype, device=gram.device)
    rhs = weight.detach().to(device=gram.device, dtype=dtype) @ gram.index_select(1, kept)  # [out, |S|]
    factor = torch.linalg.cholesky(g_ss)
    return torch.cholesky_solve(rhs.T, factor).T


def _set_weight(linear: torch.nn.Linear, weight: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight.copy_(weight.to(device=linear.weight.device, dtype=linear.weight.dtype))


def fasp(model, ratio: float, calibration: torch.Tensor, attention: bool = True, restore: bool = True,
         damping: float = 0.01, sequential: bool = True, solver_dtype: str = "float64", round_to: int = 1,
         batch_size: int = 8) -> Plan:
    if calibration is None:
        raise ValueError("FASP needs calibration data (its scores and restoration read layer inputs)")
    if solver_dtype not in SOLVER_DTYPES:
        raise ValueError(f"unknown solver_dtype {solver_dtype!r}: choose one of {', '.join(SOLVER_DTYPES)}")
    adapter, config = adapter_for(model), model.config
    d, n_rep = head_dim(config), queries_per_group(config)
    dtype = SOLVER_DTYPES[solver_dtype]
    plan = empty_plan(model, "fasp", ratio, {"attention": attention, "restore": restore, "damping": damping,
                                             "sequential": sequential, "solver_dtype": solver_dtype,
                                             "round_to": round_to})
    plan.kept_values = [None] * len(plan.kept_groups)
    o_name, down_name = output_linears(model)

    def prune_one(index: int, stats: dict[str, ChannelStats]) -> None:
        if attention:
            o = o_proj(model, index)
            attn = attention_of(decoder_layers(model)[index], adapter)
            groups = attn.get_submodule(adapter.k).out_features // d
            dv = value_head_dim(attn, adapter, groups, config)
            unit_scores = column_scores(o.weight, stats[o_name]).view(groups, n_rep, dv).sum(1)
            keep = dv - math.floor(ratio * dv)
            if round_to > 1 and keep:  # hardware-friendly value width, as for the MLP channels
                keep = min(max(round(keep / round_to), 1) * round_to, dv)
            kept_values = [keep_highest(unit_scores[g], keep) for g in range(groups)]
            columns = torch.tensor(sorted((g * n_rep + r) * dv + c for g in range(groups) for r in range(n_rep)
                                          for c in kept_values[g]), dtype=torch.long)
            restored = (restore_columns(o.weight, stats[o_name].gram, columns, damping, dtype)
                        if restore and keep < dv else None)  # nothing removed: weights unchanged
            unit_params = config.hidden_size * (1 + n_rep) + (attn.get_submodule(adapter.v).bias is not None)
            plan.value_params_removed += groups * (dv - keep) * unit_params
            prune_value_channels(model, index, kept_values)
            if restored is not None:
                _set_weight(o_proj(model, index), restored)
            plan.kept_values[index] = kept_values
        down = down_proj(model, index)
        channels = down.in_features
        scores = column_scores(down.weight, stats[down_name])
        kept = round_kept(keep_highest(scores, channels - math.floor(ratio * channels)), scores, round_to)
        restored = (restore_columns(down.weight, stats[down_name].gram, torch.tensor(kept), damping, dtype)
                    if restore and len(kept) < channels else None)
        prune_layer(model, index, list(range(plan.dense_groups[index])), kept)
        if restored is not None:
            _set_weight(down_proj(model, index), restored)
        plan.kept_channels[index] = kept

    targets = (o_name, down_name)
    if sequential:
        collect_statistics(model, calibration, targets, prune_layer=prune_one, gram=restore,
                           batch_size=batch_size)
    else:
        for index, stats in enumerate(collect_statistics(model, calibration, targets, gram=restore,
                                                         batch_size=batch_size)):
            prune_one(index, stats)
    finalize_pruned(model)
    return plan


register(Method(
    name="fasp",
    label="FASP-style",
    recipe=fasp,
    defaults={"attention": True, "restore": True, "damping": 0.01, "sequential": True, "solver_dtype": "float64",
              "round_to": 1, "batch_size": 8},
    calibration=("wikitext2", 128, 2048),
    summary="coupled column/row pruning (o_proj+v_proj value channels, down+gate/up channels), Wanda column "
            "score, least-squares restoration of the kept columns",
    source="Hu et al., arXiv 2501.09412 (no code released; spec saap_cfsp_fasp.md §2)",
    option_help={"attention": "also prune value channels (v_proj rows + o_proj columns)",
                 "restore": "least-squares restoration of o_proj/down_proj kept columns",
                 "damping": "lambda = damping x mean diag G[S, S] (0: plain least squares)",
                 "sequential": "later layers calibrate on the pruned layers' outputs (False: one-shot)",
                 "solver_dtype": "float64 | float32 Cholesky solve",
                 "round_to": "keep value widths and MLP channel counts a multiple of k (GPU speed)",
                 "batch_size": "calibration batch"},
    plan_rebuilds_model=False,
))
