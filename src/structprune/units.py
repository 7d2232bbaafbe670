"""Attention units: what one unit of attention is, how units are chosen, which o_proj input columns they own,
what they cost in parameters, and how they are cut (`ATTENTION_UNITS`).

- `kv_group`: a key/value head and the query heads that read it (q, k, v rows and o_proj columns), so stock
  grouped-query attention still runs. The allocation chooses which groups each layer keeps, like MLP channels.
- `value_channel` (FASP): channel c of group g's value head: its v_proj row and the o_proj column (h, c) of every
  query head h of the group.
- `query_head`: one query head inside a KV group: its q_proj rows and o_proj columns; the KV head stays.

Units inside KV groups keep every group, and every group keeps the same number of them (one value width, one
queries-per-group ratio per layer): `count(geometry, ratio, round_to)` is that number, a uniform rule, unless the
allocation gives its own (`Kept.inner`). In each group they keep the units whose o_proj column scores, summed over
the unit's columns, are highest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .allocate import keep_highest
from .architectures import AttentionGeometry
from .surgery import head_columns, prune_query_heads, prune_value_channels, value_columns


def value_width(dv: int, ratio: float, round_to: int) -> int:
    """Value channels every KV group keeps under value-channel units: dv - floor(r dv), rounded."""
    keep = dv - math.floor(ratio * dv)
    if round_to > 1 and keep:  # hardware-friendly value width, as for the MLP channels
        keep = min(max(round(keep / round_to), 1) * round_to, dv)
    return keep


def query_heads_kept(n_rep: int, ratio: float) -> int:
    """Query heads every KV group keeps under query-head units: n_rep - floor(r n_rep), at least one."""
    return max(n_rep - math.floor(ratio * n_rep), 1)


def query_head_params(hidden: int, head_dim: int, value_dim: int, q_bias: bool) -> int:
    """Parameters of one query head: its q_proj rows (and bias entries) and its o_proj columns."""
    return hidden * head_dim + head_dim * q_bias + hidden * value_dim


@dataclass(frozen=True)
class AttentionUnit:
    name: str
    mark: str | None = None  # how a composition's label names it (None: the default unit, unnamed)
    # Units inside KV groups: the plan's field of per-layer, per-group choices; None for whole KV groups.
    plan_field: str | None = None
    per_group: Callable[[AttentionGeometry], int] | None = None  # units in one KV group now
    count: Callable[[AttentionGeometry, float, int], int] | None = None  # kept per group: the uniform rule
    unit_scores: Callable[[torch.Tensor, AttentionGeometry], torch.Tensor] | None = None  # [groups, units]
    columns: Callable[[list[list[int]], AttentionGeometry], torch.Tensor] | None = None  # o_proj columns kept
    removed: Callable[[AttentionGeometry, int], int] | None = None  # parameters removed keeping `count` per group
    cut: Callable | None = None  # surgery: (model, index, kept per group)

    @property
    def inside_groups(self) -> bool:
        return self.plan_field is not None

    def choose(self, column_scores: torch.Tensor, geometry: AttentionGeometry, count: int) -> list[list[int]]:
        """In every KV group, the `count` units whose o_proj column scores sum highest."""
        if not 1 <= count <= self.per_group(geometry):
            raise ValueError(f"{self.name} units: every KV group keeps between 1 and its {self.per_group(geometry)} "
                             f"units, not {count}")
        scores = self.unit_scores(column_scores, geometry)
        return [keep_highest(scores[g], count) for g in range(geometry.groups)]


ATTENTION_UNITS: dict[str, AttentionUnit] = {unit.name: unit for unit in (
    AttentionUnit("kv_group"),
    AttentionUnit(
        "value_channel", "value channels", "kept_values", per_group=lambda g: g.value_dim,
        count=lambda g, ratio, round_to: value_width(g.value_dim, ratio, round_to),
        unit_scores=lambda s, g: s.view(g.groups, g.queries_per_group, g.value_dim).sum(1),
        columns=lambda kept, g: value_columns(kept, g.queries_per_group, g.value_dim),
        removed=lambda g, width: g.groups * (g.value_dim - width) * (g.hidden * (1 + g.queries_per_group) + g.v_bias),
        cut=prune_value_channels),
    AttentionUnit(
        "query_head", "query heads", "kept_heads", per_group=lambda g: g.queries_per_group,
        count=lambda g, ratio, round_to: query_heads_kept(g.queries_per_group, ratio),
        unit_scores=lambda s, g: s.view(g.groups, g.queries_per_group, g.value_dim).sum(-1),
        columns=lambda kept, g: head_columns(kept, g.queries_per_group, g.value_dim),
        removed=lambda g, heads: g.groups * (g.queries_per_group - heads) * query_head_params(
            g.hidden, g.head_dim, g.value_dim, g.q_bias),
        cut=prune_query_heads),
)}
