"""Plans, and the allocation rules that turn unit scores into a plan for a target ratio.

A `Plan` is plain data: which KV groups and MLP channels each decoder layer keeps, optional
compensation biases for o_proj / down_proj, the options that made it, and the parameter count it leads
to. It round-trips through JSON and can be re-applied to a fresh copy of the model (`apply_plan`).

Allocation rules (pure functions over per-layer score tensors):
- `uniform_allocation`: remove floor(r * units) lowest-scored units of each kind in every layer
  (Wanda-sp, magnitude, random; FLAP's UL-UM).
- `flap_allocation`: FLAP's structures UL-UM, UL-MM, AL-MM, AL-AM (spec flap_wanda_sp_llm_pruner.md §2.4).
- `global_allocation`: per-layer z-scores and one global threshold over one kind of unit (the FFN-only
  Wanda-SP and FLAP baselines of CFSP's code, spec saap_cfsp_fasp.md §1.9).
- `cfsp_keep_ratios` / `cfsp_kept_count`: CFSP's coarse step, sigmoid keep ratios from block importance
  (spec saap_cfsp_fasp.md §1.4).
Ratio 0 always keeps every unit: it is the identity (FLAP's code, with its strict threshold, would still
drop the lowest-scored unit).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .architectures import LayerShape


@dataclass
class Plan:
    method: str
    ratio: float
    kept_groups: list[list[int]]  # per layer, sorted indices of the KV groups kept
    kept_channels: list[list[int]]  # per layer, sorted indices of the MLP channels kept
    dense_groups: list[int]  # per layer, KV groups before pruning
    dense_channels: list[int]
    group_params: list[int]  # per layer, parameters of one KV group / one channel
    channel_params: list[int]
    params_before: int  # whole model
    new_bias_params: int = 0  # bias entries added to modules that had no bias
    o_bias: list[list[float] | None] = field(default_factory=list)  # per layer, added to o_proj's bias
    down_bias: list[list[float] | None] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    # Method-specific numbers behind the plan (CFSP: block importance, keep ratios), for figures and recovery.
    extras: dict = field(default_factory=dict)
    # FASP: per layer, per KV group, the value channels kept (None: all), and the parameters those cuts
    # removed (v_proj rows and o_proj columns; units outside whole groups and channels).
    kept_values: list[list[list[int]] | None] | None = None
    value_params_removed: int = 0

    def __post_init__(self):
        layers = len(self.kept_groups)
        self.o_bias = self.o_bias or [None] * layers
        self.down_bias = self.down_bias or [None] * layers

    @property
    def params_removed(self) -> int:
        units = sum((g0 - len(g)) * gp + (c0 - len(c)) * cp for g, c, g0, c0, gp, cp in zip(
            self.kept_groups, self.kept_channels, self.dense_groups, self.dense_channels,
            self.group_params, self.channel_params, strict=True))
        return units + self.value_params_removed

    @property
    def params_after(self) -> int:
        return self.params_before - self.params_removed + self.new_bias_params

    @property
    def prunable_params(self) -> int:
        """Parameters of the prunable units (attention + MLP linears of the decoder layers)."""
        return sum(g0 * gp + c0 * cp for g0, c0, gp, cp in zip(
            self.dense_groups, self.dense_channels, self.group_params, self.channel_params, strict=True))

    def summary(self) -> dict:
        """What a record needs: counts and fractions, not the kept indices."""
        return {
            "method": self.method,
            "ratio": self.ratio,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_removed": self.params_removed,
            "removed_fraction_of_prunable": self.params_removed / max(self.prunable_params, 1),
            "removed_fraction_of_model": 1 - self.params_after / self.params_before,
            "kept_groups_per_layer": [len(g) for g in self.kept_groups],
            "kept_channels_per_layer": [len(c) for c in self.kept_channels],
            "dense_groups_per_layer": self.dense_groups,
            "dense_channels_per_layer": self.dense_channels,
            "options": self.options,
            **({"extras": self.extras} if self.extras else {}),
        }

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        from .records import atomic_write_text

        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_json(Path(path).read_text())


def check_ratio(ratio: float) -> float:
    if not isinstance(ratio, int | float) or math.isnan(ratio) or not 0 <= ratio < 1:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio!r}: 0.2 removes 20 % of the prunable weights")
    return float(ratio)


def keep_highest(scores: torch.Tensor, keep: int) -> list[int]:
    """Sorted indices of the `keep` highest scores (ties broken by index, so the result is deterministic)."""
    keep = max(0, min(keep, scores.numel()))
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    return sorted(order[:keep].tolist())


def round_kept(kept: list[int], scores: torch.Tensor, multiple: int) -> list[int]:
    """Round a layer's kept count to the nearest multiple of `multiple` (hardware-friendly widths),
    adding back the best removed units or dropping the worst kept ones. A layer that keeps some units
    keeps at least one multiple; a layer that keeps none stays empty."""
    if multiple <= 1 or not kept:
        return kept
    target = min(max(round(len(kept) / multiple), 1) * multiple, scores.numel())
    return kept if target == len(kept) else keep_highest(scores, target)


def uniform_allocation(group_scores: list[torch.Tensor], channel_scores: list[torch.Tensor],
                       ratio: float) -> tuple[list[list[int]], list[list[int]]]:
    """In every layer, remove the floor(r * G) lowest KV groups and floor(r * I) lowest channels."""
    kept_groups = [keep_highest(s, s.numel() - math.floor(ratio * s.numel())) for s in group_scores]
    kept_channels = [keep_highest(s, s.numel() - math.floor(ratio * s.numel())) for s in channel_scores]
    return kept_groups, kept_channels


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """FLAP's per-layer, per-module z-score (torch's unbiased std, as the code)."""
    scores = scores.double()
    return (scores - scores.mean()) / scores.std()


FLAP_STRUCTURES = ("UL-UM", "UL-MM", "AL-MM", "AL-AM")


def flap_allocation(attn_channel_scores: list[torch.Tensor], mlp_scores: list[torch.Tensor], ratio: float,
                    structure: str, shapes: list[LayerShape], group_width: int,
                    remove_groups: int | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """FLAP's structure search (§2.4), on KV groups (§7.4: a group's score aggregates its query heads).

    attn_channel_scores: per layer, the (already squared) metric of each o_proj input channel;
    group_width = n_rep * head_dim channels per KV group. mlp_scores: per layer, per channel.
    UL-*: group score = sum of its channel scores. AL-*: channel scores are standardised per layer and
    module, group score = mean of its standardised channel scores.
    AL-AM: one global threshold over all standardised scores, each unit weighted by its parameters; the
    threshold is the score at which the kept weight is closest to (1 - r) * total, and units with a score
    strictly greater are kept. Any layer may lose every group or channel.
    remove_groups (UL-MM, AL-MM): KV groups to remove in all (FLAP's `remove_heads`); default
    round(r * all groups).
    """
    if structure not in FLAP_STRUCTURES:
        raise ValueError(f"unknown FLAP structure {structure!r}: choose one of {', '.join(FLAP_STRUCTURES)}")
    layers = len(shapes)
    if ratio == 0:
        return [list(range(s.kv_groups)) for s in shapes], [list(range(s.channels)) for s in shapes]
    # The allocation is small: do it on the CPU whatever device the statistics were gathered on.
    attn_channel_scores = [s.detach().cpu() for s in attn_channel_scores]
    mlp_scores = [s.detach().cpu() for s in mlp_scores]
    adaptive = structure.startswith("AL")
    if adaptive:
        group_scores = [standardise(s).view(-1, group_width).mean(1) for s in attn_channel_scores]
        channel_scores = [standardise(s) for s in mlp_scores]
    else:
        group_scores = [s.double().view(-1, group_width).sum(1) for s in attn_channel_scores]
        channel_scores = [s.double() for s in mlp_scores]
    if structure == "UL-UM":
        return uniform_allocation(group_scores, channel_scores, ratio)
    if structure == "AL-AM":
        scores = torch.cat(group_scores + channel_scores)
        weights = torch.cat([torch.full((s.kv_groups,), float(s.group_params), dtype=torch.float64) for s in shapes]
                            + [torch.full((s.channels,), float(s.channel_params), dtype=torch.float64) for s in shapes])
        order = torch.sort(scores, descending=True, stable=True).indices
        kept_weight = torch.cumsum(weights[order], 0)
        threshold = scores[order][torch.argmin((kept_weight - (1 - ratio) * weights.sum()).abs())]
        return ([torch.nonzero(s > threshold).flatten().tolist() for s in group_scores],
                [torch.nonzero(s > threshold).flatten().tolist() for s in channel_scores])
    total_groups = sum(s.kv_groups for s in shapes)
    remove_groups = round(ratio * total_groups) if remove_groups is None else remove_groups
    if not 0 <= remove_groups < total_groups:
        raise ValueError(f"remove_groups must be in [0, {total_groups}), got {remove_groups}")
    if structure == "UL-MM":
        per_layer = remove_groups // layers
        kept_groups = [keep_highest(s, s.numel() - per_layer) for s in group_scores]
        kept_channels = []
        for shape, s in zip(shapes, channel_scores, strict=True):
            removed = int((ratio * shape.params - shape.group_params * per_layer) / shape.channel_params)
            kept_channels.append(keep_highest(s, s.numel() - min(max(removed, 0), s.numel())))
        return kept_groups, kept_channels
    # AL-MM: the remove_groups lowest groups globally, and globally as many channels as the budget leaves.
    flat_groups = torch.cat(group_scores)
    keep_g = set(keep_highest(flat_groups, flat_groups.numel() - remove_groups))
    budget = ratio * sum(s.params for s in shapes) - shapes[0].group_params * remove_groups
    flat_channels = torch.cat(channel_scores)
    removed = min(max(int(budget / shapes[0].channel_params), 0), flat_channels.numel())
    keep_c = set(keep_highest(flat_channels, flat_channels.numel() - removed))
    return _split_global(keep_g, [s.numel() for s in group_scores]), _split_global(
        keep_c, [s.numel() for s in channel_scores])


def global_allocation(scores: list[torch.Tensor], ratio: float) -> list[list[int]]:
    """Standardise each layer's scores, then keep the top (1 - r) of all units of the model by one global
    threshold (CFSP code's `prune_wanda_sp` / `prune_flap_bias` on FFN channels; any layer may lose more or
    fewer than r of its own units)."""
    if ratio == 0:
        return [list(range(s.numel())) for s in scores]
    flat = torch.cat([standardise(s.detach().cpu()) for s in scores])
    keep = set(keep_highest(flat, flat.numel() - math.floor(ratio * flat.numel())))
    return _split_global(keep, [s.numel() for s in scores])


def cfsp_keep_ratios(importance: torch.Tensor, ratio: float, a: float = 1.0, scale: float = 1e4) -> torch.Tensor:
    """CFSP's coarse allocation (§1.4): per-block FFN keep ratios whose mean is exactly 1 - r.

    s_l = sigmoid(a (I_l - mean I) / 1e4) over the block importances I_l (sums of angular distances over
    the calibration tokens); if a block would keep more than everything (max s / mean s * (1 - r) >= 1),
    the deviations from the mean shrink by k = mean s (1 / (1 - r) - 1) / (max s - mean s) / 1.05;
    keep_l = s_l / mean s * (1 - r). More important blocks keep more channels.
    """
    importance = importance.detach().double().cpu()
    if ratio == 0:
        return torch.ones_like(importance)
    s = torch.sigmoid(a * (importance - importance.mean()) / scale)
    mean = s.mean()
    if s.max() > mean and s.max() / mean * (1 - ratio) >= 1:
        k = mean * (1 / (1 - ratio) - 1) / (s.max() - mean) / 1.05
        s = mean + (s - mean) * k
    return s / s.mean() * (1 - ratio)


def cfsp_kept_count(channels: int, keep_ratio: float, multiple: int = 1) -> int:
    """Channels a block keeps: the code's int(m keep) + 1 (at most m); with `multiple` (CFSP's
    `--cuda_friendly`, 128) the nearest multiple of it, at least one multiple (the code's threshold index
    becomes -1 below 64 channels and keeps everything; that edge is not reproduced)."""
    if keep_ratio >= 1:
        return channels
    if multiple <= 1:
        return min(channels, int(channels * keep_ratio) + 1)
    return min(channels, max(1, int((channels * keep_ratio + multiple / 2) / multiple)) * multiple)


def _split_global(kept: set[int], sizes: list[int]) -> list[list[int]]:
    out, offset = [], 0
    for size in sizes:
        out.append([i - offset for i in range(offset, offset + size) if i in kept])
        offset += size
    return out
