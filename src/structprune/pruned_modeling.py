"""Model classes for structprune pruned checkpoints.

A pruned model has per-layer head counts, intermediate sizes and (FLAP) o_proj/down_proj biases, which a
stock config cannot describe. The config subclasses below add `layer_shapes` (one dict per decoder
layer) and `base_model_type`; the model subclasses build the stock model and then give every layer its
own widths. Nothing else differs, so the stock attention and MLP code runs the pruned model.

This file is self-contained (torch and transformers only): `save_pruned` copies it into every pruned
checkpoint as `modeling_structpruned.py`, so `AutoModelForCausalLM.from_pretrained(path,
trust_remote_code=True)` and lm-eval's `hf` model load the checkpoint where structprune is not installed.
With structprune installed, `load_pruned(path)` uses these same classes without remote code.
"""

from __future__ import annotations

from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)


class EmptyAttention(nn.Module):
    """Attention of a layer that lost every KV group: its output is o_proj's bias (FLAP's compensation,
    or zero). It still records empty keys/values so that the cache length stays right for generation."""

    def __init__(self, hidden_size: int, head_dim: int, layer_idx: int, bias: bool, dtype=None, device=None):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = head_dim
        self.o_proj = nn.Linear(0, hidden_size, bias=bias, dtype=dtype, device=device)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                **kwargs):
        batch, length = hidden_states.shape[:2]
        if past_key_values is not None:
            empty = hidden_states.new_zeros(batch, 0, length, self.head_dim)
            past_key_values.update(empty, empty, self.layer_idx)
        return self.o_proj(hidden_states.new_zeros(batch, length, 0)), None


def _resized(linear: nn.Linear, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """An empty linear of the new shape, on the old one's device and dtype (weights are loaded later)."""
    if linear.in_features == in_features and linear.out_features == out_features and (
            (linear.bias is not None) == bias):
        return linear
    return nn.Linear(in_features, out_features, bias=bias, dtype=linear.weight.dtype, device=linear.weight.device)


def reshape_layer(layer: nn.Module, shape: dict, config) -> None:
    """Give one decoder layer the widths in `shape` (structure only; no weights are copied)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attn, mlp, hidden = layer.self_attn, layer.mlp, config.hidden_size
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    if heads == 0:
        o = attn.o_proj
        layer.self_attn = EmptyAttention(hidden, head_dim, attn.layer_idx, shape["o_proj_bias"],
                                         dtype=o.weight.dtype, device=o.weight.device)
    else:
        attn.q_proj = _resized(attn.q_proj, hidden, heads * head_dim, attn.q_proj.bias is not None)
        attn.k_proj = _resized(attn.k_proj, hidden, kv_heads * head_dim, attn.k_proj.bias is not None)
        attn.v_proj = _resized(attn.v_proj, hidden, kv_heads * head_dim, attn.v_proj.bias is not None)
        attn.o_proj = _resized(attn.o_proj, heads * head_dim, hidden, shape["o_proj_bias"])
    width = shape["intermediate_size"]
    mlp.gate_proj = _resized(mlp.gate_proj, hidden, width, mlp.gate_proj.bias is not None)
    mlp.up_proj = _resized(mlp.up_proj, hidden, width, mlp.up_proj.bias is not None)
    mlp.down_proj = _resized(mlp.down_proj, width, hidden, shape["down_proj_bias"])
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = width


class StructprunedMixin:
    """Builds the stock model, then applies `config.layer_shapes`."""

    def __init__(self, config):
        super().__init__(config)
        self._apply_layer_shapes()
        self.post_init()

    def _apply_layer_shapes(self) -> None:
        for layer, shape in zip(self.model.layers, self.config.layer_shapes or [], strict=False):
            reshape_layer(layer, shape, self.config)


class StructprunedLlamaConfig(LlamaConfig):
    model_type = "structpruned_llama"
    layer_shapes: list | None = None
    base_model_type: str = "llama"


class StructprunedMistralConfig(MistralConfig):
    model_type = "structpruned_mistral"
    layer_shapes: list | None = None
    base_model_type: str = "mistral"


class StructprunedQwen2Config(Qwen2Config):
    model_type = "structpruned_qwen2"
    layer_shapes: list | None = None
    base_model_type: str = "qwen2"


class StructprunedLlamaForCausalLM(StructprunedMixin, LlamaForCausalLM):
    config_class = StructprunedLlamaConfig


class StructprunedMistralForCausalLM(StructprunedMixin, MistralForCausalLM):
    config_class = StructprunedMistralConfig


class StructprunedQwen2ForCausalLM(StructprunedMixin, Qwen2ForCausalLM):
    config_class = StructprunedQwen2Config


# base model_type -> (pruned config class, pruned model class)
PRUNED_CLASSES = {
    "llama": (StructprunedLlamaConfig, StructprunedLlamaForCausalLM),
    "mistral": (StructprunedMistralConfig, StructprunedMistralForCausalLM),
    "qwen2": (StructprunedQwen2Config, StructprunedQwen2ForCausalLM),
}

for _config_class, _model_class in PRUNED_CLASSES.values():
    try:
        AutoConfig.register(_config_class.model_type, _config_class)
        AutoModelForCausalLM.register(_config_class, _model_class)
    except ValueError:  # already registered (module imported twice, e.g. as remote code)
        pass

__all__ = ["EmptyAttention", "PRUNED_CLASSES", "reshape_layer", "StructprunedLlamaConfig",
           "StructprunedLlamaForCausalLM", "StructprunedMistralConfig", "StructprunedMistralForCausalLM",
           "StructprunedQwen2Config", "StructprunedQwen2ForCausalLM"]
