"""Wanda-sp: Wanda's score extended to structures, as FLAP's baseline (FLAP repo `prune_wanda_sp`).

Spec: shared/specs/flap_wanda_sp_llm_pruner.md §3.2.

    for each layer l (sequentially: layer l sees the outputs of the already-pruned layers before it):
        X <- inputs of o_proj and down_proj over the calibration tokens (C4, 128 x 128)
        s_j = ||X_j||_2 * mean_i |W_ij|           (Wanda's |W_ij| ||X_j||, averaged over the column)
        KV group score = sum of s_j over its n_rep * head_dim o_proj columns
        remove the floor(r * G) lowest groups and floor(r * I) lowest channels   (uniform, no bias)

CFSP's same-footing baseline (spec saap_cfsp_fasp.md §1.9, `prune_wanda_sp` of wyxscir/CFSP) is this score
with allocation="global" (one-shot statistics of the dense model, per-layer z-scores, one global threshold
keeping the top 1 - r of all units of a kind) and attention=False (FFN channels only).
"""

from __future__ import annotations

import math

import torch

from ..allocate import Plan, global_allocation, keep_highest, round_kept
from ..architectures import head_dim, queries_per_group
from ..stats import ChannelStats, collect_statistics
from ..surgery import apply_plan, finalize_pruned, prune_layer
from . import Method, ffn_variant_label, register
from .common import down_proj, empty_plan, group_sum, o_proj, output_linears


def wanda_column_score(weight: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """s_j = ||X_j|| * mean_i |W_ij| for a linear with weight [out, in]."""
    return stats.norm * weight.detach().to(torch.float64).abs().mean(0).to(stats.norm.device)


ALLOCATIONS = ("uniform", "global")


def wanda_sp(model, ratio: float, calibration: torch.Tensor, round_to: int = 1, batch_size: int = 8,
             attention: bool = True, allocation: str = "uniform") -> Plan:
    if calibration is None:
        raise ValueError("Wanda-sp needs calibration data")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown Wanda-sp allocation {allocation!r}: choose one of {', '.join(ALLOCATIONS)}")
    plan = empty_plan(model, "wanda_sp", ratio, {"round_to": round_to, "attention": attention,
                                                 "allocation": allocation})
    o_name, down_name = output_linears(model)
    group_width = queries_per_group(model.config) * head_dim(model.config)
    if allocation == "global":
        stats = collect_statistics(model, calibration, (o_name, down_name), batch_size=batch_size)
        channels = [wanda_column_score(down_proj(model, i).weight, s[down_name]) for i, s in enumerate(stats)]
        plan.kept_channels = [round_kept(k, c, round_to) for k, c in zip(global_allocation(channels, ratio),
                                                                         channels, strict=True)]
        if attention:
            plan.kept_groups = global_allocation(
                [group_sum(wanda_column_score(o_proj(model, i).weight, s[o_name]), group_width)
                 for i, s in enumerate(stats)], ratio)
        apply_plan(model, plan)
        return plan

    def prune_now(index: int, stats: dict[str, ChannelStats]) -> None:
        groups = group_sum(wanda_column_score(o_proj(model, index).weight, stats[o_name]), group_width)
        channels = wanda_column_score(down_proj(model, index).weight, stats[down_name])
        kept_g = (keep_highest(groups, groups.numel() - math.floor(ratio * groups.numel())) if attention
                  else list(range(groups.numel())))
        kept_c = round_kept(keep_highest(channels, channels.numel() - math.floor(ratio * channels.numel())),
                            channels, round_to)
        plan.kept_groups[index], plan.kept_channels[index] = kept_g, kept_c
        prune_layer(model, index, kept_g, kept_c)

    collect_statistics(model, calibration, (o_name, down_name), prune_layer=prune_now, batch_size=batch_size)
    finalize_pruned(model)
    return plan


register(Method(
    name="wanda_sp",
    label="Wanda-sp",
    recipe=wanda_sp,
    defaults={"round_to": 1, "batch_size": 8, "attention": True, "allocation": "uniform"},
    calibration=("c4", 128, 128),
    summary="Wanda score averaged per column on o_proj/down_proj inputs, uniform per layer, sequential, no bias",
    source="FLAP repo lib/prune.py::prune_wanda_sp (baseline of An et al. 2024); Wanda: Sun et al. 2023",
    option_help={"round_to": "keep MLP channel counts a multiple of k", "batch_size": "calibration batch",
                 "attention": "also prune KV groups (False: FFN channels only, CFSP's baseline)",
                 "allocation": "uniform (FLAP's Wanda-sp, sequential) | global (CFSP's: z-scores, one threshold)"},
    label_of=lambda options: ffn_variant_label("Wanda-sp", options),
))
