"""The pruning core on the tiny GQA model: identities, parameter counts, plans, compensation, surgery."""

import copy
import json
import subprocess
import sys

import pytest
import torch

from structprune import Plan, apply_plan, load_pruned, prune, save_pruned
from structprune.architectures import count_parameters, layer_shapes
from structprune.methods import METHODS
from structprune.models import tiny_llama
from structprune.stats import ChannelStats

from ..helpers import logits, zero_removed_units

ALL_METHODS = sorted(METHODS)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_ratio_zero_leaves_logits_bit_identical(method, tiny, calibration, probe):
    pruned = copy.deepcopy(tiny)
    result = prune(pruned, method, 0.0, calibration=calibration)
    assert type(pruned).__name__ == "StructprunedLlamaForCausalLM"  # the full pipeline ran
    assert torch.equal(logits(pruned, probe), logits(tiny, probe))
    assert result.params_after == result.params_before


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_parameter_counts(method, ratio, tiny, calibration):
    pruned = copy.deepcopy(tiny)
    result = prune(pruned, method, ratio, calibration=calibration)
    assert result.params_after == count_parameters(pruned) == result.plan.params_after
    assert result.params_after < result.params_before


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7])
def test_flap_al_am_hits_the_parameter_target_within_one_unit(ratio, calibration):
    model = tiny_llama(num_layers=4, hidden_size=96, num_heads=6, num_kv_heads=3)
    plan = prune(model, "flap", ratio, calibration=calibration).plan
    target = ratio * plan.prunable_params
    largest_unit = max(plan.group_params)
    assert abs(plan.params_removed - target) <= largest_unit


def test_uniform_methods_remove_floor_of_ratio_per_layer(tiny, calibration):
    plan = prune(copy.deepcopy(tiny), "wanda_sp", 0.5, calibration=calibration).plan
    assert [len(g) for g in plan.kept_groups] == [1, 1, 1]  # 2 groups, floor(0.5 * 2) = 1 removed
    assert [len(c) for c in plan.kept_channels] == [48, 48, 48]  # 96 - floor(48)


def test_same_seed_same_plan(tiny, calibration):
    for method in ALL_METHODS:
        a = prune(copy.deepcopy(tiny), method, 0.4, calibration=calibration, seed=3).plan
        b = prune(copy.deepcopy(tiny), method, 0.4, calibration=calibration, seed=3).plan
        assert a.to_json() == b.to_json(), method
    c = prune(copy.deepcopy(tiny), "random", 0.4, seed=4).plan
    assert c.kept_channels != a.kept_channels  # a is the seed-3 random plan


def test_plan_json_round_trip_and_reapply(tiny, calibration, probe, tmp_path):
    pruned = copy.deepcopy(tiny)
    plan = prune(pruned, "flap", 0.5, calibration=calibration).plan
    plan.save(tmp_path / "plan.json")
    again = Plan.load(tmp_path / "plan.json")
    assert again == plan
    fresh = apply_plan(copy.deepcopy(tiny), again)
    assert torch.equal(logits(fresh, probe), logits(pruned, probe))
    assert count_parameters(fresh) == again.params_after


def test_round_to_keeps_channel_counts_multiples(tiny, calibration):
    plan = prune(copy.deepcopy(tiny), "flap", 0.3, calibration=calibration, round_to=8).plan
    assert all(len(c) % 8 == 0 for c in plan.kept_channels)
    plan = prune(copy.deepcopy(tiny), "wanda_sp", 0.3, calibration=calibration, round_to=32).plan
    assert [len(c) for c in plan.kept_channels] == [64, 64, 64]  # 96 - 28 = 68 -> 64


def _constant_unit_model():
    """Tiny LLaMA with biases, in which KV group 0 and MLP channels 0..47 of every layer output a constant:
    their v (gate/up) weight rows are zero, so only the biases reach them."""
    config = copy.deepcopy(tiny_llama(num_layers=2).config)
    config.attention_bias, config.mlp_bias = True, True
    model = type(tiny_llama())(config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 1.0 if "embed" in name else 0.2)
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight[:config.head_dim] = 0  # group 0's values are the constant bias
            layer.mlp.gate_proj.weight[:48] = 0
            layer.mlp.up_proj.weight[:48] = 0
    return model


