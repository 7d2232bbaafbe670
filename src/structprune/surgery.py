"""Surgery: the one place that slices weights, adds compensation biases, updates the config, and saves
and loads pruned checkpoints.

Removing a unit is exact: deleting q/k/v rows and o_proj columns of a KV group (or gate/up rows and the
down_proj column of a channel) computes the same function as zeroing them, plus the compensation bias
where a plan has one. After surgery the model is an instance of the pruned model class of its family
(`pruned_modeling.py`), whose config records every layer's widths; saving and reloading give identical
logits.

Checkpoint format (a save_pretrained-style directory, written in the folder's staging folder and renamed into
place under a lock, so it is never half-written and two writers never both win; `staging.py`): model.safetensors, config.json (model_type `structpruned_<family>`,
`layer_shapes`, `auto_map`, and transformers' own `per_layer_config` where that schema can hold the shapes),
modeling_structpruned.py, tokenizer files, and pruning.json (provenance).
"""

from __future__ import annotations

import torch
from torch import nn

from .architectures import (
    adapter_for,
    attention_geometry,
    attention_of,
    decoder_layers,
    head_dim,
    mlp_of,
    model_type_of,
    value_head_dim,
)

# pruned_modeling (the pruned model classes) imports transformers' modeling code, which costs seconds; it is
# imported where a model is cut or saved, so reading records and building configs stays fast.


MODELING_FILE = "modeling_structpruned.py"


def _sliced(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
            bias_add: torch.Tensor | None = None) -> nn.Linear:
    """A new linear holding the kept rows (outputs) / columns (inputs), with `bias_add` added to its bias."""
    weight = linear.weight.data
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    bias = linear.bias.data if linear.bias is not None else None
    if bias is not None and rows is not None:
        bias = bias.index_select(0, rows.to(bias.device))
    if bias_add is not None:
        bias_add = bias_add.to(device=weight.device, dtype=torch.float64)
        bias = (bias.double() + bias_add if bias is not None else bias_add).to(weight.dtype)
    # skip_init: no random initialisation of weights that are overwritten next (seconds per layer at 7B size)
    new = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None,
                                   dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    return new


def unit_indices(kept: list[int], width: int) -> torch.Tensor:
    """Row (or column) indices of the kept units, each `width` consecutive rows wide."""
    if not kept:
        return torch.zeros(0, dtype=torch.long)
    return (torch.tensor(kept, dtype=torch.long)[:, None] * width + torch.arange(width)).flatten()


def _as_tensor(values) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor(values, dtype=torch.float64)


def prune_layer(model, index: int, kept_groups: list[int], kept_channels: list[int],
                o_bias=None, down_bias=None) -> None:
    """Cut one decoder layer in place to the kept KV groups and MLP channels, adding compensation
    biases (vectors of hidden size) to o_proj / down_proj."""
    adapter, config = adapter_for(model), model.config
    layer = decoder_layers(model)[index]
    attn, mlp = attention_of(layer, adapter), mlp_of(layer, adapter)
    o = attn.get_submodule(adapter.o)
    geometry = attention_geometry(model, index)
    groups, n_rep, d, dv = geometry.groups, geometry.queries_per_group, geometry.head_dim, geometry.value_dim
    if sorted(kept_groups) != list(kept_groups) or any(not 0 <= g < groups for g in kept_groups):
        raise ValueError(f"layer {index}: kept KV groups must be sorted indices in [0, {groups}), got {kept_groups}")
    if len(kept_groups) < groups or o_bias is not None:
        if not kept_groups:
            from .pruned_modeling import EmptyAttention

            bias = _sliced(o, cols=torch.zeros(0, dtype=torch.long), bias_add=_as_tensor(o_bias))
            empty = EmptyAttention(config.hidden_size, d, getattr(attn, "layer_idx", index), bias.bias is not None,
                                   dtype=o.weight.dtype, device=o.weight.device, o_name=adapter.o)
            empty.set_submodule(adapter.o, bias)
            layer.set_submodule(adapter.attention, empty)
        else:
            q_rows, k_rows = unit_indices(kept_groups, n_rep * d), unit_indices(kept_groups, d)
            v_rows, o_cols = unit_indices(kept_groups, dv), unit_indices(kept_groups, n_rep * dv)
            attn.set_submodule(adapter.q, _sliced(attn.get_submodule(adapter.q), rows=q_rows))
            attn.set_submodule(adapter.k, _sliced(attn.get_submodule(adapter.k), rows=k_rows))
            attn.set_submodule(adapter.v, _sliced(attn.get_submodule(adapter.v), rows=v_rows))
            attn.set_submodule(adapter.o, _sliced(o, cols=o_cols, bias_add=_as_tensor(o_bias)))
    down = mlp.get_submodule(adapter.down)
    channels = down.in_features
    if sorted(kept_channels) != list(kept_channels) or any(not 0 <= c < channels for c in kept_channels):
        raise ValueError(f"layer {index}: kept channels must be sorted indices in [0, {channels})")
    if len(kept_channels) < channels or down_bias is not None:
        rows = torch.tensor(kept_channels, dtype=torch.long)
        for name in filter(None, (adapter.gate, adapter.up)):
            mlp.set_submodule(name, _sliced(mlp.get_submodule(name), rows=rows))
        mlp.set_submodule(adapter.down, _sliced(down, cols=rows, bias_add=_as_tensor(down_bias)))
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(kept_channels)


