"""Compositions of parts, and the one pruning pipeline that runs them.

Every method is a `Composition`: a score (`scores.SCORES`), an allocation (`allocate.ALLOCATIONS`) and a
compensation (`compensate.COMPENSATIONS`), each with its options, plus how the pass runs:

    evidence  <- calibration passes: gradients (Taylor scores) and per-batch importances first, on the
                 dense model; then the layer-by-layer statistics pass (o_proj / down_proj inputs, Gram
                 matrices, block distances), one-shot on the dense model or sequential
    scores    <- score(model, layer, evidence) for every layer
    kept      <- allocation(scores, budget, evidence), then round_to on every layer's channel count
    cut       <- per layer: compensation of o_proj / down_proj on the kept columns, then surgery

Sequential (Wanda-sp, FASP): each layer is scored, allocated, compensated and cut as the statistics pass
reaches it, so the next layer calibrates on the pruned outputs; it needs a layer-wise allocation.
A plan records the parts; a compensation that rewrites kept weights (least squares) is re-run from the
plan and the calibration tokens by `replay`, so every plan rebuilds its model.

    structprune.prune(model, structprune.compose(score="wifv", allocation="cfsp",
                                                 compensation="least_squares"), 0.3, calibration=ids)
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import torch

from .allocate import ALLOCATIONS, Budget, Plan, keep_highest, round_kept
from .architectures import (
    adapter_for,
    attention_of,
    count_parameters,
    decoder_layers,
    head_dim,
    layer_shapes,
    queries_per_group,
    value_head_dim,
)
from .compensate import COMPENSATIONS, Compensation
from .options import check_option_values
from .parts import EVIDENCE
from .progress import progress
from .scores import (
    SCORE_ALIASES,
    SCORES,
    LayerScores,
    column_scores,
    down_proj,
    group_scores,
    group_width,
    o_proj,
    output_linears,
)
from .stats import (
    BLOCK_METRICS,
    ChannelStats,
    block_distance,
    collect_statistics,
    lm_loss_gradients,
    statistics_key,
)

COMPOSED = "composed"  # the method name of plans and records of a composition of parts (not a paper method)
ATTENTION_UNITS = ("kv_group", "value_channel", "query_head")
# Scores that give o_proj column scores, which value-channel and query-head units regroup.
DATA_EVIDENCE = EVIDENCE  # every kind of evidence is measured on calibration data
GRADIENT_EVIDENCE = frozenset({"gradients", "fisher", "batch_taylor"})

if TYPE_CHECKING:
    from .streaming import LayerStream


@dataclass(frozen=True)
class Composition:
    """A pruning method as parts. Plain data: `describe()` is what plans and records store."""

    score: str = "wanda"
    allocation: str = "uniform"
    compensation: str = "none"
    score_options: dict = field(default_factory=dict)
    allocation_options: dict = field(default_factory=dict)
    compensation_options: dict = field(default_factory=dict)
    attention: bool = True  # False: FFN channels only, every KV group stays
    attention_unit: str = "kv_group"  # "value_channel": FASP's value channels inside every KV group;
    # "query_head": query heads inside every KV group (the same number from each group of a layer)
    sequential: bool = False  # each layer calibrates on the already pruned layers before it
    round_to: int = 1  # kept MLP channel counts (and value widths) a multiple of k
    batch_size: int = 8  # calibration batch of the statistics pass
    gradient_batches: int = 5  # calibration mini-batches of per-batch Taylor importances (SAAP-style)

    def needs(self) -> frozenset[str]:
        return (SCORES[self.score].needs_for(self.score_options)
                | ALLOCATIONS[self.allocation].needs_for(self.allocation_options)
                | COMPENSATIONS[self.compensation].needs_for(self.compensation_options))

    def needs_data(self) -> bool:
        return bool(self.needs() & DATA_EVIDENCE)

    def describe(self) -> dict:
        """Every part with every option, defaults included: what plans and records name."""
        return {"score": {"name": self.score, **SCORES[self.score].defaults, **self.score_options},
                "allocation": {"name": self.allocation, **ALLOCATIONS[self.allocation].defaults,
                               **self.allocation_options},
                "compensation": {"name": self.compensation, **COMPENSATIONS[self.compensation].defaults,
                                 **self.compensation_options},
                "attention": self.attention, "attention_unit": self.attention_unit, "sequential": self.sequential,
                "round_to": self.round_to, "batch_size": self.batch_size,
                "gradient_batches": self.gradient_batches}

    @property
    def label(self) -> str:
        parts = f"{self.score} × {self.allocation} × {self.compensation}"
        marks = [m for m, on in (("FFN", not self.attention), ("sequential", self.sequential),
                                 ("value channels", self.attention_unit == "value_channel"),
                                 ("query heads", self.attention_unit == "query_head")) if on]
        return f"{parts} ({', '.join(marks)})" if marks else parts

    def check(self) -> Composition:
        """Fail at once, listing the valid choices, on an unknown part, option or impossible combination."""
        for kind, name, registry in (("score", self.score, SCORES), ("allocation", self.allocation, ALLOCATIONS),
                                     ("compensation", self.compensation, COMPENSATIONS)):
            if name not in registry:
                raise ValueError(f"unknown {kind} {name!r}: choose one of {', '.join(registry)}")
        for kind, options, part in (("score", self.score_options, SCORES[self.score]),
                                    ("allocation", self.allocation_options, ALLOCATIONS[self.allocation]),
                                    ("compensation", self.compensation_options, COMPENSATIONS[self.compensation])):
            unknown = sorted(set(options) - set(part.defaults))
            if unknown:
                valid = ", ".join(f"{k} (default {v!r})" for k, v in part.defaults.items()) or "none"
                raise ValueError(f"unknown option(s) {', '.join(unknown)} for {kind} {part.name!r}; valid: {valid}")
        for kind, options, part in (("score", self.score_options, SCORES[self.score]),
                                    ("allocation", self.allocation_options, ALLOCATIONS[self.allocation]),
                                    ("compensation", self.compensation_options, COMPENSATIONS[self.compensation])):
            check_option_values(part.fn, options, f"{kind} {part.name!r}")
        check_option_values(Composition, {k: getattr(self, k) for k in COMPOSITION_FIELDS}, "the composition")
        if self.attention_unit not in ATTENTION_UNITS:
            raise ValueError(f"unknown attention unit {self.attention_unit!r}: choose one of {', '.join(ATTENTION_UNITS)}")
        if self.sequential and not ALLOCATIONS[self.allocation].layerwise:
            layerwise = [a.name for a in ALLOCATIONS.values() if a.layerwise]
            raise ValueError(f"allocation {self.allocation!r} needs every layer's scores before any cut, so it cannot "
                             f"run sequentially: use sequential=False, or a layer-wise allocation "
                             f"({', '.join(layerwise)})")
        if self.sequential and self.needs() & GRADIENT_EVIDENCE:
            raise ValueError(f"score {self.score!r} / allocation {self.allocation!r} need LM-loss gradients, which are "
                             "taken once on the dense model: use sequential=False")
        if self.attention_unit != "kv_group" and self.attention and not SCORES[self.score].gives_columns:
            raise ValueError(f"{self.attention_unit.replace('_', '-')} units regroup o_proj column scores; score "
                             f"{self.score!r} has none: "
                             f"choose one of {', '.join(column_scores())}, or attention_unit='kv_group'")
        block_metric = self.allocation_options.get("block_metric", "angular")
        if block_metric not in BLOCK_METRICS:
            raise ValueError(f"unknown block_metric {block_metric!r}: choose one of {', '.join(BLOCK_METRICS)}")
        return self


COMPOSITION_FIELDS = ("attention", "attention_unit", "sequential", "round_to", "batch_size", "gradient_batches")
# What the pass options mean, written once (methods and `structprune methods` read it).
PASS_OPTION_HELP = {
    "attention": "also prune KV groups (False: FFN channels only, CFSP's baseline)",
    "attention_unit": " | ".join(ATTENTION_UNITS) + ": the attention unit inside every layer",
    "sequential": "later layers calibrate on the pruned layers' outputs (False: one-shot)",
    "round_to": "keep MLP channel counts a multiple of k",
    "batch_size": "calibration batch",
    "gradient_batches": "calibration mini-batches of per-batch Taylor importances",
}


def compose(score: str = "wanda", allocation: str = "uniform", compensation: str = "none", **options) -> Composition:
    """A composition of parts by name; each option goes to the part that declares it (`structprune methods`
    lists them), or to the pass (attention, attention_unit, sequential, round_to, batch_size, gradient_batches).
    Unknown parts and options, and combinations that cannot run, fail at once with the valid choices."""
    score = SCORE_ALIASES.get(score, score)
    parts = {"score": SCORES.get(score), "allocation": ALLOCATIONS.get(allocation),
             "compensation": COMPENSATIONS.get(compensation)}
    routed: dict[str, dict] = {kind: {} for kind in parts}
    passing = {}
    for key, value in options.items():
        owners = [kind for kind, part in parts.items() if part is not None and key in part.defaults]
        if key in COMPOSITION_FIELDS:
            passing[key] = value
        elif len(owners) == 1:
            routed[owners[0]][key] = value
        elif owners:
            raise ValueError(f"option {key!r} belongs to several parts ({', '.join(owners)}): pass it in "
                             f"{owners[0]}_options")
        else:
            valid = sorted({k for part in parts.values() if part is not None for k in part.defaults}
                           | set(COMPOSITION_FIELDS))
            raise ValueError(f"unknown option {key!r} for score {score!r}, allocation {allocation!r}, compensation "
                             f"{compensation!r}; valid options: {', '.join(valid)}")
    return Composition(score=score, allocation=allocation, compensation=compensation,
                       score_options=routed["score"], allocation_options=routed["allocation"],
                       compensation_options=routed["compensation"], **passing).check()


def composition_from(description: dict) -> Composition:
    """The composition that `Composition.describe()` wrote (records and plans store it): the inverse of describe."""
    parts = {kind: dict(description[kind]) for kind in ("score", "allocation", "compensation")}
    return Composition(score=parts["score"].pop("name"), allocation=parts["allocation"].pop("name"),
                       compensation=parts["compensation"].pop("name"), score_options=parts["score"],
                       allocation_options=parts["allocation"], compensation_options=parts["compensation"],
                       **{k: description[k] for k in COMPOSITION_FIELDS if k in description}).check()

# --- evidence --------------------------------------------------------------------------------------------------

@dataclass
class Evidence:
    """What the calibration passes measured, for the scores and allocations to read."""

    stats: dict[int, dict[str, ChannelStats]] = field(default_factory=dict)  # per layer: o_proj / down_proj inputs
    gradients: dict | None = None  # {linear: dL/dW}
    fisher: dict | None = None
    batch_taylor: list | None = None  # per batch: {criterion: (group scores per layer, channel scores per layer)}
    block_importance: torch.Tensor | None = None  # per layer: sum over tokens of the block distance
    tokens: int = 0  # calibration tokens
    shapes: list | None = None
    cache: dict = field(default_factory=dict)  # whole-model quantities a score computes once


def batch_taylor(model, calibration: torch.Tensor, batches: int) -> list[dict]:
    """Vector-wise and element-wise Taylor importances of every layer, per calibration mini-batch."""
    everything = range(len(decoder_layers(model)))
    per_batch = []
    for chunk in calibration.chunk(min(batches, calibration.shape[0])):
        grads, _ = lm_loss_gradients(model, chunk, everything, second_order=False)
        per_batch.append({kind: tuple(zip(*[group_scores(model, i, grads, None, kind) for i in everything], strict=True))
                          for kind in ("vectorize", "param_first")})
    return per_batch


# The dense pass with block distances of a CPU model (plain statistics are cached by collect_statistics):
# a sweep over ratios and variants pays for it once.
_BLOCK_PASSES: dict[str, tuple[list, torch.Tensor]] = {}


def dense_pass(model, calibration: torch.Tensor, gram: bool, batch_size: int, block_metric: str | None = None,
               on_layer=None, resident=None) -> tuple[list[dict[str, ChannelStats]], torch.Tensor | None]:
    """One pass of the dense model: o_proj / down_proj input statistics of every layer, and, with a block
    metric, each block's summed input-output distance (on_layer, resident: see `collect_statistics`)."""
    targets = output_linears(model)
    streamed = {"on_layer": on_layer, "resident": resident}
    if block_metric is None:
        return collect_statistics(model, calibration, targets, gram=gram, batch_size=batch_size, **streamed), None
    key = statistics_key(model, calibration, (*targets, f"block:{block_metric}"), gram, batch_size)
    if key in _BLOCK_PASSES:
        stats, importance = _BLOCK_PASSES[key]
        return copy.deepcopy(stats), importance.clone()
    importance = torch.zeros(len(decoder_layers(model)), dtype=torch.float64)

    def add_block_distance(index: int, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        importance[index] = sum(block_distance(x, y, block_metric).sum().item()
                                for x, y in zip(inputs, outputs, strict=True))

    stats = collect_statistics(model, calibration, targets, on_block=add_block_distance, gram=gram,
                               batch_size=batch_size, **streamed)
    if key is not None:
        _BLOCK_PASSES.clear()  # one entry: the pass of the model being swept
        _BLOCK_PASSES[key] = (copy.deepcopy(stats), importance.clone())
    return stats, importance


# --- plans and cuts --------------------------------------------------------------------------------------------

def empty_plan(model, method: str, ratio: float, options: dict) -> Plan:
    """A plan that keeps everything, with the model's current widths; the pipeline fills in what it cuts."""
    shapes = layer_shapes(model)
    return Plan(
        method=method, ratio=ratio,
        kept_groups=[list(range(s.kv_groups)) for s in shapes],
        kept_channels=[list(range(s.channels)) for s in shapes],
        dense_groups=[s.kv_groups for s in shapes], dense_channels=[s.channels for s in shapes],
        group_params=[s.group_params for s in shapes], channel_params=[s.channel_params for s in shapes],
        params_before=count_parameters(model), options=dict(options),
    )


def _unit_columns(kept: list[int], width: int) -> torch.Tensor:
    """Input columns of the kept units, each `width` consecutive columns wide."""
    if not kept:
        return torch.zeros(0, dtype=torch.long)
    return (torch.tensor(kept, dtype=torch.long)[:, None] * width + torch.arange(width)).flatten()


def _set_weight(linear: torch.nn.Linear, weight: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight.copy_(weight.to(device=linear.weight.device, dtype=linear.weight.dtype))


def kept_value_channels(column_scores: torch.Tensor, groups: int, n_rep: int, dv: int, ratio: float,
                        round_to: int) -> list[list[int]]:
    """FASP's attention units: in every KV group the dv - floor(r dv) value channels whose score, summed over
    the group's query heads, is highest (one value width for every head; rounded to a multiple of round_to)."""
    unit_scores = column_scores.view(groups, n_rep, dv).sum(1)
    return [keep_highest(unit_scores[g], value_width(dv, ratio, round_to)) for g in range(groups)]


def query_heads_kept(n_rep: int, ratio: float) -> int:
    """Query heads every KV group keeps under query-head units: n_rep - floor(r n_rep), at least one."""
    return max(n_rep - math.floor(ratio * n_rep), 1)


def kept_query_heads(column_scores: torch.Tensor, groups: int, n_rep: int, dv: int, ratio: float) -> list[list[int]]:
    """Query-head units: in every KV group the query_heads_kept(n_rep, r) heads whose o_proj columns score highest
    in sum (the same count in every group, so the layer keeps a whole queries-per-group ratio)."""
    head_scores = column_scores.view(groups, n_rep, dv).sum(-1)
    return [keep_highest(head_scores[g], query_heads_kept(n_rep, ratio)) for g in range(groups)]


def query_head_params(hidden: int, head_dim: int, value_dim: int, q_bias: bool) -> int:
    """Parameters of one query head: its q_proj rows (and bias entries) and its o_proj columns."""
    return hidden * head_dim + head_dim * q_bias + hidden * value_dim


def cut_layer(model, plan: Plan, composition: Composition, index: int, kept_groups: list[int],
              kept_channels: list[int], stats: dict[str, ChannelStats] | None, column_scores=None) -> None:
    """Compensate and cut one decoder layer in place, recording the cut in `plan`. kept_channels are final
    (rounded); with value-channel units, kept_groups are ignored and value channels are chosen from
    `column_scores` (or taken from the plan, when it is replayed)."""
    from .surgery import head_columns, prune_layer, prune_query_heads, prune_value_channels, value_columns

    adapter, config = adapter_for(model), model.config
    rule = COMPENSATIONS[composition.compensation]
    o_name, down_name = output_linears(model)
    o, down = o_proj(model, index), down_proj(model, index)
    value_units = composition.attention_unit == "value_channel"
    if composition.attention_unit != "kv_group" or not composition.attention:
        kept_groups = list(range(plan.dense_groups[index]))
    kept_values = kept_heads = None
    if composition.attention_unit != "kv_group" and composition.attention:  # units inside every KV group
        attn = attention_of(decoder_layers(model)[index], adapter)
        d, n_rep = head_dim(config), queries_per_group(config)
        groups = attn.get_submodule(adapter.k).out_features // d
        dv = value_head_dim(attn, adapter, groups, config)
    if composition.attention_unit == "query_head" and composition.attention:
        kept_heads = plan.kept_heads[index] if column_scores is None else kept_query_heads(
            column_scores, groups, n_rep, dv, plan.ratio)
        o_columns = head_columns(kept_heads, n_rep, dv)
        q_bias = attn.get_submodule(adapter.q).bias is not None
        plan.value_params_removed += groups * (n_rep - len(kept_heads[0])) * query_head_params(config.hidden_size, d,
                                                                                                 dv, q_bias)
    elif value_units and composition.attention:
        kept_values = plan.kept_values[index] if column_scores is None else kept_value_channels(
            column_scores, groups, n_rep, dv, plan.ratio, composition.round_to)
        o_columns = value_columns(kept_values, n_rep, dv)
        width = len(kept_values[0]) if kept_values else dv
        unit_params = config.hidden_size * (1 + n_rep) + (attn.get_submodule(adapter.v).bias is not None)
        plan.value_params_removed += groups * (dv - width) * unit_params
    else:
        o_columns = _unit_columns(kept_groups, o.in_features // max(plan.dense_groups[index], 1))
    no_stats = ChannelStats(0)
    o_comp = rule.fn(o.weight, (stats or {}).get(o_name, no_stats), o_columns, **composition.compensation_options) \
        if o.in_features else Compensation()
    down_comp = rule.fn(down.weight, (stats or {}).get(down_name, no_stats), torch.tensor(kept_channels, dtype=torch.long),
                        **composition.compensation_options) if down.in_features else Compensation()
    hidden = config.hidden_size
    plan.new_bias_params += hidden * ((o_comp.bias is not None and o.bias is None)
                                      + (down_comp.bias is not None and down.bias is None))
    plan.kept_groups[index], plan.kept_channels[index] = kept_groups, kept_channels
    plan.o_bias[index], plan.down_bias[index] = o_comp.bias, down_comp.bias
    if kept_values is not None or kept_heads is not None:
        if kept_values is not None:
            plan.kept_values[index] = kept_values
            prune_value_channels(model, index, kept_values)
        else:
            plan.kept_heads[index] = kept_heads
            prune_query_heads(model, index, kept_heads)
        if o_comp.weight is not None:
            _set_weight(o_proj(model, index), o_comp.weight)
    prune_layer(model, index, kept_groups, kept_channels, o_comp.bias, down_comp.bias)
    if o_comp.weight is not None and kept_values is None and kept_heads is None:
        _set_weight(o_proj(model, index), o_comp.weight)
    if down_comp.weight is not None:
        _set_weight(down_proj(model, index), down_comp.weight)


# --- the pipeline ----------------------------------------------------------------------------------------------

def value_width(dv: int, ratio: float, round_to: int) -> int:
    """Value channels every KV group keeps under value-channel units: dv - floor(r dv), rounded."""
    keep = dv - math.floor(ratio * dv)
    if round_to > 1 and keep:  # hardware-friendly value width, as for the MLP channels
        keep = min(max(round(keep / round_to), 1) * round_to, dv)
    return keep


def removed_params(model, kept, layer_scores: list, composition: Composition, ratio: float, shapes: list) -> int:
    """Parameters of the whole model that cutting `kept` (an allocation's result at `ratio`) removes, less the
    compensation biases it adds: what the cut will do, computed without cutting (`solve_ratio` searches it);
    `shapes` are the dense layers' (`layer_shapes`)."""
    adapter, config = adapter_for(model), model.config
    adds_bias = COMPENSATIONS[composition.compensation].adds_bias
    removed = 0
    for index, (shape, scores) in enumerate(zip(shapes, layer_scores, strict=True)):
        if scores is None:
            continue
        groups = (kept.groups[index] if composition.attention and composition.attention_unit == "kv_group"
                  else range(shape.kv_groups))
        channels = round_kept(kept.channels[index], scores.channels, composition.round_to)
        removed += (shape.kv_groups - len(groups)) * shape.group_params
        removed += (shape.channels - len(channels)) * shape.channel_params
        attention_cut = len(groups) < shape.kv_groups
        if composition.attention and composition.attention_unit == "value_channel" and shape.kv_groups:
            attn = attention_of(decoder_layers(model)[index], adapter)
            dv = value_head_dim(attn, adapter, shape.kv_groups, config)
            width = value_width(dv, ratio, composition.round_to)
            unit = config.hidden_size * (1 + queries_per_group(config)) + (attn.get_submodule(adapter.v).bias is not None)
            removed += shape.kv_groups * (dv - width) * unit
            attention_cut = attention_cut or width < dv
        if composition.attention and composition.attention_unit == "query_head" and shape.kv_groups:
            attn = attention_of(decoder_layers(model)[index], adapter)
            n_rep = queries_per_group(config)
            heads = n_rep - query_heads_kept(n_rep, ratio)
            removed += shape.kv_groups * heads * query_head_params(
                config.hidden_size, head_dim(config), value_head_dim(attn, adapter, shape.kv_groups, config),
                attn.get_submodule(adapter.q).bias is not None)
            attention_cut = attention_cut or heads > 0
        if adds_bias:
            removed -= config.hidden_size * ((attention_cut and o_proj(model, index).bias is None)
                                             + (len(channels) < shape.channels and down_proj(model, index).bias is None))
    return removed


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


def run(model, ratio: float | None, calibration: torch.Tensor | None, composition: Composition,
        method: str = COMPOSED, options: dict | None = None, target_params: float | None = None,
        stream: LayerStream | None = None) -> Plan:
    """Prune `model` in place with `composition` at `ratio`, or at the ratio of the method's own rule whose cut
    removes the fraction `target_params` of the whole model's parameters; the plan it applied (see the module
    docstring). With `stream`, `model` is a skeleton whose decoder layers the stream reads one at a time, and
    each cut layer is written to the stream's output checkpoint (`streaming`: one pass for sequential
    methods, a scoring pass and a cutting pass for one-shot ones)."""
    from .surgery import finalize_pruned

    composition.check()
    needs = composition.needs()
    if stream is not None and needs & GRADIENT_EVIDENCE:
        raise ValueError(f"{method}: score {composition.score!r} / allocation {composition.allocation!r} take LM-loss "
                         "gradients through the whole model at once, so they cannot stream one layer at a time: "
                         "load the model whole, with accelerate offload for a large one (--device auto), or choose "
                         "a score that reads calibration statistics (wanda, wifv, activation)")
    if needs & DATA_EVIDENCE and calibration is None:
        raise ValueError(f"{method}: score {composition.score!r}, allocation {composition.allocation!r} and "
                         f"compensation {composition.compensation!r} read calibration data: pass calibration= "
                         "(token ids, or a dataset name with a tokenizer)")
    score, allocation = SCORES[composition.score], ALLOCATIONS[composition.allocation]
    shapes = layer_shapes(model)
    plan = empty_plan(model, method, ratio or 0.0, options if options is not None else composition.describe())
    plan.parts = composition.describe()
    if composition.attention_unit == "value_channel":
        plan.kept_values = [None] * len(shapes)
    if composition.attention_unit == "query_head":
        plan.kept_heads = [None] * len(shapes)
    evidence = Evidence(tokens=calibration.numel() if calibration is not None else 0, shapes=shapes)
    # The layers the allocation may cut (LLM-Pruner's range); the others are neither scored nor cut.
    active = (allocation.layers(len(shapes), composition.allocation_options) if allocation.layers
              else range(len(shapes)))
    if needs & {"gradients", "fisher"}:
        evidence.gradients, evidence.fisher = lm_loss_gradients(model, calibration, active, "fisher" in needs)
    if "batch_taylor" in needs:
        evidence.batch_taylor = batch_taylor(model, calibration, composition.gradient_batches)
    budget = Budget(ratio=ratio or 0.0, shapes=shapes, group_width=group_width(model.config),
                    params_before=plan.params_before, round_to=composition.round_to)

    extra_channels = [0] * len(shapes)  # the top-up to a parameter target, per layer (`top_up_channels`)

    def solve_for_target(layer_scores: list):
        """Set the ratio (budget and plan) whose cut meets target_params, searching the allocation's results,
        and the channel top-up that closes the last step of the rule; the allocation's cut at that ratio."""
        def cut_at(r: float):
            trial = Budget(r, shapes, budget.group_width, budget.params_before, budget.round_to)
            return allocation.fn(layer_scores, trial, evidence, **composition.allocation_options)

        def removed_at(r: float) -> int:
            return removed_params(model, cut_at(r), layer_scores, composition, r, shapes)

        goal = target_params * plan.params_before
        budget.ratio = plan.ratio = solve_ratio(removed_at, goal)
        kept = cut_at(budget.ratio)
        kept_counts = [len(round_kept(kept.channels[i], s.channels, composition.round_to)) if s is not None else None
                       for i, s in enumerate(layer_scores)]
        shortfall = goal - removed_params(model, kept, layer_scores, composition, budget.ratio, shapes)
        extra_channels[:] = top_up_channels(shortfall, kept_counts, [s.channel_params for s in shapes],
                                            composition.round_to)
        if any(extra_channels):
            plan.extras["top_up_channels"] = list(extra_channels)
        return kept

    def scores_of(index: int):
        return score.fn(model, index, evidence, **composition.score_options)

    def cut(index: int, layer_scores, kept_groups, kept_channels) -> None:
        if layer_scores is None:  # a layer outside the allocation's range stays whole
            return
        kept_channels = round_kept(kept_channels, layer_scores.channels, composition.round_to)
        if extra_channels[index]:  # the top-up drops the lowest-scored kept channels
            among_kept = torch.full((layer_scores.channels.numel(),), -math.inf, dtype=torch.float64)
            among_kept[kept_channels] = layer_scores.channels.double()[kept_channels]
            kept_channels = keep_highest(among_kept, len(kept_channels) - extra_channels[index] * composition.round_to)
        cut_layer(model, plan, composition, index, kept_groups, kept_channels, evidence.stats.get(index),
                  layer_scores.columns)

    gram = "gram" in needs
    if composition.sequential:
        if target_params is not None:  # a layer-wise rule's counts depend on the shapes alone, not the scores
            solve_for_target([LayerScores(torch.zeros(s.kv_groups), torch.zeros(s.channels),
                                          torch.zeros(s.kv_groups * budget.group_width)) for s in shapes])

        def prune_now(index: int, stats: dict[str, ChannelStats]) -> None:
            evidence.stats = {index: stats}
            layer_scores = scores_of(index)
            layer_budget = Budget(budget.ratio, [shapes[index]], budget.group_width, budget.params_before,
                                  budget.round_to)
            kept = allocation.fn([layer_scores], layer_budget, evidence, **composition.allocation_options)
            cut(index, layer_scores, kept.groups[0], kept.channels[0])

        if stream is None:
            collect_statistics(model, calibration, output_linears(model), prune_layer=prune_now, gram=gram,
                               batch_size=composition.batch_size)
        elif calibration is None:  # a data-free layer-wise rule: read, cut and write each layer
            for index in progress(range(len(shapes)), "pruning (streamed)", unit="layer"):
                with stream.layer(index, write=True):
                    prune_now(index, {})
        else:
            collect_statistics(model, calibration, output_linears(model), prune_layer=prune_now, gram=gram,
                               batch_size=composition.batch_size, resident=partial(stream.layer, write=True))
    else:
        block_metric = (composition.allocation_options.get("block_metric", allocation.defaults.get("block_metric"))
                        if "block_importance" in needs else None)
        if stream is None:
            if needs & {"stats", "gram", "block_importance"}:
                stats, evidence.block_importance = dense_pass(model, calibration, gram, composition.batch_size,
                                                              block_metric)
                evidence.stats = dict(enumerate(stats))
            layer_scores = [scores_of(i) if i in active else None for i in range(len(shapes))]
        else:  # the scoring pass: each layer scored while its weights are read
            layer_scores = [None] * len(shapes)

            def score_resident(index: int, stats: dict[str, ChannelStats]) -> None:
                evidence.stats[index] = stats
                layer_scores[index] = scores_of(index) if index in active else None

            if needs & {"stats", "gram", "block_importance"}:
                _, evidence.block_importance = dense_pass(model, calibration, gram, composition.batch_size,
                                                          block_metric, on_layer=score_resident, resident=stream.layer)
            else:
                for index in progress(range(len(shapes)), "scoring (streamed)", unit="layer"):
                    with stream.layer(index):
                        score_resident(index, {})
        kept = (solve_for_target(layer_scores) if target_params is not None
                else allocation.fn(layer_scores, budget, evidence, **composition.allocation_options))
        plan.extras = {**kept.extras, **plan.extras}
        for index, s in progress(enumerate(layer_scores), "cutting (streamed)" if stream else "cutting",
                                 total=len(layer_scores), unit="layer"):
            with stream.layer(index, write=True) if stream is not None else nullcontext():
                cut(index, s, kept.groups[index], kept.channels[index])
    finalize_pruned(model)
    return plan


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
    from .surgery import finalize_pruned

    composition = composition_of(plan)
    replayed = copy.deepcopy(plan)
    replayed.value_params_removed, replayed.new_bias_params = 0, 0
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
