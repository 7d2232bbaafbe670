"""Plans, and the allocation rules that turn unit scores into the units each layer keeps.

A `Plan` is plain data: which KV groups and MLP channels each decoder layer keeps, optional
compensation biases for o_proj / down_proj, the parts and options that made it, and the parameter count
it leads to. It round-trips through JSON and can be re-applied to a fresh copy of the model (`apply_plan`).

One signature for every allocation rule:

    allocate(scores: list[LayerScores], budget: Budget, evidence, **options) -> Kept

`budget` carries the ratio, the layers' shapes (parameters per unit) and `round_to`. The rules:
- `uniform`: remove floor(r * units) lowest-scored units of each kind in every layer (Wanda-sp, magnitude,
  random; FLAP's UL-UM). It needs one layer at a time, so it can run sequentially.
- `flap`: FLAP's structure search, UL-UM / UL-MM / AL-MM / AL-AM (An et al. 2024).
- `global`: per-layer z-scores and one global threshold per kind of unit (CFSP code's FFN baselines).
- `layer_range`: LLM-Pruner's rule: int(n (1 - r)) units kept in every layer of a range.
- `cfsp`: CFSP's coarse step, sigmoid keep ratios of the FFN channels from block importance (its code).
- `saap`: SAAP-style layer choice by importance ranking and fluctuation, at LLM-Pruner's size.
After any rule, `round_to` rounds every layer's kept channel count (`round_kept`).
Ratio 0 always keeps every unit: it is the identity (FLAP's code, with its strict threshold, would still
drop the lowest-scored unit).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .architectures import LayerShape
from .parts import Part
from .scores import fuse, mean_batch_taylor


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
    """FLAP's structure search, on KV groups (a group's score aggregates its query heads).

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
    threshold (CFSP's code runs its Wanda-sp and FLAP baselines so, on FFN channels; any layer may lose more
    or fewer than r of its own units)."""
    if ratio == 0:
        return [list(range(s.numel())) for s in scores]
    flat = torch.cat([standardise(s.detach().cpu()) for s in scores])
    keep = set(keep_highest(flat, flat.numel() - math.floor(ratio * flat.numel())))
    return _split_global(keep, [s.numel() for s in scores])


def cfsp_keep_ratios(importance: torch.Tensor, ratio: float, a: float = 1.0, scale: float = 1e4) -> torch.Tensor:
    """CFSP's coarse allocation, as its code computes it: per-block FFN keep ratios whose mean is exactly 1 - r.

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


# --- one signature for every rule ------------------------------------------------------------------------------

@dataclass
class Budget:
    """What an allocation rule is asked for: remove `ratio` of the units (as each rule reads it) of layers
    with these shapes, rounding kept channel counts to multiples of `round_to`."""

    ratio: float
    shapes: list[LayerShape]
    group_width: int  # o_proj input columns per KV group (n_rep * head_dim)
    params_before: int  # the whole model's parameters
    round_to: int = 1


@dataclass
class Kept:
    """Per layer, the sorted indices of the KV groups and MLP channels kept; `extras`: numbers behind the
    choice (block importance, keep ratios, chosen layers) for figures and recovery."""

    groups: list[list[int]]
    channels: list[list[int]]
    extras: dict = field(default_factory=dict)
    # Per layer, how many units inside every KV group to keep, for compositions whose attention unit lies inside
    # groups (value channels, query heads); None: the unit's uniform rule (`units.py`).
    inner: list[int | None] | None = None


@dataclass(frozen=True)
class Allocation(Part):
    """An allocation rule (`parts.Part`): which units each layer keeps, from every layer's scores."""

    layerwise: bool = False  # needs one layer's scores at a time: can run in a sequential pass
    # The layers whose units it may remove (default: all); gradients are taken for those only.
    layers: Callable[[int, dict], range] | None = None


def _all_kept(shapes: list[LayerShape]) -> Kept:
    return Kept([list(range(s.kv_groups)) for s in shapes], [list(range(s.channels)) for s in shapes])


def uniform(scores, budget: Budget, evidence=None) -> Kept:
    groups, channels = uniform_allocation([s.groups for s in scores], [s.channels for s in scores], budget.ratio)
    return Kept(groups, channels)


def flap(scores, budget: Budget, evidence=None, structure: str = "AL-AM", remove_groups: int | None = None) -> Kept:
    """FLAP's structures over o_proj column scores (squared, as FLAP's code squares its attention metric)
    and channel scores; a score without columns (Taylor) enters with one column per group."""
    columns = [(s.columns if s.columns is not None else s.groups) ** 2 for s in scores]
    width = budget.group_width if all(s.columns is not None for s in scores) else 1
    groups, channels = flap_allocation(columns, [s.channels for s in scores], budget.ratio, structure,
                                       budget.shapes, width, remove_groups)
    return Kept(groups, channels)


