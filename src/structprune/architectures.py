"""Per-family knowledge, in one registry keyed by `config.model_type`.

An adapter names a decoder layer's attention and MLP linears and defines the prunable units:
- attention unit = one KV group: a key/value head and the n_rep query heads that share it
  (q rows, k rows, v rows, o_proj columns); with multi-head attention a group is one head.
  Removing whole groups keeps `num_key_value_groups` constant, so stock attention code still runs.
- MLP unit = one intermediate channel (gate row, up row, down_proj column; OPT: fc1 row + bias, fc2 column).
Parameter counts per unit make every ratio a ratio of parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Adapter:
    family: str
    layers: str = "model.layers"
    attention: str = "self_attn"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    mlp: str = "mlp"  # "" when the MLP linears sit on the decoder layer itself (OPT)
    gate: str | None = "gate_proj"  # None: an ungated MLP, down(act(up(x)))
    up: str = "up_proj"
    down: str = "down_proj"
    # Per-head RMSNorms of queries and keys (Qwen3): one head_dim-wide weight shared by every head, so removing
    # heads leaves them as they are; narrower value heads must still apply them.
    q_norm: str | None = None
    k_norm: str | None = None
    # The config's names for the widths and bias switches that transformers' own per-layer schema
    # (`per_layer_config`) can override layer by layer; None where the family has no such attribute.
    width_attribute: str = "intermediate_size"
    kv_heads_attribute: str | None = "num_key_value_heads"
    o_bias_switch: str | None = "attention_bias"
    down_bias_switch: str | None = "mlp_bias"
    # Every evaluation and calibration window starts with the BOS token (Gemma: a window without it is out of
    # the model's distribution; Gemma 3 270M's WikiText-2 perplexity on 16 windows of 128 is 346 without, 42.6
    # with it). The other families read windows cut from the running text, as their papers evaluate them.
    window_bos: bool = False

    def path(self, *names: str) -> str:
        """A module path inside a decoder layer (empty parts skipped)."""
        return ".".join(n for n in names if n)


LLAMA_FAMILY = Adapter(family="llama")
# OPT: fc1 -> ReLU -> fc2 on the layer itself, out_proj, biases everywhere (FASP's OPT experiments).
OPT_FAMILY = Adapter(family="opt", layers="model.decoder.layers", o="out_proj", mlp="", gate=None, up="fc1",
                     down="fc2", width_attribute="ffn_dim", kv_heads_attribute=None, o_bias_switch="enable_bias",
                     down_bias_switch="enable_bias")
QWEN3_FAMILY = Adapter(family="qwen3", q_norm="q_norm", k_norm="k_norm")
# Gemma 3 (text): Qwen3's per-head q/k norms, GeGLU under the LLaMA names, four norms per layer over the hidden size
# (untouched by head and channel cuts), sliding-window and global layers, scaled embeddings, head_dim in the config.
GEMMA3_FAMILY = Adapter(family="gemma3_text", q_norm="q_norm", k_norm="k_norm", window_bos=True)
# model_type -> adapter. Qwen2 differs only by its q/k/v biases, which the unit slicing carries along; Llama 3's
# rope scaling lives in the config, which pruned configs keep.
REGISTRY: dict[str, Adapter] = {
    "llama": LLAMA_FAMILY,
    "mistral": LLAMA_FAMILY,
    "qwen2": LLAMA_FAMILY,
    "qwen3": QWEN3_FAMILY,
    "gemma3_text": GEMMA3_FAMILY,
    "opt": OPT_FAMILY,
}


def model_type_of(config) -> str:
    """The family model_type; pruned checkpoints name the family they came from."""
    return getattr(config, "base_model_type", None) or config.model_type


def window_bos_id(model) -> int | None:
    """The BOS token id that starts every evaluation and calibration window of this model's family, or None
    (`Adapter.window_bos`; None too for a family outside the registry, which evaluation still accepts)."""
    adapter = REGISTRY.get(model_type_of(model.config))
    if adapter is None or not adapter.window_bos:
        return None
    bos = getattr(model.config, "bos_token_id", None)
    if bos is None:
        raise ValueError(f"{adapter.family} windows start with the BOS token, but the model's config names none "
                         "(config.bos_token_id): set it from the tokenizer's bos_token_id")
    return bos


def adapter_for(model) -> Adapter:
    model_type = model_type_of(model.config)
    if model_type not in REGISTRY:
        raise NotImplementedError(
            f"architecture {model_type!r} is not supported: supported model types are "
            f"{', '.join(sorted(REGISTRY))} (LLaMA 1/2/3, Vicuna, Mistral, Qwen2, Qwen3, Gemma 3, SmolLM; OPT)"
        )
    return REGISTRY[model_type]


def decoder_layers(model) -> nn.ModuleList:
    return model.get_submodule(adapter_for(model).layers)


def attention_of(layer: nn.Module, adapter: Adapter) -> nn.Module:
    return layer.get_submodule(adapter.attention)


def mlp_of(layer: nn.Module, adapter: Adapter) -> nn.Module:
    return layer.get_submodule(adapter.mlp)


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def queries_per_group(config) -> int:
    """n_rep of the dense model: query heads per KV head (1 with multi-head attention)."""
    return config.num_attention_heads // (getattr(config, "num_key_value_heads", None) or config.num_attention_heads)


def layer_queries_per_group(attention: nn.Module, adapter: Adapter, kv_groups: int, config) -> int:
    """Query heads per KV head in this layer: fewer than the config's after query-head pruning."""
    q = getattr(attention, adapter.q, None)
    return q.out_features // (head_dim(config) * kv_groups) if q is not None and kv_groups else queries_per_group(config)


