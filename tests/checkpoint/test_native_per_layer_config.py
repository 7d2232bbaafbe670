"""Pruned configs also carry transformers' own per-layer schema (`per_layer_config`, transformers 5.15 and later:
sparse per-layer overrides of config attributes, `skip` for an absent sub-layer), beside `layer_shapes`.

What the pinned transformers does with it: LlamaConfig reads the per-layer widths back, but its validation reads
the global head count (so it needs `allow_global_per_layer_attribute_access`), and LlamaForCausalLM still builds
every layer at the global widths, so the checkpoint does not load natively yet. The strict xfail below turns
into a failure the day stock Llama modeling builds such a checkpoint: then check its logits and drop the mark."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.integrations.heterogeneity.configuration_utils import AmbiguousGlobalPerLayerAttributeError

from structprune import compose, load_pruned, prune, save_pruned
from structprune.models import tiny_opt
from structprune.surgery import finalize_pruned, prune_layer

from ..helpers import logits

NATIVE = ("num_attention_heads", "num_key_value_heads", "intermediate_size", "attention_bias", "mlp_bias")


def saved_config(path) -> dict:
    return json.loads((path / "config.json").read_text())


def stock_config(path) -> LlamaConfig:
    """The checkpoint's config.json read by the stock LlamaConfig, global widths readable during validation."""
    values = {k: v for k, v in saved_config(path).items() if k not in ("model_type", "auto_map", "architectures")}
    return LlamaConfig(**values, allow_global_per_layer_attribute_access=True)


@pytest.fixture
def flap_checkpoint(tiny, calibration, tmp_path):
    """FLAP at 50 %: per-layer head counts and widths, and the o_proj / down_proj biases of its compensation."""
    prune(tiny, "flap", 0.5, calibration=calibration)
    save_pruned(tiny, None, tmp_path / "flap")
    return tiny, tmp_path / "flap"


def test_flap_checkpoint_writes_every_layer_in_the_native_schema(flap_checkpoint, probe):
    pruned, path = flap_checkpoint
    config = saved_config(path)
    native = config["per_layer_config"]
    assert list(native) == [str(i) for i in range(len(config["layer_shapes"]))]  # every layer differs here
    for index, shape in enumerate(config["layer_shapes"]):
        overrides = native[str(index)]
        assert overrides.get("num_attention_heads", config["num_attention_heads"]) == shape["num_attention_heads"]
        assert overrides.get("num_key_value_heads", config["num_key_value_heads"]) == shape["num_key_value_heads"]
        assert overrides.get("intermediate_size", config["intermediate_size"]) == shape["intermediate_size"]
        assert overrides.get("attention_bias", False) == shape["o_proj_bias"]
        assert overrides.get("mlp_bias", False) == shape["down_proj_bias"]
        assert set(overrides) <= set(NATIVE)
    # transformers reads the same widths back from the file, layer by layer
    stock = stock_config(path)
    assert stock.is_heterogeneous
    for index, shape in enumerate(config["layer_shapes"]):
        assert stock.per_layer_config[index].intermediate_size == shape["intermediate_size"]
        assert stock.per_layer_config[index].num_attention_heads == shape["num_attention_heads"]
    # the project's classes ignore the key for building (they read layer_shapes) and write it back unchanged
    reloaded, _ = load_pruned(path)
    assert torch.equal(logits(reloaded, probe), logits(pruned, probe))
    assert reloaded.config.to_dict()["per_layer_config"] == native
    remote = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    assert torch.equal(logits(remote, probe), logits(pruned, probe))


def test_per_layer_head_counts_need_global_access_in_the_stock_validation(flap_checkpoint):
    with pytest.raises(AmbiguousGlobalPerLayerAttributeError, match="num_attention_heads"):
        LlamaConfig.from_pretrained(flap_checkpoint[1])


@pytest.mark.xfail(strict=True, raises=(AmbiguousGlobalPerLayerAttributeError, RuntimeError),
                   reason="transformers' Llama modeling builds every layer at the global widths")
def test_stock_llama_modeling_builds_the_pruned_checkpoint(flap_checkpoint, probe):
    pruned, path = flap_checkpoint
    native = LlamaForCausalLM.from_pretrained(path, config=stock_config(path))
    assert torch.equal(logits(native, probe), logits(pruned, probe))


def test_empty_sub_layers_are_skipped_and_unchanged_layers_left_out(tiny, probe, tmp_path):
    """Layer 0 loses all its attention, layer 1 all its MLP, layer 2 nothing (no compensation biases)."""
    pruned, groups, channels = tiny, list(range(tiny.config.num_key_value_heads)), list(range(96))
    prune_layer(pruned, 0, [], channels)
    prune_layer(pruned, 1, groups, [])
    save_pruned(finalize_pruned(pruned), None, tmp_path / "empty")
    native = saved_config(tmp_path / "empty")["per_layer_config"]
    assert native == {"0": {"skip": ["self_attn"]}, "1": {"skip": ["mlp"]}}
    assert torch.equal(logits(load_pruned(tmp_path / "empty")[0], probe), logits(pruned, probe))


def test_shapes_the_schema_cannot_hold_leave_it_out(tiny, calibration, tmp_path):
    # narrower value heads: one head_dim serves q, k and v in the stock attention
    narrow = copy.deepcopy(tiny)
    prune(narrow, compose(score="wanda", allocation="uniform", compensation="least_squares",
                          attention_unit="value_channel"), 0.3, calibration=calibration)
    assert any(s["value_head_dim"] != 8 for s in narrow.config.layer_shapes)
    save_pruned(narrow, None, tmp_path / "narrow")
    assert "per_layer_config" not in saved_config(tmp_path / "narrow")
    # a layer that lost all its attention but keeps a compensation bias on o_proj: `skip` would drop the bias
    biased = copy.deepcopy(tiny)
    prune_layer(biased, 0, [], list(range(96)), o_bias=torch.ones(tiny.config.hidden_size))
    save_pruned(finalize_pruned(biased), None, tmp_path / "biased")
    assert "per_layer_config" not in saved_config(tmp_path / "biased")


def test_opt_names_its_own_attributes(calibration, tmp_path):
    model = tiny_opt()
    prune(model, "flap", 0.5, calibration=calibration)
    save_pruned(model, None, tmp_path / "opt")
    config = saved_config(tmp_path / "opt")
    for index, shape in enumerate(config["layer_shapes"]):
        overrides = config["per_layer_config"].get(str(index), {})
        assert overrides.get("ffn_dim", config["ffn_dim"]) == shape["intermediate_size"]
        assert "num_key_value_heads" not in overrides and "enable_bias" not in overrides  # OPT is biased already
