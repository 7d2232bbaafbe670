"""Magnitude-sp: structured magnitude baseline (FLAP repo `mag_sp`; spec §3.2). No calibration data.

    s_j = ||W_:,j||_2 on o_proj / down_proj columns; KV group score = sum over its columns;
    remove floor(r * G) groups and floor(r * I) channels in every layer; no bias.
    attention=False: FFN channels only, r of the channels (CFSP code's `prune_magnitude_sp`, §1.9).
"""

from __future__ import annotations

import torch

from ..allocate import Plan, round_kept, uniform_allocation
from ..architectures import decoder_layers, head_dim, queries_per_group
from ..surgery import apply_plan
from . import Method, ffn_variant_label, register
from .common import down_proj, empty_plan, group_sum, o_proj


def column_norm(linear: torch.nn.Linear) -> torch.Tensor:
    """||W_:,j||_2 of every input column."""
    return linear.weight.detach().to(torch.float64).norm(dim=0)


def magnitude(model, ratio: float, calibration=None, round_to: int = 1, attention: bool = True) -> Plan:
    group_width = queries_per_group(model.config) * head_dim(model.config)
    layers = range(len(decoder_layers(model)))
    group_scores = [group_sum(column_norm(o_proj(model, i)), group_width) for i in layers]
    channel_scores = [column_norm(down_proj(model, i)) for i in layers]
    plan = empty_plan(model, "magnitude", ratio, {"round_to": round_to, "attention": attention})
    kept_groups, kept_channels = uniform_allocation(group_scores, channel_scores, ratio)
    if attention:
        plan.kept_groups = kept_groups
    plan.kept_channels = [round_kept(k, s, round_to) for k, s in zip(kept_channels, channel_scores, strict=True)]
    apply_plan(model, plan)
    return plan


register(Method(
    name="magnitude",
    label="Magnitude-sp",
    recipe=magnitude,
    defaults={"round_to": 1, "attention": True},
    calibration=(None, 0, 0),
    summary="L2 norm of o_proj/down_proj columns, uniform per layer, no data",
    source="FLAP repo lib/prune.py (mag_sp baseline)",
    option_help={"round_to": "keep MLP channel counts a multiple of k",
                 "attention": "also prune KV groups (False: FFN channels only, CFSP's baseline)"},
    label_of=lambda options: ffn_variant_label("Magnitude-sp", options),
))