def global_threshold(scores, budget: Budget, evidence=None) -> Kept:
    return Kept(global_allocation([s.groups for s in scores], budget.ratio),
                global_allocation([s.channels for s in scores], budget.ratio))


# LLM-Pruner: a uniform per-group ratio inside a layer range.

def default_layer_range(num_layers: int) -> tuple[int, int]:
    """LLM-Pruner's LLaMA-7B range, layers [4, 30) of 32, scaled to the model's depth."""
    return round(4 * num_layers / 32), round(30 * num_layers / 32)


def pruned_layer_range(num_layers: int, options: dict) -> range:
    start, end = default_layer_range(num_layers)
    layer_start, layer_end = options.get("layer_start"), options.get("layer_end")
    layers = range(start if layer_start is None else layer_start, end if layer_end is None else layer_end)
    if not (0 <= layers.start < layers.stop <= num_layers):
        raise ValueError(f"layer range [{layers.start}, {layers.stop}) is not inside the model's {num_layers} layers")
    return layers


def removed_in_range(shapes: list[LayerShape], layers: range, ratio: float) -> int:
    """Parameters LLM-Pruner's rule removes at per-group ratio r in `layers`."""
    return sum((s.kv_groups - int(s.kv_groups * (1 - ratio))) * s.group_params
               + (s.channels - int(s.channels * (1 - ratio))) * s.channel_params for i, s in enumerate(shapes)
               if i in layers)


def ratio_for_target(shapes: list[LayerShape], layers: range, target_params: float, params_before: int) -> float:
    """The per-group ratio whose removal is closest to `target_params` x all parameters of the model."""
    goal = target_params * params_before
    candidates = [r / 1000 for r in range(1000)]
    return min(candidates, key=lambda r: (abs(removed_in_range(shapes, layers, r) - goal), r))


def layer_range(scores, budget: Budget, evidence=None, layer_start: int | None = None, layer_end: int | None = None,
                target_params: float | None = None) -> Kept:
    layers = pruned_layer_range(len(budget.shapes), {"layer_start": layer_start, "layer_end": layer_end})
    ratio = budget.ratio
    if target_params is not None:
        if not 0 <= target_params < 1:
            raise ValueError(f"target_params must be a fraction in [0, 1) of all parameters, got {target_params}")
        ratio = ratio_for_target(budget.shapes, layers, target_params, budget.params_before)
    kept = _all_kept(budget.shapes)
    for index in layers:
        groups, channels = scores[index].groups, scores[index].channels
        kept.groups[index] = keep_highest(groups, int(groups.numel() * (1 - ratio)))
        kept.channels[index] = keep_highest(channels, int(channels.numel() * (1 - ratio)))
    kept.extras = {"per_group_ratio": ratio, "layer_start": layers.start, "layer_end": layers.stop}
    return kept


# CFSP: block importance -> sigmoid keep ratios of the FFN channels.

def cfsp(scores, budget: Budget, evidence, a: float = 1.0, block_metric: str = "angular",
         importance_tokens: int | None = None) -> Kept:
    """Each block keeps its top cfsp_kept_count(m, keep_l, round_to) channels; attention is untouched."""
    importance = evidence.block_importance
    if importance_tokens:  # the code's 1e4 constant is tied to its 131,072 tokens: rescale the sum
        importance = importance / evidence.tokens * importance_tokens
    keep_ratios = cfsp_keep_ratios(importance, budget.ratio, a)
    kept = _all_kept(budget.shapes)
    kept.channels = [keep_highest(s.channels, cfsp_kept_count(s.channels.numel(), float(keep), budget.round_to))
                     for s, keep in zip(scores, keep_ratios, strict=True)]
    kept.extras = {"block_importance": importance.tolist(), "keep_ratios": keep_ratios.tolist(),
                   "calibration_tokens": evidence.tokens}
    return kept


# SAAP-style: which layers to prune, by importance ranking and fluctuation over calibration batches.

def fluctuation(batch_means: torch.Tensor) -> torch.Tensor:
    """Importance fluctuation indicator per layer: coefficient of variation of M_l over calibration batches
    (batch_means: [batches, layers]); 0 with a single batch."""
    if batch_means.shape[0] < 2:
        return torch.zeros(batch_means.shape[1], dtype=torch.float64)
    mean = batch_means.mean(0)
    return batch_means.std(0) / mean.clamp_min(1e-300)


