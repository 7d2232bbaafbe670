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
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
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
    shapes = layer_shapes(model)
    plan = empty_plan(model, method, ratio or 0.0, options if options is not None else composition.describe())
    plan.parts = composition.describe()
    unit = ATTENTION_UNITS[composition.attention_unit]
    if unit.inside_groups:  # per layer, per KV group, the units kept (None: a layer not cut)
        setattr(plan, unit.plan_field, [None] * len(shapes))
    allocation = ALLOCATIONS[composition.allocation]
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
    state = Pass(model, composition, calibration, plan, evidence, budget, shapes, active, target_params,
                 resident=stream.layer if stream is not None else None)
    (sequential_pass if composition.sequential else one_shot_pass)(state)
    finalize_pruned(model)
    return plan


@dataclass
class Pass:
    """What a pruning pass works on, in memory or streamed alike. `resident(index, write=...)` holds a decoder
    layer's weights while the pass reads or cuts it (a stream's layer); None in memory, where every layer is
    always there."""

    model: torch.nn.Module
    composition: Composition
    calibration: torch.Tensor | None
    plan: Plan
    evidence: Evidence
    budget: Budget
    shapes: list
    active: range
    target_params: float | None
    resident: Callable[..., AbstractContextManager] | None = None
    extra_channels: list[int] = field(default_factory=list)  # the top-up to a parameter target, per layer

    def holding(self, index: int, write: bool = False) -> AbstractContextManager:
        return self.resident(index, write=write) if self.resident is not None else nullcontext()

    def scores(self, index: int) -> LayerScores:
        score = SCORES[self.composition.score]
        return score.fn(self.model, index, self.evidence, **self.composition.score_options)

    def allocate(self, layer_scores: list, budget: Budget):
        return ALLOCATIONS[self.composition.allocation].fn(layer_scores, budget, self.evidence,
                                                           **self.composition.allocation_options)

    def solve_for_target(self, layer_scores: list):
        """Set the ratio (budget and plan) whose cut meets target_params, searching the allocation's results,
        and the channel top-up that closes the last step of the rule; the allocation's cut at that ratio."""
        composition, shapes, budget = self.composition, self.shapes, self.budget

        def cut_at(r: float):
            return self.allocate(layer_scores, Budget(r, shapes, budget.group_width, budget.params_before,
                                                      budget.round_to))

        def removed_at(r: float) -> int:
            return removed_params(self.model, cut_at(r), layer_scores, composition, r, shapes)

        goal = self.target_params * self.plan.params_before
        budget.ratio = self.plan.ratio = solve_ratio(removed_at, goal)
        kept = cut_at(budget.ratio)
        kept_counts = [len(round_kept(kept.channels[i], s.channels, composition.round_to)) if s is not None else None
                       for i, s in enumerate(layer_scores)]
        shortfall = goal - removed_params(self.model, kept, layer_scores, composition, budget.ratio, shapes)
        self.extra_channels = top_up_channels(shortfall, kept_counts, [s.channel_params for s in shapes],
                                              composition.round_to)
        if any(self.extra_channels):
            self.plan.extras["top_up_channels"] = list(self.extra_channels)
        return kept

    def cut(self, index: int, layer_scores, kept_groups, kept_channels, inner_count: int | None = None) -> None:
        if layer_scores is None:  # a layer outside the allocation's range stays whole
            return
        round_to = self.composition.round_to
        kept_channels = round_kept(kept_channels, layer_scores.channels, round_to)
        extra = self.extra_channels[index] if self.extra_channels else 0
        if extra:  # the top-up drops the lowest-scored kept channels
            among_kept = torch.full((layer_scores.channels.numel(),), -math.inf, dtype=torch.float64)
            among_kept[kept_channels] = layer_scores.channels.double()[kept_channels]
            kept_channels = keep_highest(among_kept, len(kept_channels) - extra * round_to)
        cut_layer(self.model, self.plan, self.composition, index, kept_groups, kept_channels,
                  self.evidence.stats.get(index), layer_scores.columns, inner_count)


def sequential_pass(state: Pass) -> None:
    """Each layer scored, allocated, compensated and cut as the statistics pass reaches it, so the next layer
    calibrates on the pruned outputs (a layer-wise allocation: one layer's scores at a time)."""
    shapes, budget = state.shapes, state.budget
    if state.target_params is not None:  # a layer-wise rule's counts depend on the shapes alone, not the scores
        state.solve_for_target([LayerScores(torch.zeros(s.kv_groups), torch.zeros(s.channels),
                                            torch.zeros(s.kv_groups * budget.group_width)) for s in shapes])

    def prune_now(index: int, stats: dict[str, ChannelStats]) -> None:
        state.evidence.stats = {index: stats}
        layer_scores = state.scores(index)
        kept = state.allocate([layer_scores], Budget(budget.ratio, [shapes[index]], budget.group_width,
                                                     budget.params_before, budget.round_to))
        state.cut(index, layer_scores, kept.groups[0], kept.channels[0], kept.inner[0] if kept.inner else None)

    if state.calibration is None:  # a data-free layer-wise rule: each layer read, cut and written in turn
        for index in progress(range(len(shapes)), "pruning", unit="layer"):
            with state.holding(index, write=True):
                prune_now(index, {})
    else:
        collect_statistics(state.model, state.calibration, output_linears(state.model), prune_layer=prune_now,
                           gram="gram" in state.composition.needs(), batch_size=state.composition.batch_size,
                           resident=partial(state.resident, write=True) if state.resident is not None else None)


def one_shot_pass(state: Pass) -> None:
    """Every layer scored on the dense model, one allocation over all of them, then every layer cut. Streamed,
    each layer is scored while the statistics pass holds its weights, and cut in a second pass."""
    composition, needs = state.composition, state.composition.needs()
    allocation = ALLOCATIONS[composition.allocation]
    layer_scores: list = [None] * len(state.shapes)

    def score_now(index: int, stats: dict[str, ChannelStats]) -> None:
        state.evidence.stats[index] = stats
        layer_scores[index] = state.scores(index) if index in state.active else None

    if needs & {"stats", "gram", "block_importance"}:
        block_metric = (composition.allocation_options.get("block_metric", allocation.defaults.get("block_metric"))
                        if "block_importance" in needs else None)
        # In memory the statistics come first (a sweep's pass is cached) and every layer is scored after them.
        stats, state.evidence.block_importance = dense_pass(
            state.model, state.calibration, "gram" in needs, composition.batch_size, block_metric,
            on_layer=score_now if state.resident is not None else None, resident=state.resident)
        if state.resident is None:
            for index, layer_stats in enumerate(stats):
                score_now(index, layer_stats)
    else:
        for index in progress(range(len(state.shapes)), "scoring", unit="layer"):
            with state.holding(index):
                score_now(index, {})
    kept = (state.solve_for_target(layer_scores) if state.target_params is not None
            else state.allocate(layer_scores, state.budget))
    state.plan.extras = {**kept.extras, **state.plan.extras}
    for index, layer in progress(enumerate(layer_scores), "cutting", total=len(layer_scores), unit="layer"):
        with state.holding(index, write=True):
            state.cut(index, layer, kept.groups[index], kept.channels[index], kept.inner[index] if kept.inner else None)
