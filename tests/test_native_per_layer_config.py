"""What transformers (the pinned 5.23) does with its own per-layer config schema (`per_layer_config`: sparse
per-layer overrides of config attributes) for a non-uniform LLaMA, the shape a pruned checkpoint has. Today
its Llama modeling reads the global widths while building layers, and the heterogeneous config refuses that
read: a pruned model cannot be built natively yet, so pruned checkpoints keep their own `layer_shapes` and
classes. When this test fails, transformers builds such models natively."""

import pytest
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations.heterogeneity.configuration_utils import AmbiguousGlobalPerLayerAttributeError

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2)


def test_per_layer_mlp_widths_are_stored_but_llama_modeling_cannot_build_them():
    config = LlamaConfig(**BASE, per_layer_config={1: {"intermediate_size": 16}})
    assert config.is_heterogeneous
    assert [layer.intermediate_size for layer in config.per_layer_config] == [64, 16, 64]
    with pytest.raises(AmbiguousGlobalPerLayerAttributeError, match="intermediate_size"):
        LlamaForCausalLM(config)


def test_per_layer_head_counts_fail_the_llama_config_validation():
    with pytest.raises(AmbiguousGlobalPerLayerAttributeError, match="num_attention_heads"):
        LlamaConfig(**BASE, per_layer_config={1: {"num_attention_heads": 2, "num_key_value_heads": 1}})
