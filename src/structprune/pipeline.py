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

import math
from contextlib import nullcontext
from functools import partial
from typing import TYPE_CHECKING

import torch

from .allocate import ALLOCATIONS, Budget, keep_highest, round_kept
from .apply import cut_layer
from .architectures import count_parameters, layer_shapes
from .composition import COMPOSED, DATA_EVIDENCE, GRADIENT_EVIDENCE, Composition
from .evidence import Evidence, batch_taylor, dense_pass
from .plan import Plan
from .progress import progress
from .scores import SCORES, LayerScores, group_width, output_linears
from .stats import ChannelStats, collect_statistics, lm_loss_gradients
from .surgery import finalize_pruned
from .targets import removed_params, solve_ratio, top_up_channels
from .units import ATTENTION_UNITS

if TYPE_CHECKING:
    from .streaming import LayerStream


# --- plans --------------------------------------------------------------------------------------------------

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


# --- the pipeline ----------------------------------------------------------------------------------------------


def run(model, ratio: float | None, calibration: torch.Tensor | None, composition: Composition,
        method: str = COMPOSED, options: dict | None = None, target_params: float | None = None,
        stream: LayerStream | None = None) -> Plan:
    """Prune `model` in place with `composition` at `ratio`, or at the ratio of the method's own rule whose cut
    removes the fraction `target_params` of the whole model's parameters; the plan it applied (see the module
    docstring). With `stream`, `model` is a skeleton whose decoder layers the stream reads one at a time, and
    each cut layer is written to the stream's output checkpoint (`streaming`: one pass for sequential
    methods, a scoring pass and a cutting pass for one-shot ones)."""
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
    unit = ATTENTION_UNITS[composition.attention_unit]
    if unit.inside_groups:  # per layer, per KV group, the units kept (None: a layer not cut)
        setattr(plan, unit.plan_field, [None] * len(shapes))
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

    def cut(index: int, layer_scores, kept_groups, kept_channels, inner_count: int | None = None) -> None:
        if layer_scores is None:  # a layer outside the allocation's range stays whole
            return
        kept_channels = round_kept(kept_channels, layer_scores.channels, composition.round_to)
        if extra_channels[index]:  # the top-up drops the lowest-scored kept channels
            among_kept = torch.full((layer_scores.channels.numel(),), -math.inf, dtype=torch.float64)
            among_kept[kept_channels] = layer_scores.channels.double()[kept_channels]
            kept_channels = keep_highest(among_kept, len(kept_channels) - extra_channels[index] * composition.round_to)
        cut_layer(model, plan, composition, index, kept_groups, kept_channels, evidence.stats.get(index),
                  layer_scores.columns, inner_count)

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
            cut(index, layer_scores, kept.groups[0], kept.channels[0], kept.inner[0] if kept.inner else None)

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
                cut(index, s, kept.groups[index], kept.channels[index], kept.inner[index] if kept.inner else None)
    finalize_pruned(model)
    return plan