def value_head_dim(attention: nn.Module, adapter: Adapter, kv_groups: int, config) -> int:
    """Value channels per KV group: head_dim, fewer after FASP's value-channel pruning."""
    v = getattr(attention, adapter.v, None)
    return v.out_features // kv_groups if v is not None and kv_groups else head_dim(config)


@dataclass(frozen=True)
class AttentionGeometry:
    """One decoder layer's attention as it is now: KV groups, query heads per group, head and value widths,
    and which projections carry a bias (the numbers every attention unit is chosen, counted and cut by)."""

    groups: int
    queries_per_group: int
    head_dim: int
    value_dim: int
    hidden: int
    q_bias: bool
    v_bias: bool


def attention_geometry(model, index: int) -> AttentionGeometry:
    adapter, config = adapter_for(model), model.config
    attn = attention_of(decoder_layers(model)[index], adapter)
    d = head_dim(config)
    k = getattr(attn, adapter.k, None)
    groups = 0 if k is None else k.out_features // d
    q, v = getattr(attn, adapter.q, None), getattr(attn, adapter.v, None)
    return AttentionGeometry(groups=groups, queries_per_group=layer_queries_per_group(attn, adapter, groups, config),
                             head_dim=d, value_dim=value_head_dim(attn, adapter, groups, config),
                             hidden=config.hidden_size, q_bias=q is not None and q.bias is not None,
                             v_bias=v is not None and v.bias is not None)


@dataclass(frozen=True)
class LayerShape:
    """The prunable widths of one decoder layer and the parameters of one unit of each kind."""

    kv_groups: int
    channels: int
    group_params: int
    channel_params: int

    @property
    def params(self) -> int:
        return self.kv_groups * self.group_params + self.channels * self.channel_params


def layer_shape(model, index: int) -> LayerShape:
    adapter, config = adapter_for(model), model.config
    layer = decoder_layers(model)[index]
    attn, mlp = attention_of(layer, adapter), mlp_of(layer, adapter)
    d, h = head_dim(config), config.hidden_size
    k = getattr(attn, adapter.k, None)
    kv_groups = 0 if k is None else k.out_features // d
    n_rep = layer_queries_per_group(attn, adapter, kv_groups, config)
    dv = value_head_dim(attn, adapter, kv_groups, config)
    # q, k, v rows and o_proj columns of the group's n_rep query heads, plus any q/k/v bias entries.
    group_params = (n_rep * d + d + dv) * h + h * n_rep * dv
    for name, rows in ((adapter.q, n_rep * d), (adapter.k, d), (adapter.v, dv)):
        proj = getattr(attn, name, None)  # absent when a layer lost every group
        if proj is not None and proj.bias is not None:
            group_params += rows
    inputs = [mlp.get_submodule(adapter.up)] + ([mlp.get_submodule(adapter.gate)] if adapter.gate else [])
    channel_params = (len(inputs) + 1) * h + sum(m.bias is not None for m in inputs)
    return LayerShape(kv_groups=kv_groups, channels=inputs[0].out_features, group_params=group_params,
                      channel_params=channel_params)


def layer_shapes(model) -> list[LayerShape]:
    return [layer_shape(model, i) for i in range(len(decoder_layers(model)))]


def count_parameters(model) -> int:
    """All parameters, tied embeddings counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