def test_flap_bias_compensation_is_exact_for_constant_channels(calibration, probe):
    dense = _constant_unit_model()
    pruned = copy.deepcopy(dense)
    plan = prune(pruned, "flap", 0.5, calibration=calibration, metric="IFV", structure="UL-UM").plan
    assert plan.kept_groups == [[1], [1]]  # the constant group goes first (zero variance)
    assert plan.kept_channels == [list(range(48, 96))] * 2
    assert torch.allclose(logits(pruned, probe), logits(dense, probe), atol=1e-5, rtol=0)
    # Without compensation the same cut changes the function.
    uncompensated = copy.deepcopy(dense)
    prune(uncompensated, "flap", 0.5, calibration=calibration, metric="IFV", structure="UL-UM",
          bias_compensation=False)
    assert (logits(uncompensated, probe) - logits(dense, probe)).abs().max() > 1e-2


def test_layer_with_every_group_removed_runs_and_generates(tiny, calibration, probe):
    pruned = copy.deepcopy(tiny)
    plan = prune(pruned, "flap", 0.6, calibration=calibration).plan
    assert 0 in [len(g) for g in plan.kept_groups], "this setting should empty a layer's attention"
    assert torch.isfinite(logits(pruned, probe)).all()
    prompt = probe[:1, :6]
    cached = pruned.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = pruned.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)  # the empty attention keeps the cache length right


def _run(script: str) -> None:
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)


@pytest.mark.slow
def test_save_reload_in_new_process_gives_identical_logits(tiny, calibration, probe, tmp_path):
    pruned = copy.deepcopy(tiny)
    result = prune(pruned, "flap", 0.6, calibration=calibration)
    ckpt = tmp_path / "ckpt"
    save_pruned(pruned, None, ckpt, {"plan": result.plan.to_dict()})
    torch.save(probe, tmp_path / "probe.pt")
    expected = logits(pruned, probe)
    # structprune's loader, no remote code
    _run(f"""
import torch, structprune
model, _ = structprune.load_pruned({str(ckpt)!r})
assert type(model).__module__ == "structprune.pruned_modeling"
with torch.no_grad():
    torch.save(model(torch.load({str(tmp_path / 'probe.pt')!r})).logits, {str(tmp_path / 'local.pt')!r})
""")
    # plain transformers with the checkpoint's own modeling file, structprune made unimportable
    _run(f"""
import sys, torch
sys.modules["structprune"] = None
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(ckpt)!r}, trust_remote_code=True)
assert "transformers_modules" in type(model).__module__, type(model).__module__
with torch.no_grad():
    torch.save(model(torch.load({str(tmp_path / 'probe.pt')!r})).logits, {str(tmp_path / 'remote.pt')!r})
""")
    assert torch.equal(torch.load(tmp_path / "local.pt"), expected)
    assert torch.equal(torch.load(tmp_path / "remote.pt"), expected)
    assert (ckpt / "model.safetensors").is_file()
    assert not list(tmp_path.glob("ckpt.tmp-*"))


def test_save_refuses_to_overwrite_and_load_checks_sidecar(tiny, calibration, tmp_path):
    pruned = copy.deepcopy(tiny)
    prune(pruned, "magnitude", 0.3)
    save_pruned(pruned, None, tmp_path / "ckpt")
    with pytest.raises(FileExistsError, match="exists"):
        save_pruned(pruned, None, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "pruning.json").unlink()
    with pytest.raises(FileNotFoundError, match="pruning.json is missing"):
        load_pruned(tmp_path / "ckpt")


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_ratio_outside_unit_interval_is_refused(ratio, tiny, calibration):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        prune(tiny, "flap", ratio, calibration=calibration)