def layer_importance(group_fused: list[torch.Tensor], channel_fused: list[torch.Tensor]) -> torch.Tensor:
    """M_l: mean fused score of the layer's groups and of its channels, each type over its mean across layers."""
    groups = torch.tensor([g.mean().item() if g.numel() else 0.0 for g in group_fused], dtype=torch.float64)
    channels = torch.tensor([c.mean().item() if c.numel() else 0.0 for c in channel_fused], dtype=torch.float64)
    return groups / groups.mean().clamp_min(1e-300) + channels / channels.mean().clamp_min(1e-300)


def choose_layers(importance: torch.Tensor, fluctuating: torch.Tensor, excluded: int, layer_params: list[int],
                  target: float, max_layer_ratio: float) -> list[int]:
    """The fewest least-important candidate layers (the `excluded` most fluctuating are not candidates) that
    can give `target` parameters with a per-layer fraction of at most `max_layer_ratio`; all candidates if
    even they cannot."""
    order_f = torch.sort(fluctuating, descending=True, stable=True).indices.tolist()
    candidates = sorted(set(range(len(importance))) - set(order_f[:excluded]), key=lambda i: (importance[i].item(), i))
    chosen: list[int] = []
    for layer in candidates:
        chosen.append(layer)
        if sum(layer_params[i] for i in chosen) * max_layer_ratio >= target:
            break
    return sorted(chosen)


def allocate_removals(group_scores: list[torch.Tensor], channel_scores: list[torch.Tensor], chosen: list[int],
                      shapes: list[LayerShape], target: float) -> tuple[list[list[int]], list[list[int]]]:
    """Kept units: in the chosen layers, the same fraction of KV groups, rounded down, then MLP channels spread
    evenly (extra ones to the least important layers first) so the removed parameters are within one channel
    of `target`."""
    kept_groups = [list(range(s.kv_groups)) for s in shapes]
    kept_channels = [list(range(s.channels)) for s in shapes]
    if not chosen or target <= 0:
        return kept_groups, kept_channels
    chosen_params = sum(shapes[i].params for i in chosen)
    fraction = min(target / chosen_params, 1.0)
    removed = 0
    for i in chosen:
        drop = math.floor(fraction * shapes[i].kv_groups)
        kept_groups[i] = keep_highest(group_scores[i], shapes[i].kv_groups - drop)
        removed += drop * shapes[i].group_params
    channel_params = shapes[chosen[0]].channel_params
    to_remove = min(max(round((target - removed) / channel_params), 0), sum(shapes[i].channels - 1 for i in chosen))
    base, extra = divmod(to_remove, len(chosen))
    counts = {i: base + (rank < extra) for rank, i in enumerate(chosen)}
    overflow = sum(max(c - (shapes[i].channels - 1), 0) for i, c in counts.items())
    counts = {i: min(c, shapes[i].channels - 1) for i, c in counts.items()}
    for i in chosen:  # channels a full layer could not take go to the others
        room = shapes[i].channels - 1 - counts[i]
        take = min(room, overflow)
        counts[i] += take
        overflow -= take
    for i in chosen:
        kept_channels[i] = keep_highest(channel_scores[i], shapes[i].channels - counts[i])
    return kept_groups, kept_channels


def saap(scores, budget: Budget, evidence, excluded: int | None = None, max_layer_ratio: float | None = None,
         layer_fusion: str = "closed") -> Kept:
    """Layers ranked by M_l (Taylor importances fused per module type across layers: fused per layer, every
    layer's mean would be the same constant and rank nothing); the `excluded` most fluctuating layers are
    never pruned; the fewest least important others take LLM-Pruner's parameter count at the same ratio."""
    shapes, ratio = budget.shapes, budget.ratio
    num_layers = len(shapes)
    start, end = default_layer_range(num_layers)
    excluded = num_layers - (end - start) if excluded is None else excluded
    max_layer_ratio = min(1.5 * ratio, 0.9) if max_layer_ratio is None else max_layer_ratio
    target = removed_in_range(shapes, range(start, end), ratio)
    mean = mean_batch_taylor(evidence)
    importance = layer_importance(*fuse(mean["vectorize"], mean["param_first"], "type", layer_fusion))
    batch_importance = torch.stack([layer_importance(*fuse(b["vectorize"], b["param_first"], "type", "closed"))
                                    for b in evidence.batch_taylor])
    fluctuating = fluctuation(batch_importance)
    chosen = choose_layers(importance, fluctuating, excluded, [s.params for s in shapes], target, max_layer_ratio) \
        if ratio > 0 else []
    groups, channels = allocate_removals([s.groups for s in scores], [s.channels for s in scores], chosen, shapes,
                                         target)
    return Kept(groups, channels, {"layer_importance": importance.tolist(), "fluctuation": fluctuating.tolist(),
                                   "chosen_layers": chosen, "target_params_removed": target,
                                   "excluded": excluded, "max_layer_ratio": max_layer_ratio})


