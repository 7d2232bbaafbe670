"""Small pieces the recipes share: the weights a score reads, and building a plan."""

from __future__ import annotations

import torch

from ..allocate import Plan
from ..architectures import adapter_for, attention_of, count_parameters, decoder_layers, layer_shapes, mlp_of


def o_proj(model, index: int) -> torch.nn.Linear:
    adapter = adapter_for(model)
    return attention_of(decoder_layers(model)[index], adapter).get_submodule(adapter.o)


def down_proj(model, index: int) -> torch.nn.Linear:
    adapter = adapter_for(model)
    return mlp_of(decoder_layers(model)[index], adapter).get_submodule(adapter.down)


def output_linears(model) -> tuple[str, str]:
    """Module paths, inside a decoder layer, of o_proj and down_proj (whose inputs the scores read)."""
    adapter = adapter_for(model)
    return adapter.path(adapter.attention, adapter.o), adapter.path(adapter.mlp, adapter.down)


def group_sum(column_scores: torch.Tensor, group_width: int) -> torch.Tensor:
    """Sum column scores over each KV group's n_rep * head_dim o_proj columns."""
    return column_scores.view(-1, group_width).sum(1)


def empty_plan(model, method: str, ratio: float, options: dict) -> Plan:
    """A plan that keeps everything, with the model's current widths; recipes fill in what they cut."""
    shapes = layer_shapes(model)
    return Plan(
        method=method, ratio=ratio,
        kept_groups=[list(range(s.kv_groups)) for s in shapes],
        kept_channels=[list(range(s.channels)) for s in shapes],
        dense_groups=[s.kv_groups for s in shapes], dense_channels=[s.channels for s in shapes],
        group_params=[s.group_params for s in shapes], channel_params=[s.channel_params for s in shapes],
        params_before=count_parameters(model), options=dict(options),
    )


def count_new_bias(model, plan: Plan) -> int:
    """Bias entries a plan adds to o_proj / down_proj modules that have no bias yet."""
    hidden = model.config.hidden_size
    added = 0
    for index, (ob, db) in enumerate(zip(plan.o_bias, plan.down_bias, strict=True)):
        added += hidden * (ob is not None and o_proj(model, index).bias is None)
        added += hidden * (db is not None and down_proj(model, index).bias is None)
    return added
