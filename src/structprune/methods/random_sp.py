"""Random structured baseline: uniform per layer, units chosen uniformly at random (seeded)."""

from __future__ import annotations

import torch

from ..allocate import Plan, round_kept, uniform_allocation
from ..architectures import layer_shapes
from ..surgery import apply_plan
from . import Method, register
from .common import empty_plan


def random_sp(model, ratio: float, calibration=None, seed: int = 0, round_to: int = 1) -> Plan:
    generator = torch.Generator().manual_seed(seed)
    shapes = layer_shapes(model)
    group_scores = [torch.rand(s.kv_groups, generator=generator, dtype=torch.float64) for s in shapes]
    channel_scores = [torch.rand(s.channels, generator=generator, dtype=torch.float64) for s in shapes]
    plan = empty_plan(model, "random", ratio, {"seed": seed, "round_to": round_to})
    plan.kept_groups, kept_channels = uniform_allocation(group_scores, channel_scores, ratio)
    plan.kept_channels = [round_kept(k, s, round_to) for k, s in zip(kept_channels, channel_scores, strict=True)]
    apply_plan(model, plan)
    return plan


register(Method(
    name="random",
    label="Random",
    recipe=random_sp,
    defaults={"seed": 0, "round_to": 1},
    calibration=(None, 0, 0),
    summary="random KV groups and channels, uniform per layer (seeded)",
    source="LLM-Pruner paper, Table 1 'Random' baseline",
    option_help={"seed": "random seed", "round_to": "keep MLP channel counts a multiple of k"},
))