def test_unknown_method_and_option_are_refused(tiny, calibration):
    with pytest.raises(ValueError, match="unknown method 'sparsegpt'.*flap"):
        prune(tiny, "sparsegpt", 0.2, calibration=calibration)
    with pytest.raises(ValueError, match="unknown option.*structur.*valid options: metric"):
        prune(tiny, "flap", 0.2, calibration=calibration, structur="AL-AM")
    with pytest.raises(ValueError, match="unknown FLAP structure 'XL-AM'"):
        prune(tiny, "flap", 0.2, calibration=calibration, structure="XL-AM")


def test_unsupported_architecture_is_refused(calibration):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=256))
    with pytest.raises(NotImplementedError, match="'gpt2' is not supported.*llama, mistral, opt, qwen2"):
        prune(model, "magnitude", 0.2)


def test_nan_in_statistics_is_refused(tiny, calibration):
    with torch.no_grad():  # finite weights whose activations overflow float32
        tiny.model.layers[1].mlp.up_proj.weight[0] = 3e38
    with pytest.raises(FloatingPointError, match="NaN or Inf.*layer 1"):
        prune(tiny, "flap", 0.2, calibration=calibration)


def test_gqa_unit_parameter_counts_add_up():
    model = tiny_llama(num_layers=2, hidden_size=96, num_heads=6, num_kv_heads=3)
    linear = sum(p.numel() for n, p in model.named_parameters() if "layers" in n and "proj" in n)
    assert sum(s.params for s in layer_shapes(model)) == linear


def test_channel_stats_match_direct_float64():
    torch.manual_seed(0)
    x = torch.randn(5, 7, 11) * 3 + 1
    stats = ChannelStats(11)
    for part in x.split(2):
        stats.update(part)
    flat = x.reshape(-1, 11).double()
    assert torch.allclose(stats.mean, flat.mean(0), atol=1e-12)
    assert torch.allclose(stats.variance, flat.var(0, unbiased=True), atol=1e-12)
    assert torch.allclose(stats.norm, torch.sqrt((flat ** 2).sum(0) / 5), atol=1e-12)


def test_sidecar_records_plan_and_config_records_layer_shapes(tiny, calibration, tmp_path):
    pruned = copy.deepcopy(tiny)
    result = prune(pruned, "flap", 0.5, calibration=calibration)
    save_pruned(pruned, None, tmp_path / "ckpt", {"plan": result.plan.to_dict()})
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert [s["intermediate_size"] for s in config["layer_shapes"]] == [len(c) for c in result.plan.kept_channels]
    assert [s["num_key_value_heads"] for s in config["layer_shapes"]] == [len(g) for g in result.plan.kept_groups]
    assert Plan.from_dict(json.loads((tmp_path / "ckpt" / "pruning.json").read_text())["plan"]) == result.plan


