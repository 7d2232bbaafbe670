"""FASP-style: least-squares restoration (normal equations, float64 reference), coupled units (GQA value
channels), exact identities (nothing removed, masked dense), OPT support and checkpoint round trips."""

import copy

import pytest
import torch

from structprune import load_pruned, prune, save_pruned
from structprune.architectures import count_parameters
from structprune.compensate import restore_columns
from structprune.models import tiny_opt
from structprune.speed import greedy_decode

from ..helpers import logits, zero_removed_units


def test_restoration_solves_the_normal_equations_and_is_the_least_squares_fit():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=generator, dtype=torch.float64) @ torch.randn(12, 12, generator=generator,
                                                                                     dtype=torch.float64)
    w = torch.randn(7, 12, generator=generator, dtype=torch.float64)
    kept = torch.tensor([0, 2, 3, 7, 8, 11])
    gram = x.T @ x
    restored = restore_columns(w, gram, kept, damping=0.0)
    # Normal equations: V G[S, S] = W G[:, S]
    assert torch.allclose(restored @ gram[kept][:, kept], w @ gram[:, kept], rtol=1e-10, atol=1e-9)
    # ... which is the least-squares solution of min ||X W^T - X_S V^T||
    reference = torch.linalg.lstsq(x[:, kept], x @ w.T).solution.T
    assert torch.allclose(restored, reference, rtol=1e-8, atol=1e-9)
    # Damped: V (G_SS + lambda I) = W G[:, S] with lambda = damping * mean diag G_SS
    damped = restore_columns(w, gram, kept, damping=0.01)
    g_ss = gram[kept][:, kept]
    lam = 0.01 * g_ss.diagonal().mean()
    assert torch.allclose(damped @ (g_ss + lam * torch.eye(len(kept), dtype=torch.float64)), w @ gram[:, kept],
                          rtol=1e-10, atol=1e-8)
    # Damped toward the kept weights: V (G_SS + lambda I) = W G[:, S] + lambda W[:, S], the minimiser of
    # ||X W^T - X_S V^T||^2 + lambda ||V - W_S||^2; a huge damping leaves the kept weights as they were (no
    # restoration), while the ridge form shrinks them toward zero.
    toward_kept = restore_columns(w, gram, kept, damping=0.01, toward="kept")
    assert torch.allclose(toward_kept @ (g_ss + lam * torch.eye(len(kept), dtype=torch.float64)),
                          w @ gram[:, kept] + lam * w[:, kept], rtol=1e-10, atol=1e-8)
    assert torch.allclose(restore_columns(w, gram, kept, damping=1e9, toward="kept"), w[:, kept], atol=1e-6)
    assert restore_columns(w, gram, kept, damping=1e9).abs().max() < 1e-6
    with pytest.raises(ValueError, match="unknown damping target"):
        restore_columns(w, gram, kept, damping=0.01, toward="dense")
    # float32 solve agrees with float64
    assert torch.allclose(restore_columns(w.float(), gram, kept, 0.01, torch.float32).double(), damped, rtol=1e-3,
                          atol=1e-3)


