"""Model classes for structprune pruned checkpoints.

A pruned model has per-layer head counts, intermediate sizes, (FLAP) o_proj/down_proj biases and (FASP)
value widths, which a stock config cannot describe. The config subclasses below add `layer_shapes` (one
dict per decoder layer) and `base_model_type`; the model subclasses build the stock model and then give
every layer its own widths. The stock attention and MLP code runs the pruned model, except where values
are narrower than queries and keys (FASP): there `ValueWidthAttention` reshapes the values by their own
width and otherwise runs the stock attention function.

This file is self-contained (torch and transformers only): `save_pruned` copies it into every pruned
checkpoint as `modeling_structpruned.py`, so `AutoModelForCausalLM.from_pretrained(path,
trust_remote_code=True)` and lm-eval's `hf` model load the checkpoint where structprune is not installed.
With structprune installed, `load_pruned(path)` uses these same classes without remote code.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward

# A pruned config carries its family's module layout (`layout`: the adapter's module names, written by
# structprune's surgery from its one registry), so these classes hold no per-family knowledge of their own.
LAYOUT_KEYS = ("layers", "attention", "q", "k", "v", "o", "mlp", "gate", "up", "down")


def layout_of(config) -> dict:
    """The module layout a pruned config records; a config without one cannot be built reliably."""
    layout = getattr(config, "layout", None)
    if not layout or any(key not in layout for key in LAYOUT_KEYS):
        raise ValueError(f"this pruned config (model_type {config.model_type!r}) records no module layout "
                         f"({', '.join(LAYOUT_KEYS)}): it was written by an older structprune; prune again")
    return layout


def cache_of(past_key_values, kwargs: dict):
    """The KV cache an attention module was given: `past_key_values` (transformers 5.23), or `cache`, its name
    from transformers 5.24 on (taken out of `kwargs`, which go on to the attention function)."""
    cache = kwargs.pop("cache", None)
    return past_key_values if past_key_values is not None else cache


class EmptyAttention(nn.Module):
    """Attention of a layer that lost every KV group: its output is o_proj's bias (FLAP's compensation,
    or zero). It still records empty keys/values so that the cache length stays right for generation."""

    def __init__(self, hidden_size: int, head_dim: int, layer_idx: int, bias: bool, dtype=None, device=None,
                 o_name: str = "o_proj"):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = head_dim
        self.o_name = o_name
        setattr(self, o_name, nn.Linear(0, hidden_size, bias=bias, dtype=dtype, device=device))

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                **kwargs):
        past_key_values = cache_of(past_key_values, kwargs)
        batch, length = hidden_states.shape[:2]
        if past_key_values is not None:
            empty = hidden_states.new_zeros(batch, 0, length, self.head_dim)
            past_key_values.update(empty, empty, self.layer_idx)
        return getattr(self, self.o_name)(hidden_states.new_zeros(batch, length, 0)), None


class ValueWidthAttention:
    """Mixin for an attention whose values are `value_head_dim` wide (FASP keeps fewer value channels per
    head than the query/key head_dim). The forward is the stock one (LLaMA/Mistral/Qwen2: rotary on q, k;
    OPT: q scaled before the product), with the values reshaped by their own width; the attention function
    itself (eager or SDPA) takes values of any width."""

    value_head_dim: int
    o_name: str  # the output projection's name in this family's layout

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                **kwargs):
        past_key_values = cache_of(past_key_values, kwargs)
        input_shape = hidden_states.shape[:-1]
        query = getattr(self, self.q_name)(hidden_states)
        scaling = getattr(self, "scaling", self.head_dim ** -0.5)
        if position_embeddings is None:  # OPT: no rotary, queries scaled first, unit scaling in the kernel
            query, scaling = query * scaling, 1.0
        query = query.view(*input_shape, -1, self.head_dim)
        key = getattr(self, self.k_name)(hidden_states).view(*input_shape, -1, self.head_dim)
        if self.q_norm_name:  # per-head query/key norms (Qwen3), before rotary
            query, key = getattr(self, self.q_norm_name)(query), getattr(self, self.k_norm_name)(key)
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        value = getattr(self, self.v_name)(hidden_states).view(*input_shape, -1, self.value_head_dim).transpose(1, 2)
        if position_embeddings is not None:
            query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        extra = {"sliding_window": self.sliding_window} if getattr(self, "sliding_window", None) else {}
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        width = value.shape[-1]
        if self.config._attn_implementation == "sdpa" and width < query.shape[-1]:
            # SDPA's fused kernels need values as wide as queries (otherwise a slow materialised fallback): zero
            # value channels add zero output channels, and the attention weights are the same, so pad and slice.
            value = F.pad(value, (0, query.shape[-1] - width))
        output, weights = interface(self, query, key, value, attention_mask, scaling=scaling,
                                    dropout=0.0 if not self.training else getattr(self, "attention_dropout", 0.0),
                                    **extra, **kwargs)
        output = output[..., :width].reshape(*input_shape, -1).contiguous()
        return getattr(self, self.o_name)(output), weights


_VALUE_WIDTH_CLASSES: dict[type, type] = {}


def set_value_head_dim(attention: nn.Module, width: int, head_dim: int, layout: dict) -> None:
    """Give an attention module narrower values (its class gains `ValueWidthAttention`'s forward)."""
    if width == head_dim:
        return
    attention.q_name, attention.k_name, attention.v_name, attention.o_name = (
        layout["q"], layout["k"], layout["v"], layout["o"])
    attention.q_norm_name, attention.k_norm_name = layout.get("q_norm"), layout.get("k_norm")
    base = type(attention)
    if not issubclass(base, ValueWidthAttention):
        if base not in _VALUE_WIDTH_CLASSES:
            _VALUE_WIDTH_CLASSES[base] = type(f"ValueWidth{base.__name__}", (ValueWidthAttention, base), {})
        attention.__class__ = _VALUE_WIDTH_CLASSES[base]
    if not hasattr(attention, "num_key_value_groups"):  # OPT: the eager kernel repeats no KV heads
        attention.num_key_value_groups = 1
    attention.value_head_dim = width


def _resized(linear: nn.Linear, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """An empty linear of the new shape, on the old one's device and dtype (weights are loaded later)."""
    if linear.in_features == in_features and linear.out_features == out_features and (
            (linear.bias is not None) == bias):
        return linear
    return nn.Linear(in_features, out_features, bias=bias, dtype=linear.weight.dtype, device=linear.weight.device)


def reshape_layer(layer: nn.Module, shape: dict, config, layout: dict) -> None:
    """Give one decoder layer the widths in `shape` (structure only; no weights are copied)."""
    attn_name, q, k, v, o, mlp_name, gate, up, down = (layout[key] for key in LAYOUT_KEYS[1:])
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attn, hidden = getattr(layer, attn_name), config.hidden_size
    mlp = getattr(layer, mlp_name) if mlp_name else layer
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    value_dim = shape.get("value_head_dim", head_dim)
    if heads == 0:
        old = getattr(attn, o)
        setattr(layer, attn_name, EmptyAttention(hidden, head_dim, getattr(attn, "layer_idx", None),
                                                 shape["o_proj_bias"], dtype=old.weight.dtype,
                                                 device=old.weight.device, o_name=o))
    else:
        for name, rows in ((q, heads * head_dim), (k, kv_heads * head_dim), (v, kv_heads * value_dim)):
            linear = getattr(attn, name)
            setattr(attn, name, _resized(linear, hidden, rows, linear.bias is not None))
        setattr(attn, o, _resized(getattr(attn, o), heads * value_dim, hidden, shape["o_proj_bias"]))
        if hasattr(attn, "num_key_value_groups") and kv_heads:  # query heads pruned inside KV groups
            attn.num_key_value_groups = heads // kv_heads
        set_value_head_dim(attn, value_dim, head_dim, layout)
    width = shape["intermediate_size"]
    for name in filter(None, (gate, up)):
        linear = getattr(mlp, name)
        setattr(mlp, name, _resized(linear, hidden, width, linear.bias is not None))
    setattr(mlp, down, _resized(getattr(mlp, down), width, hidden, shape["down_proj_bias"]))
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = width


class StructprunedMixin:
    """Builds the stock model, then applies `config.layer_shapes`."""

    def __init__(self, config):
        super().__init__(config)
        self._apply_layer_shapes()
        self.post_init()

    def _apply_layer_shapes(self) -> None:
        layout = layout_of(self.config)
        layers = self.get_submodule(layout["layers"])
        shapes = self.config.layer_shapes or []
        if len(shapes) != len(layers):
            raise ValueError(f"the pruned config lists {len(shapes)} layer shapes for {len(layers)} layers")
        for layer, shape in zip(layers, shapes, strict=True):
            reshape_layer(layer, shape, self.config, layout)


class NativeSchemaMixin:
    """Carries transformers' own per-layer schema (`per_layer_config`, see `surgery.native_per_layer_config`) as
    data beside `layer_shapes`. These classes build their layers from `layer_shapes`, which also holds what that
    schema cannot (narrower value heads); were the key applied here, transformers would turn the config
    heterogeneous and refuse the global widths the stock modeling code reads while it builds the dense layers."""

    def __post_init__(self, **kwargs):
        self.native_per_layer_config = kwargs.pop("per_layer_config", None)
        super().__post_init__(**kwargs)

    def _update_heterogeneous_to_dict_output(self, d: dict) -> None:
        super()._update_heterogeneous_to_dict_output(d)
        native = d.pop("native_per_layer_config", None)
        if native is not None:  # keys zero-padded, as transformers writes them, so that JSON sorts them numerically
            width = len(str(max(map(int, native), default=0)))
            d["per_layer_config"] = {str(index).zfill(width): native[index]
                                     for index in sorted(native, key=int)}


class StructprunedLlamaConfig(NativeSchemaMixin, LlamaConfig):
    model_type = "structpruned_llama"
    layer_shapes: list | None = None
    layout: dict | None = None
    base_model_type: str = "llama"


class StructprunedMistralConfig(NativeSchemaMixin, MistralConfig):
    model_type = "structpruned_mistral"
    layer_shapes: list | None = None
    layout: dict | None = None
    base_model_type: str = "mistral"


class StructprunedQwen2Config(NativeSchemaMixin, Qwen2Config):
    model_type = "structpruned_qwen2"
    layer_shapes: list | None = None
    layout: dict | None = None
    base_model_type: str = "qwen2"


class StructprunedQwen3Config(NativeSchemaMixin, Qwen3Config):
    model_type = "structpruned_qwen3"
    layer_shapes: list | None = None
    layout: dict | None = None
    base_model_type: str = "qwen3"


class StructprunedGemma3TextConfig(NativeSchemaMixin, Gemma3TextConfig):
    model_type = "structpruned_gemma3_text"
    layer_shapes: list | None = None
    layout: dict | None = None
    base_model_type: str = "gemma3_text"


class StructprunedOPTConfig(NativeSchemaMixin, OPTConfig):
    model_type = "structpruned_opt"
    layer_shapes: list | None = None
    layout: dict | None = None
    base_model_type: str = "opt"


class StructprunedLlamaForCausalLM(StructprunedMixin, LlamaForCausalLM):
    config_class = StructprunedLlamaConfig


class StructprunedMistralForCausalLM(StructprunedMixin, MistralForCausalLM):
    config_class = StructprunedMistralConfig


class StructprunedQwen2ForCausalLM(StructprunedMixin, Qwen2ForCausalLM):
    config_class = StructprunedQwen2Config


class StructprunedQwen3ForCausalLM(StructprunedMixin, Qwen3ForCausalLM):
    config_class = StructprunedQwen3Config


class StructprunedGemma3ForCausalLM(StructprunedMixin, Gemma3ForCausalLM):
    config_class = StructprunedGemma3TextConfig


class StructprunedOPTForCausalLM(StructprunedMixin, OPTForCausalLM):
    config_class = StructprunedOPTConfig


# base model_type -> (pruned config class, pruned model class)
PRUNED_CLASSES = {
    "llama": (StructprunedLlamaConfig, StructprunedLlamaForCausalLM),
    "mistral": (StructprunedMistralConfig, StructprunedMistralForCausalLM),
    "qwen2": (StructprunedQwen2Config, StructprunedQwen2ForCausalLM),
    "qwen3": (StructprunedQwen3Config, StructprunedQwen3ForCausalLM),
    "gemma3_text": (StructprunedGemma3TextConfig, StructprunedGemma3ForCausalLM),
    "opt": (StructprunedOPTConfig, StructprunedOPTForCausalLM),
}

for _config_class, _model_class in PRUNED_CLASSES.values():
    try:
        AutoConfig.register(_config_class.model_type, _config_class)
        AutoModelForCausalLM.register(_config_class, _model_class)
    except ValueError:  # already registered (module imported twice, e.g. as remote code)
        pass

__all__ = ["EmptyAttention", "LAYOUT_KEYS", "PRUNED_CLASSES", "layout_of", "ValueWidthAttention", "reshape_layer", "set_value_head_dim",
           "StructprunedLlamaConfig", "StructprunedOPTConfig", "StructprunedOPTForCausalLM",
           "StructprunedLlamaForCausalLM", "StructprunedMistralConfig", "StructprunedMistralForCausalLM",
           "StructprunedQwen2Config", "StructprunedQwen2ForCausalLM", "StructprunedQwen3Config",
           "StructprunedQwen3ForCausalLM", "StructprunedGemma3TextConfig", "StructprunedGemma3ForCausalLM"]
