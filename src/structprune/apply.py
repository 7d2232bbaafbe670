"""Applying cuts: one decoder layer compensated and cut (`cut_layer`), and a plan applied to a model again
(`apply_plan`; a plan whose compensation rewrites kept weights is replayed on its calibration tokens).
"""

from __future__ import annotations

import copy

import torch

from .architectures import attention_geometry, decoder_layers
from .compensate import COMPENSATIONS, Compensation
from .composition import COMPOSITION_FIELDS, Composition
from .plan import Plan
from .scores import down_proj, o_proj, output_linears
from .stats import ChannelStats, collect_statistics
from .surgery import finalize_pruned, prune_layer, unit_indices
from .units import ATTENTION_UNITS


def _set_weight(linear: torch.nn.Linear, weight: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight.copy_(weight.to(device=linear.weight.device, dtype=linear.weight.dtype))



def cut_layer(model, plan: Plan, composition: Composition, index: int, kept_groups: list[int],
              kept_channels: list[int], stats: dict[str, ChannelStats] | None, column_scores=None,
              inner_count: int | None = None) -> None:
    """Compensate and cut one decoder layer in place, recording the cut in `plan`. kept_channels are final
    (rounded). With units inside KV groups (`units.ATTENTION_UNITS`), kept_groups are ignored: every group keeps
    `inner_count` units (default: the unit's uniform rule), chosen from `column_scores` (or taken from the plan,
    when it is replayed)."""
    rule = COMPENSATIONS[composition.compensation]
    o_name, down_name = output_linears(model)
    o, down = o_proj(model, index), down_proj(model, index)
    unit = ATTENTION_UNITS[composition.attention_unit] if composition.attention else None
    if unit is None or unit.inside_groups:
        kept_groups = list(range(plan.dense_groups[index]))
    inner = None
    if unit is not None and unit.inside_groups:
        geometry = attention_geometry(model, index)
        if column_scores is None:  # replayed: the plan's choice
            inner = getattr(plan, unit.plan_field)[index]
        else:
            count = unit.count(geometry, plan.ratio, composition.round_to) if inner_count is None else inner_count
            inner = unit.choose(column_scores, geometry, count)
        o_columns = unit.columns(inner, geometry)
        plan.inner_params_removed += unit.removed(geometry, len(inner[0]) if inner else 0)
    else:
        o_columns = unit_indices(kept_groups, o.in_features // max(plan.dense_groups[index], 1))
    no_stats = ChannelStats(0)
    o_comp = rule.fn(o.weight, (stats or {}).get(o_name, no_stats), o_columns, **composition.compensation_options) \
        if o.in_features else Compensation()
    down_comp = rule.fn(down.weight, (stats or {}).get(down_name, no_stats), torch.tensor(kept_channels, dtype=torch.long),
                        **composition.compensation_options) if down.in_features else Compensation()
    hidden = model.config.hidden_size
    plan.new_bias_params += hidden * ((o_comp.bias is not None and o.bias is None)
                                      + (down_comp.bias is not None and down.bias is None))
    plan.kept_groups[index], plan.kept_channels[index] = kept_groups, kept_channels
    plan.o_bias[index], plan.down_bias[index] = o_comp.bias, down_comp.bias
    if inner is not None:  # units inside KV groups first, then the whole-group and channel cut
        getattr(plan, unit.plan_field)[index] = inner
        unit.cut(model, index, inner)
    if o_comp.weight is not None and inner is not None:
        _set_weight(o_proj(model, index), o_comp.weight)
    prune_layer(model, index, kept_groups, kept_channels, o_comp.bias, down_comp.bias)
    if o_comp.weight is not None and inner is None:
        _set_weight(o_proj(model, index), o_comp.weight)
    if down_comp.weight is not None:
        _set_weight(down_proj(model, index), down_comp.weight)



def composition_of(plan: Plan) -> Composition:
    """The composition a plan records (its compensation and pass, for replaying it); fields an older plan did
    not record take their defaults."""
    parts = plan.parts
    compensation = dict(parts.get("compensation") or {"name": "none"})
    return Composition(compensation=compensation.pop("name"), compensation_options=compensation,
                       **{k: parts[k] for k in COMPOSITION_FIELDS if k in parts})



def replay(model, plan: Plan, calibration: torch.Tensor) -> None:
    """Re-apply a plan whose compensation rewrites kept weights: the same cuts, and the same compensation
    computed again from the calibration tokens (sequential plans: through the already replayed layers)."""
    composition = composition_of(plan)
    replayed = copy.deepcopy(plan)
    replayed.inner_params_removed, replayed.new_bias_params = 0, 0
    targets, gram = output_linears(model), "gram" in composition.needs()

    def cut(index: int, stats: dict[str, ChannelStats] | None) -> None:
        cut_layer(model, replayed, composition, index, plan.kept_groups[index], plan.kept_channels[index], stats)

    if composition.sequential:
        collect_statistics(model, calibration, targets, prune_layer=cut, gram=gram, batch_size=composition.batch_size)
    else:
        for index, stats in enumerate(collect_statistics(model, calibration, targets, gram=gram,
                                                         batch_size=composition.batch_size)):
            cut(index, stats)
    finalize_pruned(model)


def apply_plan(model, plan: Plan, calibration: torch.Tensor | None = None):
    """Apply a plan to a model (in place) and return the pruned model.

    A plan whose compensation rewrites kept weights (least squares) is replayed: the same cuts, and the
    restoration computed again from `calibration`, the token ids the plan was made with."""
    if plan.restores_weights:
        if calibration is None:
            raise ValueError(f"the {plan.method} plan refits kept weights by least squares: pass calibration= (the "
                             "token ids it was pruned with) so that apply_plan can recompute them")
        replay(model, plan, calibration)
        return model
    layers = decoder_layers(model)
    if len(plan.kept_groups) != len(layers):
        raise ValueError(f"the plan has {len(plan.kept_groups)} layers, the model {len(layers)}")
    inner = [unit for unit in ATTENTION_UNITS.values() if unit.inside_groups and getattr(plan, unit.plan_field)]
    for index in range(len(layers)):
        for unit in inner:  # units inside KV groups (value channels, query heads) first, as when the plan was made
            if getattr(plan, unit.plan_field)[index] is not None:
                unit.cut(model, index, getattr(plan, unit.plan_field)[index])
        prune_layer(model, index, plan.kept_groups[index], plan.kept_channels[index],
                    plan.o_bias[index], plan.down_bias[index])
    return finalize_pruned(model)