def counts(scores, budget: Budget, evidence=None, groups: list[int] | None = None,
           channels: list[int] | None = None, inner: list[int] | None = None) -> Kept:
    """Per-layer kept counts given explicitly (an allocation search's result, `search.search_allocation`): layer
    i keeps its groups[i] highest-scored KV groups and channels[i] highest-scored MLP channels (None: all of
    that kind), and, with units inside KV groups (value channels, query heads), inner[i] of them in every group
    (None: the unit's uniform rule at the ratio). The ratio is read for nothing else."""
    shapes = budget.shapes
    wanted = {"groups": (groups, [s.kv_groups for s in shapes]), "channels": (channels, [s.channels for s in shapes])}
    for kind, (given, dense) in wanted.items():
        if given is not None and (len(given) != len(shapes) or any(not 0 <= k <= n for k, n in zip(given, dense, strict=True))):
            raise ValueError(f"counts: {kind} must list one kept count per layer ({len(shapes)}), each between 0 "
                             f"and the layer's {kind} ({dense[:4]}...), got {given}")
    kept_groups = [keep_highest(s.groups, groups[i] if groups is not None else s.groups.numel())
                   for i, s in enumerate(scores)]
    kept_channels = [keep_highest(s.channels, channels[i] if channels is not None else s.channels.numel())
                     for i, s in enumerate(scores)]
    if inner is not None and len(inner) != len(shapes):
        raise ValueError(f"counts: inner must list one count per layer ({len(shapes)}), got {inner}")
    return Kept(kept_groups, kept_channels, inner=list(inner) if inner is not None else None)


ALLOCATIONS: dict[str, Allocation] = {rule.name: rule for rule in (
    Allocation("uniform", uniform, summary="floor(r x units) lowest units of each kind removed in every layer",
               layerwise=True),
    Allocation("flap", flap, option_help={"structure": " | ".join(FLAP_STRUCTURES),
                            "remove_groups": "KV groups to remove in all (UL-MM, AL-MM); default round(r x groups)"},
               summary="FLAP's structure search: per-layer z-scores, one global threshold weighted by parameters"),
    Allocation("global", global_threshold,
               summary="per-layer z-scores, one global threshold per kind of unit keeping 1 - r of them"),
    Allocation("layer_range", layer_range, option_help={"layer_start": "first pruned layer (default: 4/32 of the depth)",
                            "layer_end": "end of the pruned range, exclusive (default: 30/32 of the depth)",
                            "target_params": "a whole-model parameter fraction instead of the per-group ratio"},
               summary="LLM-Pruner: int(n (1 - r)) units kept in every layer of a range",
               layers=pruned_layer_range),
    Allocation("cfsp", cfsp, frozenset({"block_importance"}),
               {"a": "sigmoid sharpness of the block allocation (code default 1)",
                "block_metric": "angular | cosine | mse | mae (block input vs output)",
                "importance_tokens": "rescale block importance sums to this many tokens (the code's 1e4 constant "
                                     "assumes 131,072); None: the raw sum, as the code"},
               summary="CFSP: sigmoid per-block FFN keep ratios from angular block importance (FFN only)"),
    Allocation("saap", saap, frozenset({"batch_taylor"}),
               {"excluded": "most fluctuating layers never pruned (default: as many as LLM-Pruner's range leaves out)",
                "max_layer_ratio": "largest fraction of a chosen layer's weights removed (default 1.5 r, at most 0.9)",
                "layer_fusion": "closed | learned: the fusion that ranks layers"},
               summary="SAAP-style: least important, least fluctuating layers, at LLM-Pruner's size"),
    Allocation("counts", counts, option_help={"groups": "KV groups kept per layer (a list; None: all)",
                            "channels": "MLP channels kept per layer (a list; None: all)",
                            "inner": "value channels or query heads kept in every KV group, per layer (a list; "
                                     "None: the unit's uniform rule)"},
               summary="per-layer kept counts given explicitly (an allocation search's result)", layerwise=False),
)}