def value_columns(kept_values: list[list[int]], n_rep: int, dv: int) -> torch.Tensor:
    """The o_proj input columns that value channels `kept_values[g]` of every KV group g keep: (h, c) for each
    of the group's n_rep query heads h."""
    return torch.tensor(sorted((g * n_rep + r) * dv + c for g, kept in enumerate(kept_values) for r in range(n_rep)
                               for c in kept), dtype=torch.long)


def _per_group_width(kept: list[list[int]], groups: int, limit: int, what: str) -> int:
    """The common count of a per-KV-group choice (value channels, query heads), after checking it: one sorted
    list per group, all of one length, indices in [0, limit)."""
    widths = {len(c) for c in kept}
    if len(kept) != groups or len(widths) != 1 or any(
            sorted(c) != list(c) or any(not 0 <= i < limit for i in c) for c in kept):
        raise ValueError(f"{what} must be {groups} sorted lists of equal length with indices in [0, {limit})")
    return widths.pop()


def prune_value_channels(model, index: int, kept_values: list[list[int]]) -> None:
    """FASP's attention cut: keep, in every KV group g, the value channels kept_values[g] (the same count
    in each group, so every head keeps one value width): v_proj rows (g, c) and the o_proj columns (h, c)
    of every query head h that reads group g (docs/methods.md, FASP-style)."""
    adapter = adapter_for(model)
    attn = attention_of(decoder_layers(model)[index], adapter)
    geometry = attention_geometry(model, index)
    groups, n_rep, d, dv = geometry.groups, geometry.queries_per_group, geometry.head_dim, geometry.value_dim
    width = _per_group_width(kept_values, groups, dv, f"layer {index}: kept value channels")
    if width == dv:
        return
    v_rows = torch.tensor([g * dv + c for g, kept in enumerate(kept_values) for c in kept], dtype=torch.long)
    o_cols = value_columns(kept_values, n_rep, dv)
    attn.set_submodule(adapter.v, _sliced(attn.get_submodule(adapter.v), rows=v_rows))
    attn.set_submodule(adapter.o, _sliced(attn.get_submodule(adapter.o), cols=o_cols))
    from .pruned_modeling import set_value_head_dim

    set_value_head_dim(attn, width, d, layout_dict(adapter))


def prune_query_heads(model, index: int, kept_heads: list[list[int]]) -> None:
    """Query-head units inside KV groups: keep, in every KV group g, the query heads kept_heads[g] (indices
    within the group, the same count in every group, so the layer keeps a whole queries-per-group ratio): their
    q_proj rows and o_proj columns. The KV heads stay; each serves its group's remaining query heads."""
    adapter = adapter_for(model)
    attn = attention_of(decoder_layers(model)[index], adapter)
    geometry = attention_geometry(model, index)
    groups, n_rep, d, dv = geometry.groups, geometry.queries_per_group, geometry.head_dim, geometry.value_dim
    width = _per_group_width(kept_heads, groups, n_rep, f"layer {index}: kept query heads")
    if width == 0:
        raise ValueError(f"layer {index}: every KV group must keep at least one query head")
    if width == n_rep:
        return
    heads = [g * n_rep + r for g, kept in enumerate(kept_heads) for r in kept]
    attn.set_submodule(adapter.q, _sliced(attn.get_submodule(adapter.q), rows=unit_indices(heads, d)))
    attn.set_submodule(adapter.o, _sliced(attn.get_submodule(adapter.o), cols=unit_indices(heads, dv)))
    if hasattr(attn, "num_key_value_groups"):  # the stock attention's repeat of each KV head
        attn.num_key_value_groups = width


def head_columns(kept_heads: list[list[int]], n_rep: int, dv: int) -> torch.Tensor:
    """The o_proj input columns of the query heads `kept_heads[g]` kept in every KV group g."""
    return unit_indices([g * n_rep + r for g, kept in enumerate(kept_heads) for r in kept], dv)


