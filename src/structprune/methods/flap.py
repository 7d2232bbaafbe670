"""FLAP: fluctuation-based adaptive structured pruning (An et al., AAAI 2024, arXiv 2312.11983).

Spec: shared/specs/flap_wanda_sp_llm_pruner.md §2 (and §7.4 for grouped-query attention).

    stats  <- one pass of the *dense* model over the calibration tokens (WikiText-2, 1024 x 128)
    for each layer l, module m in {o_proj, down_proj}, input channel j:
        S_j = metric(X_j, W_:,j)                  WIFV: Var(X_j) * ||W_:,j||^2   (paper's fluctuation metric)
        S_j = S_j ** 2            for o_proj      (the released code squares the attention metric)
    plan   <- structure search (allocate.flap_allocation): per-layer z-scores, one global threshold,
              units weighted by their parameters (AL-AM)
    bias   B_0 = W[:, removed] @ mean(X[removed])   (baseline bias compensation, folded into o_proj/down_proj)
    surgery: cut q/k/v rows + o_proj columns of removed KV groups, gate/up rows + down_proj columns of
             removed channels, and add B_0.

attention=False: FFN channels only, r of them (CFSP code's `prune_flap_bias` baseline, saap_cfsp_fasp.md
§1.9): with the adaptive structures one global threshold over the per-layer z-scores of all channels.

Variance: the exact token-level unbiased variance (the released code's running estimate is ~T times it,
a uniform factor per layer that the standardisation removes; spec §2.2).
"""

from __future__ import annotations

import torch

from ..allocate import (
    FLAP_STRUCTURES,
    Plan,
    flap_allocation,
    global_allocation,
    round_kept,
    uniform_allocation,
)
from ..architectures import head_dim, layer_shapes, queries_per_group
from ..stats import ChannelStats, collect_statistics
from ..surgery import apply_plan
from . import Method, ffn_variant_label, register
from .common import count_new_bias, down_proj, empty_plan, o_proj, output_linears

METRICS = ("IFV", "WIFV", "WIFN")


def fluctuation_metric(metric: str, weight: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """Per input channel j of a linear with weight [out, in] (§2.3)."""
    weight = weight.detach().to(torch.float64)
    if metric == "IFV":  # input feature variance
        return stats.variance
    if metric == "WIFV":  # weighted input feature variance: the paper's fluctuation metric
        return stats.variance * weight.pow(2).sum(0).to(stats.variance.device)
    if metric == "WIFN":  # weighted input feature norm (Wanda-like)
        return weight.abs().mean(0).to(stats.norm.device) * stats.norm
    raise ValueError(f"unknown FLAP metric {metric!r}: choose one of {', '.join(METRICS)}")


def compensation_bias(weight: torch.Tensor, mean: torch.Tensor, kept: list[int], width: int) -> list[float] | None:
    """B_0 = W[:, removed] @ mean[removed], over the removed units' `width` columns each (§2.1, §2.5)."""
    removed = torch.ones(weight.shape[1] // width, dtype=torch.bool)
    removed[kept] = False
    if not removed.any():
        return None
    columns = removed.repeat_interleave(width)
    weight = weight.detach().to(torch.float64)
    return (weight[:, columns.to(weight.device)] @ mean.to(weight.device)[columns.to(weight.device)]).cpu().tolist()


def flap(model, ratio: float, calibration: torch.Tensor, metric: str = "WIFV", structure: str = "AL-AM",
         bias_compensation: bool = True, remove_groups: int | None = None, round_to: int = 1,
         batch_size: int = 8, attention: bool = True) -> Plan:
    if metric not in METRICS:
        raise ValueError(f"unknown FLAP metric {metric!r}: choose one of {', '.join(METRICS)}")
    if structure not in FLAP_STRUCTURES:
        raise ValueError(f"unknown FLAP structure {structure!r}: choose one of {', '.join(FLAP_STRUCTURES)}")
    if calibration is None:
        raise ValueError("FLAP needs calibration data")
    options = {"metric": metric, "structure": structure, "bias_compensation": bias_compensation,
               "remove_groups": remove_groups, "round_to": round_to, "attention": attention}
    o_name, down_name = output_linears(model)
    stats = collect_statistics(model, calibration, (o_name, down_name), batch_size=batch_size)
    layers = range(len(stats))
    attn_scores = [fluctuation_metric(metric, o_proj(model, i).weight, stats[i][o_name]) ** 2 for i in layers]
    mlp_scores = [fluctuation_metric(metric, down_proj(model, i).weight, stats[i][down_name]) for i in layers]
    group_width = queries_per_group(model.config) * head_dim(model.config)
    if attention:
        kept_groups, kept_channels = flap_allocation(attn_scores, mlp_scores, ratio, structure, layer_shapes(model),
                                                     group_width, remove_groups)
    else:  # FFN only: every KV group stays
        kept_groups = [list(range(s.numel() // group_width)) for s in attn_scores]
        kept_channels = (uniform_allocation([], mlp_scores, ratio)[1] if structure == "UL-UM"
                         else global_allocation(mlp_scores, ratio))
    kept_channels = [round_kept(k, s, round_to) for k, s in zip(kept_channels, mlp_scores, strict=True)]
    plan = empty_plan(model, "flap", ratio, options)
    plan.kept_groups, plan.kept_channels = kept_groups, kept_channels
    if bias_compensation:
        plan.o_bias = [compensation_bias(o_proj(model, i).weight, stats[i][o_name].mean, kept_groups[i], group_width)
                       for i in layers]
        plan.down_bias = [compensation_bias(down_proj(model, i).weight, stats[i][down_name].mean, kept_channels[i], 1)
                          for i in layers]
    plan.new_bias_params = count_new_bias(model, plan)
    apply_plan(model, plan)
    return plan


register(Method(
    name="flap",
    label="FLAP",
    recipe=flap,
    defaults={"metric": "WIFV", "structure": "AL-AM", "bias_compensation": True, "remove_groups": None,
              "round_to": 1, "batch_size": 8, "attention": True},
    calibration=("wikitext2", 1024, 128),
    summary="fluctuation metric on o_proj/down_proj inputs, global adaptive structure, bias compensation",
    source="An et al., AAAI 2024 (arXiv 2312.11983); CASIA-IVA-Lab/FLAP @3bb57db",
    option_help={"metric": "IFV | WIFV | WIFN", "structure": "UL-UM | UL-MM | AL-MM | AL-AM",
                 "bias_compensation": "fold removed channels' means into a bias",
                 "remove_groups": "KV groups to remove in all (UL-MM, AL-MM); default round(r x groups)",
                 "round_to": "keep MLP channel counts a multiple of k", "batch_size": "calibration batch",
                 "attention": "also prune KV groups (False: FFN channels only, CFSP's baseline)"},
    label_of=lambda options: ffn_variant_label("FLAP", options),
))