def _inputs_of(model, module, ids) -> torch.Tensor:
    store = []
    handle = module.register_forward_hook(lambda m, a, o: store.append(a[0].detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return torch.cat(store).reshape(-1, store[0].shape[-1]).double()


@pytest.mark.parametrize("module", ["down_proj", "o_proj"])
def test_restoration_lowers_the_layers_reconstruction_error(tiny, calibration, module):
    """Layer 0 sees the same inputs in the dense and the pruned model, so its output error is the
    restoration's alone: restored kept columns fit the dense output better than the kept columns."""
    dense_layer = tiny.model.layers[0]
    dense_linear = dense_layer.mlp.down_proj if module == "down_proj" else dense_layer.self_attn.o_proj
    x_dense = _inputs_of(tiny, dense_linear, calibration)
    target = x_dense @ dense_linear.weight.double().T
    errors = {}
    for restore in (True, False):
        model = copy.deepcopy(tiny)
        prune(model, "fasp", 0.5, calibration=calibration, restore=restore, attention=module == "o_proj",
              sequential=False)
        layer = model.model.layers[0]
        linear = layer.mlp.down_proj if module == "down_proj" else layer.self_attn.o_proj
        x_kept = _inputs_of(model, linear, calibration)
        errors[restore] = (target - x_kept @ linear.weight.double().T).pow(2).sum().item()
    assert errors[True] < 0.9 * errors[False]


def test_nothing_removed_leaves_the_model_unchanged(tiny, calibration, probe):
    pruned = copy.deepcopy(tiny)
    result = prune(pruned, "fasp", 0.0, calibration=calibration)
    assert torch.equal(logits(pruned, probe), logits(tiny, probe))
    assert result.params_after == result.params_before


def test_unrestored_cut_equals_the_dense_model_with_the_units_zeroed(tiny, calibration, probe):
    """GQA: unit (g, c) is v_proj row (g, c) and the o_proj columns (h, c) of both query heads h of group g."""
    pruned = copy.deepcopy(tiny)
    plan = prune(pruned, "fasp", 0.4, calibration=calibration, restore=False).plan
    d = 16
    masked = zero_removed_units(tiny, plan, head_dim=d, n_rep=2, channels=96)
    assert [len(v) for v in plan.kept_values[0]] == [d - 6, d - 6]  # floor(0.4 * 16) = 6 per group
    assert torch.allclose(logits(pruned, probe), logits(masked, probe), atol=1e-5, rtol=0)
    assert plan.params_after == count_parameters(pruned)


def test_fasp_checkpoint_reloads_and_decodes_with_narrow_values(tiny, calibration, probe, tmp_path):
    pruned = copy.deepcopy(tiny)
    prune(pruned, "fasp", 0.3, calibration=calibration)
    save_pruned(pruned, None, tmp_path / "ckpt")
    reloaded, _ = load_pruned(tmp_path / "ckpt")
    assert type(reloaded.model.layers[0].self_attn).__name__ == "ValueWidthLlamaAttention"
    assert torch.equal(logits(reloaded, probe), logits(pruned, probe))
    tokens, _ = greedy_decode(reloaded, probe[:1, :6], 6)  # KV cache with values narrower than keys
    expected = reloaded.generate(probe[:1, :6], max_new_tokens=7, min_new_tokens=7, do_sample=False, use_cache=False)
    assert torch.equal(tokens, expected[:, 6:])


def test_fasp_on_opt_prunes_fc_and_value_pairs_and_reloads(calibration, probe, tmp_path):
    model = tiny_opt()
    dense = copy.deepcopy(model)
    result = prune(model, "fasp", 0.25, calibration=calibration)
    layer = model.model.decoder.layers[0]
    assert layer.fc1.out_features == layer.fc2.in_features == 96 - 24 and layer.fc1.bias.numel() == 72
    assert layer.self_attn.v_proj.out_features == 4 * 12 and layer.self_attn.out_proj.in_features == 4 * 12
    assert layer.self_attn.q_proj.out_features == layer.self_attn.k_proj.out_features == 64  # Q, K untouched
    assert result.plan.params_after == count_parameters(model) < count_parameters(dense)
    assert torch.isfinite(logits(model, probe)).all()
    save_pruned(model, None, tmp_path / "opt")
    reloaded, _ = load_pruned(tmp_path / "opt")
    assert type(reloaded).__name__ == "StructprunedOPTForCausalLM"
    assert torch.equal(logits(reloaded, probe), logits(model, probe))
    cached = reloaded.generate(probe[:1, :6], max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = reloaded.generate(probe[:1, :6], max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_fasp_bad_options(tiny, calibration):
    with pytest.raises(ValueError, match="solver_dtype"):
        prune(tiny, "fasp", 0.2, calibration=calibration, solver_dtype="float16")
    with pytest.raises(ValueError, match="calibrates on .wikitext2.: pass tokenizer"):
        prune(tiny, "fasp", 0.2)


def test_narrow_values_give_the_same_logits_through_sdpa_and_eager_attention(tiny, calibration, probe):
    """Under SDPA the narrower values are zero-padded to the query width (the fused kernels need equal widths)
    and the output sliced back: the same function as the eager kernel on narrow values."""
    pruned = copy.deepcopy(tiny)
    prune(pruned, "fasp", 0.4, calibration=calibration)
    assert pruned.model.layers[0].self_attn.value_head_dim < 16
    pruned.config._attn_implementation = "sdpa"
    through_sdpa = logits(pruned, probe)
    pruned.config._attn_implementation = "eager"
    assert torch.allclose(through_sdpa, logits(pruned, probe), atol=1e-5, rtol=0)
