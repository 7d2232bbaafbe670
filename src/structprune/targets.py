"""Parameter targets: what a cut removes before it is made, the ratio of a rule that meets a share of the model,
and the channel top-up that closes the last step.
"""

from __future__ import annotations

from .allocate import round_kept
from .architectures import attention_geometry
from .compensate import COMPENSATIONS
from .composition import Composition
from .scores import down_proj, o_proj
from .units import ATTENTION_UNITS


def removed_params(model, kept, layer_scores: list, composition: Composition, ratio: float, shapes: list) -> int:
    """Parameters of the whole model that cutting `kept` (an allocation's result at `ratio`) removes, less the
    compensation biases it adds: what the cut will do, computed without cutting (`solve_ratio` searches it);
    `shapes` are the dense layers' (`layer_shapes`)."""
    adds_bias = COMPENSATIONS[composition.compensation].adds_bias
    unit = ATTENTION_UNITS[composition.attention_unit] if composition.attention else None
    removed = 0
    for index, (shape, scores) in enumerate(zip(shapes, layer_scores, strict=True)):
        if scores is None:
            continue
        groups = kept.groups[index] if unit is not None and not unit.inside_groups else range(shape.kv_groups)
        channels = round_kept(kept.channels[index], scores.channels, composition.round_to)
        removed += (shape.kv_groups - len(groups)) * shape.group_params
        removed += (shape.channels - len(channels)) * shape.channel_params
        attention_cut = len(groups) < shape.kv_groups
        if unit is not None and unit.inside_groups and shape.kv_groups:
            geometry = attention_geometry(model, index)
            inner = inner_count_of(kept, index, unit, geometry, ratio, composition.round_to)
            inner_removed = unit.removed(geometry, inner)
            removed += inner_removed
            attention_cut = attention_cut or inner_removed > 0
        if adds_bias:
            removed -= model.config.hidden_size * ((attention_cut and o_proj(model, index).bias is None)
                                                   + (len(channels) < shape.channels and down_proj(model, index).bias is None))
    return removed



def inner_count_of(kept, index: int, unit, geometry, ratio: float, round_to: int) -> int:
    """Units every KV group of layer `index` keeps: the allocation's count (`Kept.inner`) where it gives one, else
    the unit's uniform rule."""
    if kept is not None and kept.inner is not None and kept.inner[index] is not None:
        return kept.inner[index]
    return unit.count(geometry, ratio, round_to)



def solve_ratio(removed_at, goal: float) -> float:
    """The largest ratio of the method's own rule whose removal stays at or below `goal` parameters: bisection
    on r in [0, 0.999] for the boundary where the removal reaches the goal (every rule removes more as r grows)."""
    low, high = 0.0, 0.999
    most = removed_at(high)
    if most < goal:
        raise ValueError(f"the target asks to remove {goal:,.0f} parameters, but this method removes at most "
                         f"{most:,} (at ratio {high}): ask for a smaller target")
    for _ in range(40):
        middle = (low + high) / 2
        if removed_at(middle) > goal:
            high = middle
        else:
            low = middle
    return low



def top_up_channels(shortfall: float, kept_channels: list[int | None], channel_params: list[int],
                    multiple: int) -> list[int]:
    """How many more MLP channels each layer gives up so that the cut meets a parameter target within one unit.

    A rule's ratio moves in steps (a uniform rule moves every layer at once, by whole KV groups), so the ratio
    search alone can stop up to one step short. The rest, `shortfall` parameters, is taken as channels (in
    multiples of `multiple`, the rounding unit) spread evenly over the layers that keep channels, each layer
    at most one channel unit more than another: the rule's shape survives, and the achieved removal is within
    half a channel unit of the goal. `kept_channels[i]` is None for a layer the rule does not cut."""
    layers = [i for i, kept in enumerate(kept_channels) if kept]
    extra = [0] * len(kept_channels)
    if not layers or shortfall <= 0:
        return extra
    unit = sum(channel_params[i] for i in layers) * multiple / len(layers)
    wanted = round(shortfall / unit)
    while wanted > 0:
        spare = [i for i in layers if kept_channels[i] - (extra[i] + 1) * multiple >= multiple]
        if not spare:
            break  # every layer is down to its last unit: the rule's own steps are all that is left
        share, rest = divmod(wanted, len(spare))
        for rank, i in enumerate(spare):
            take = min(share + (rank < rest), (kept_channels[i] - multiple) // multiple - extra[i])
            extra[i] += take
            wanted -= take
    return extra
