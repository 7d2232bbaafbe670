"""A searched allocation: per-layer kept counts of KV groups and MLP channels, chosen by an evolutionary
search at a fixed parameter count (in the manner of EvoPress, Sieberling et al. 2024).

    start      the composition's own allocation at `target_params` (its kept counts per layer)
    mutate     move `step` units of one kind (KV groups, or MLP channels in steps of `channel_step`) from one
               layer to another: every layer's unit of a kind has the same parameters, so the total is fixed
    fitness    KL(dense || pruned) of the next-token distributions on held-out calibration tokens (never the
               evaluation sets), lower is better; each candidate is the composition's score and compensation
               applied with the `counts` allocation
    select     (1 + offspring): each generation mutates the best candidate `offspring` times and keeps the
               best child if it beats its parent
Compute is bounded by generations x offspring candidate evaluations (each a prune of a copy of the model
and a forward pass over the held-out tokens); a seed fixes every choice, so the search is deterministic.
One-shot compositions only: a candidate reuses the cached dense statistics, which a sequential pass cannot.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field, replace

import torch

from .api import prune
from .composition import GRADIENT_EVIDENCE, Composition
from .progress import progress
from .units import ATTENTION_UNITS


@dataclass
class SearchResult:
    groups: list[int]  # kept KV groups per layer
    channels: list[int]  # kept MLP channels per layer
    composition: Composition  # the composition with the `counts` allocation: prune(model, it, ratio) applies it
    start_fitness: float
    fitness: float
    history: list[float] = field(default_factory=list)  # best fitness after each generation
    evaluations: int = 0
    seconds: float = 0.0
    params_removed: int = 0

    def summary(self) -> dict:
        return {"groups": self.groups, "channels": self.channels, "start_kl": self.start_fitness, "kl": self.fitness,
                "history": self.history, "evaluations": self.evaluations, "seconds": self.seconds,
                "params_removed": self.params_removed, "parts": self.composition.describe()}


def with_counts(composition: Composition, groups: list[int], channels: list[int]) -> Composition:
    """`composition` with its allocation replaced by the given per-layer kept counts (every other field kept:
    its unit, its pass, its options)."""
    return replace(composition, allocation="counts",
                               allocation_options={"groups": list(groups), "channels": list(channels)}).check()


@torch.no_grad()
def kl_to_dense(model, ids: torch.Tensor, dense_log_probs: torch.Tensor, batch_size: int = 8) -> float:
    """Mean over tokens of KL(dense || model) of the next-token distributions."""
    total, tokens = 0.0, 0
    for first in range(0, ids.shape[0], batch_size):
        batch = ids[first:first + batch_size]
        log_probs = torch.log_softmax(model(batch, use_cache=False).logits.float(), -1)
        dense = dense_log_probs[first:first + batch_size]
        total += (dense.exp() * (dense - log_probs)).sum().item()
        tokens += batch.numel()
    return total / tokens


def search_allocation(model, composition: Composition, target_params: float, calibration: torch.Tensor,
                      held_out: torch.Tensor, generations: int = 20, offspring: int = 4, channel_step: int = 32,
                      mutations: int = 2, seed: int = 0) -> SearchResult:
    """Search per-layer kept counts for `composition` (its score and compensation) that remove `target_params`
    of the model's parameters (see the module docstring); `model` is left unchanged."""
    composition.check()
    inside_groups = ATTENTION_UNITS[composition.attention_unit].inside_groups
    if composition.sequential or composition.needs() & GRADIENT_EVIDENCE or inside_groups:
        raise ValueError("the allocation search re-cuts a copy of the model per candidate from one dense pass: give "
                         "a one-shot composition (sequential=False) with KV-group units and a score that reads "
                         "calibration statistics or weights (wanda, wifv, ifv, activation, magnitude)")
    for name, value, least in (("generations", generations, 0), ("offspring", offspring, 1),
                               ("channel_step", channel_step, 1), ("mutations", mutations, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be a whole number of at least {least}, got {value!r}")
    start = time.perf_counter()
    with torch.no_grad():
        dense_log_probs = torch.cat([torch.log_softmax(model(b, use_cache=False).logits.float(), -1)
                                     for b in held_out.split(8)])
    first = prune(copy.deepcopy(model), composition, target_params=target_params, calibration=calibration)
    groups = [len(k) for k in first.plan.kept_groups]
    channels = [len(k) for k in first.plan.kept_channels]
    dense_groups, dense_channels = first.plan.dense_groups, first.plan.dense_channels
    step = max(channel_step, composition.round_to)
    evaluations = 0

    def fitness(candidate_groups: list[int], candidate_channels: list[int]) -> tuple[float, int]:
        nonlocal evaluations
        evaluations += 1
        pruned = copy.deepcopy(model)
        result = prune(pruned, with_counts(composition, candidate_groups, candidate_channels), target_params,
                       calibration=calibration)
        return kl_to_dense(pruned, held_out, dense_log_probs), result.params_before - result.params_after

    def mutate(rng: random.Random, parent_groups: list[int], parent_channels: list[int]):
        child_groups, child_channels = list(parent_groups), list(parent_channels)
        for _ in range(mutations):
            kinds = [("channels", child_channels, dense_channels, step)]
            if composition.attention and any(dense_groups):
                kinds.append(("groups", child_groups, dense_groups, 1))
            _, counts, dense, unit = kinds[rng.randrange(len(kinds))]
            givers = [i for i, c in enumerate(counts) if c - unit >= (1 if unit > 1 else 0)]
            takers = [i for i, c in enumerate(counts) if c + unit <= dense[i]]
            if not givers or not takers:
                continue
            giver, taker = rng.choice(givers), rng.choice(takers)
            if giver != taker:
                counts[giver] -= unit
                counts[taker] += unit
        return child_groups, child_channels

    best_fitness, removed = fitness(groups, channels)
    start_fitness, history = best_fitness, []
    rng = random.Random(seed)
    for _ in progress(range(generations), f"allocation search ({offspring} offspring)", unit="generation"):
        children = [mutate(rng, groups, channels) for _ in range(offspring)]
        scored = [(fitness(*child), child) for child in children]
        (child_fitness, child_removed), child = min(scored, key=lambda item: item[0][0])
        if child_fitness < best_fitness:
            best_fitness, removed = child_fitness, child_removed
            groups, channels = child
        history.append(best_fitness)
    return SearchResult(groups=groups, channels=channels, composition=with_counts(composition, groups, channels),
                        start_fitness=start_fitness, fitness=best_fitness, history=history, evaluations=evaluations,
                        seconds=time.perf_counter() - start, params_removed=removed)