def _tiny_family(family: str):
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    kwargs = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if family == "llama3":  # Llama 3's rope scaling
        kwargs["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    if family == "qwen3":
        kwargs["head_dim"] = 16
    if family == "gemma3":  # one sliding-window and one global layer, head_dim set apart from hidden / heads
        kwargs.update(head_dim=32, sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                      query_pre_attn_scalar=32)
    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM),
                                 "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM),
                                 "llama3": (LlamaConfig, LlamaForCausalLM),
                                 "mistral": (MistralConfig, MistralForCausalLM)}[family]
    torch.manual_seed(0)
    model = model_class(config_class(**kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama3", "mistral", "gemma3"])
def test_other_families_prune_save_and_reload(family, calibration, probe, tmp_path):
    model = _tiny_family(family)
    linear = sum(p.numel() for n, p in model.named_parameters() if "layers" in n and "proj" in n)
    assert sum(s.params for s in layer_shapes(model)) == linear  # Qwen2's q/k/v biases are in the units
    result = prune(model, "flap", 0.5, calibration=calibration, structure="UL-UM")
    assert result.params_after == count_parameters(model) == result.plan.params_after
    expected = {"qwen2": "StructprunedQwen2ForCausalLM", "qwen3": "StructprunedQwen3ForCausalLM",
                "gemma3": "StructprunedGemma3ForCausalLM",
                "llama3": "StructprunedLlamaForCausalLM", "mistral": "StructprunedMistralForCausalLM"}[family]
    assert type(model).__name__ == expected
    save_pruned(model, None, tmp_path / family)
    reloaded, _ = load_pruned(tmp_path / family)
    assert torch.equal(logits(reloaded, probe), logits(model, probe))
    # transformers' per-layer schema holds FLAP's compensation biases only where the config can switch both on
    native = json.loads((tmp_path / family / "config.json").read_text()).get("per_layer_config")
    assert (native is not None) == (family == "llama3")


def test_gram_and_block_hooks(tiny, calibration):
    from structprune.stats import collect_statistics

    blocks = []
    stats = collect_statistics(tiny, calibration, ("mlp.down_proj",), gram=True,
                               on_block=lambda i, inputs, outputs: blocks.append((i, inputs, outputs)))
    # Gram of the down_proj inputs against a direct computation from hooked full forwards
    store = []
    handle = tiny.model.layers[2].mlp.down_proj.register_forward_hook(lambda m, a, o: store.append(a[0]))
    with torch.no_grad():
        tiny(calibration)
    handle.remove()
    x = torch.cat(store).reshape(-1, 96).double()
    assert torch.allclose(stats[2]["mlp.down_proj"].gram, x.T @ x, rtol=1e-5, atol=1e-6)
    # Block hooks see each layer's input and output hidden states; outputs feed the next layer.
    assert [i for i, _, _ in blocks] == [0, 1, 2]
    assert torch.equal(torch.cat(blocks[0][2]), torch.cat(blocks[1][1]))


def test_statistics_cache_reuses_one_shot_passes_and_notices_changed_weights(tiny, calibration):
    from structprune.stats import clear_statistics_cache, collect_statistics

    clear_statistics_cache()
    calls = []
    handle = tiny.model.layers[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    first = collect_statistics(tiny, calibration, ("mlp.down_proj",))
    runs = len(calls)
    again = collect_statistics(tiny, calibration, ("mlp.down_proj",))
    assert len(calls) == runs, "the second identical one-shot pass should come from the cache"
    assert torch.equal(first[1]["mlp.down_proj"].m2, again[1]["mlp.down_proj"].m2)
    again[1]["mlp.down_proj"].m2.zero_()  # callers get copies: the cache is not changed through them
    assert torch.equal(collect_statistics(tiny, calibration, ("mlp.down_proj",))[1]["mlp.down_proj"].m2,
                       first[1]["mlp.down_proj"].m2)
    with torch.no_grad():
        tiny.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    changed = collect_statistics(tiny, calibration, ("mlp.down_proj",))
    handle.remove()
    assert len(calls) > runs, "changed weights must be recomputed"
    assert not torch.equal(changed[0]["mlp.down_proj"].m2, first[0]["mlp.down_proj"].m2)


@pytest.mark.parametrize("method", ["flap", "wanda_sp", "magnitude", "random", "llm_pruner", "fasp", "cfsp", "saap"])
def test_every_method_prunes_opt_and_the_checkpoint_reloads(method, calibration, probe, tmp_path):
    from structprune.models import tiny_opt

    model = tiny_opt()
    dense_logits = logits(model, probe)
    assert torch.equal(logits(prune(copy.deepcopy(model), method, 0.0, calibration=calibration).model, probe),
                       dense_logits)
    result = prune(model, method, 0.3, calibration=calibration)
    assert result.plan.params_after == count_parameters(model) < result.params_before
    save_pruned(model, None, tmp_path / method)
    reloaded, _ = load_pruned(tmp_path / method)
    assert torch.equal(logits(reloaded, probe), logits(model, probe))


def test_pruned_config_carries_the_adapter_layout_and_without_it_the_load_fails(tiny, calibration, tmp_path):
    from structprune.architectures import adapter_for
    from structprune.models import tiny_opt

    for model in (copy.deepcopy(tiny), tiny_opt()):
        adapter = adapter_for(model)
        prune(model, "fasp", 0.3, calibration=calibration)  # value widths: the layout-driven attention forward
        layout = model.config.layout
        assert (layout["layers"], layout["o"], layout["up"], layout["down"]) == (
            adapter.layers, adapter.o, adapter.up, adapter.down)
    save_pruned(model, None, tmp_path / "opt", {})
    config = json.loads((tmp_path / "opt" / "config.json").read_text())
    del config["layout"]
    (tmp_path / "opt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="records no module layout"):
        load_pruned(tmp_path / "opt")


def test_a_pruned_checkpoint_of_an_unknown_family_is_refused_by_name(tiny, calibration, tmp_path):
    model = copy.deepcopy(tiny)
    prune(model, "magnitude", 0.3)
    save_pruned(model, None, tmp_path / "ckpt", {})
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["model_type"] = "structpruned_gpt2"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'structpruned_gpt2' is not a structprune pruned family: supported are"):
        load_pruned(tmp_path / "ckpt")


def test_unaligned_widths_for_a_gpu_are_named_loudly(tiny, calibration):
    from structprune.api import warn_unaligned_widths

    plan = prune(copy.deepcopy(tiny), "wanda_sp", 0.3, calibration=calibration).plan  # 96 - 28 = 68 channels
    with pytest.warns(UserWarning, match=r"3 of 3 layers keep an MLP width that is not a multiple of 8 .* round_to=8"):
        assert warn_unaligned_widths(plan) == [0, 1, 2]
    rounded = prune(copy.deepcopy(tiny), "wanda_sp", 0.3, calibration=calibration, round_to=8).plan
    assert warn_unaligned_widths(rounded) == []


@pytest.mark.parametrize("family", ["qwen3", "gemma3", "llama3"])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_prunes_newer_families_ratio_zero_is_the_identity_and_the_checkpoint_reloads(
        method, family, calibration, probe, tmp_path):
    model = _tiny_family(family)
    dense = copy.deepcopy(model)
    prune(model, method, 0.0, calibration=calibration)
    assert torch.equal(logits(model, probe), logits(dense, probe))
    prune(dense, method, 0.5, calibration=calibration)
    save_pruned(dense, None, tmp_path / family)
    reloaded, _ = load_pruned(tmp_path / family)
    assert torch.equal(logits(reloaded, probe), logits(dense, probe))


@pytest.mark.slow
@pytest.mark.parametrize(("family", "expected"), [("qwen3", "StructprunedQwen3ForCausalLM"),
                                                  ("gemma3", "StructprunedGemma3ForCausalLM"),
                                                  ("llama3", "StructprunedLlamaForCausalLM")])
def test_a_pruned_newer_family_loads_with_remote_code_alone(family, expected, calibration, probe, tmp_path):
    model = _tiny_family(family)
    prune(model, "fasp", 0.4, calibration=calibration)  # narrow values: the remote code's own attention
    save_pruned(model, None, tmp_path / family)
    from safetensors.torch import load_file, save_file

    save_file({"ids": probe}, tmp_path / "probe.safetensors")
    code = (f"from safetensors.torch import load_file, save_file; from transformers import AutoModelForCausalLM; "
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / family)!r}, trust_remote_code=True); "
            f"ids = load_file({str(tmp_path / 'probe.safetensors')!r})['ids']; "
            f"save_file({{'logits': m(ids, use_cache=False).logits.detach()}}, {str(tmp_path / 'out.safetensors')!r}); "
            f"print(type(m).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == expected, out.stderr[-800:]
    assert torch.equal(load_file(tmp_path / "out.safetensors")["logits"], logits(model, probe))


@pytest.mark.parametrize(("family", "head_dim"), [("qwen3", 16), ("gemma3", 32)])
def test_narrow_values_apply_the_query_and_key_norms(family, head_dim, calibration, probe):
    """FASP's value-width attention on Qwen3 and Gemma 3 (sliding-window and global layers, its own attention
    scaling) equals the dense model with the removed value units zeroed."""
    model = _tiny_family(family)
    pruned = copy.deepcopy(model)
    plan = prune(pruned, "fasp", 0.4, calibration=calibration, restore=False).plan
    masked = zero_removed_units(model, plan, head_dim=head_dim, n_rep=2, channels=96)
    assert torch.allclose(logits(pruned, probe), logits(masked, probe), atol=1e-5, rtol=0)