def layer_shapes_of(model) -> list[dict]:
    """Every layer's widths, read from its modules, as stored in a pruned config."""
    adapter, config = adapter_for(model), model.config
    d = head_dim(config)
    shapes = []
    for layer in decoder_layers(model):
        attn, mlp = attention_of(layer, adapter), mlp_of(layer, adapter)
        o = attn.get_submodule(adapter.o)
        down = mlp.get_submodule(adapter.down)
        k = getattr(attn, adapter.k, None)
        kv_heads = k.out_features // d if k is not None else 0
        dv = value_head_dim(attn, adapter, kv_heads, config)
        shapes.append({
            "num_attention_heads": o.in_features // dv if kv_heads else 0,
            "num_key_value_heads": kv_heads,
            "value_head_dim": dv,
            "intermediate_size": down.in_features,
            "o_proj_bias": o.bias is not None,
            "down_proj_bias": down.bias is not None,
        })
    return shapes


def native_per_layer_config(model, shapes: list[dict]) -> dict[int, dict] | None:
    """The pruned widths in transformers' own per-layer schema (`per_layer_config`, transformers 5.15 and later:
    sparse per-layer overrides of config attributes, and `skip` for a sub-layer that is absent), so that a
    checkpoint becomes native once the family's stock modeling builds layers from it. None where the schema
    cannot hold the shapes: narrower value heads (one head_dim serves q, k and v), an empty sub-layer that
    keeps a bias (`skip` drops the whole sub-layer), an MLP on the decoder layer itself with no channel left
    (nothing to name in `skip`), or a bias the family's config cannot switch on."""
    adapter, config = adapter_for(model), model.config
    per_layer: dict[int, dict] = {}
    for index, shape in enumerate(shapes):
        if shape["num_attention_heads"] and shape["value_head_dim"] != head_dim(config):
            return None
        # per sub-layer: its module name, whether it kept any unit, its widths, its bias and the config's switch
        sublayers = ((adapter.attention, shape["num_attention_heads"],
                      {"num_attention_heads": shape["num_attention_heads"],
                       adapter.kv_heads_attribute: shape["num_key_value_heads"]},
                      shape["o_proj_bias"], adapter.o_bias_switch),
                     (adapter.mlp, shape["intermediate_size"], {adapter.width_attribute: shape["intermediate_size"]},
                      shape["down_proj_bias"], adapter.down_bias_switch))
        overrides, skip = {}, []
        for module, units, widths, biased, switch in sublayers:
            if not units:
                if biased or not module:
                    return None
                skip.append(module)
                continue
            overrides.update({k: v for k, v in widths.items() if k})
            if biased:
                native = getattr(config, switch, None) if switch else None
                if native is None:
                    return None  # the family's config has no switch for this bias
                overrides[switch] = True
        # only what differs from the global config, as transformers itself stores it
        overrides = {k: v for k, v in overrides.items() if getattr(config, k, None) != v}
        if skip:
            overrides["skip"] = skip
        if overrides:
            per_layer[index] = overrides
    return per_layer


def layout_dict(adapter) -> dict:
    """The module layout a pruned config records (the adapter's names), read by the pruned model classes."""
    return {"layers": adapter.layers, "attention": adapter.attention, "q": adapter.q, "k": adapter.k,
            "v": adapter.v, "o": adapter.o, "mlp": adapter.mlp, "gate": adapter.gate, "up": adapter.up,
            "down": adapter.down, "q_norm": adapter.q_norm, "k_norm": adapter.k_norm}


def finalize_pruned(model):
    """Turn a model whose layers were cut into an instance of its family's pruned class, with a config
    that records every layer's widths (and `auto_map`, for loading with remote code)."""
    from .pruned_modeling import PRUNED_CLASSES

    family = model_type_of(model.config)
    config_class, model_class = PRUNED_CLASSES[family]
    old = model.config
    values = {k: v for k, v in old.to_dict().items()
              if k not in ("model_type", "transformers_version", "layer_shapes", "layout", "base_model_type",
                           "auto_map", "architectures", "per_layer_config")}
    shapes = layer_shapes_of(model)
    new = config_class(**values, layer_shapes=shapes, layout=layout_dict(adapter_for(model)), base_model_type=family,
                       per_layer_config=native_per_layer_config(model, shapes))
    new.auto_map = {"AutoConfig": f"{MODELING_FILE[:-3]}.{config_class.__name__}",
                    "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{model_class.__name__}"}
    new.architectures = [model_class.__name__]
    new._attn_implementation = old._attn_implementation
    for module in model.modules():
        if getattr(module, "config", None) is old:
            module.config = new
    model.config = new
    model.__class__ = model_class
    return model
