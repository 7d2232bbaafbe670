"""LLM-Pruner's Taylor importance against a literal float64 computation, and its selection rules."""

import copy

import pytest
import torch
import torch.nn.functional as F

from structprune import prune
from structprune.allocate import default_layer_range
from structprune.data import random_calibration
from structprune.models import tiny_llama
from structprune.scores import group_scores
from structprune.stats import lm_loss_gradients


def _model():
    return tiny_llama(num_layers=3, hidden_size=96, num_heads=6, num_kv_heads=3).double()  # n_rep = 2, d = 16


def _loss(model, ids):
    """Mean next-token cross-entropy, written out (not through HF's `labels`)."""
    logits = model(ids, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def reference_scores(model, ids, importance, index, strided=False):
    """Literal per-parameter sums over each group's members (LLM-Pruner's Taylor terms), float64."""
    layer = model.model.layers[index]
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    linears = [getattr(layer.self_attn, n) if n[0] in "qkvo" else getattr(layer.mlp, n) for n in names]
    W = {n: lin.weight for n, lin in zip(names, linears, strict=True)}
    G = dict(zip(names, torch.autograd.grad(_loss(model, ids), [W[n] for n in names]), strict=True))
    Fis = {n: torch.zeros_like(W[n]) for n in names}
    for sample in ids:
        for n, g in zip(names, torch.autograd.grad(_loss(model, sample[None]), [W[n] for n in names]), strict=True):
            Fis[n] += g ** 2 / ids.shape[0]

    def score(n, rows=None, cols=None):
        w, g, f = W[n].detach(), G[n], Fis[n]
        sl = (rows, slice(None)) if rows is not None else (slice(None), cols)
        s, q = (w * g)[sl], (0.5 * w ** 2 * f)[sl]
        dim = 1 if rows is not None else 0
        if importance == "param_first":
            return s.abs().sum(dim).sum()
        if importance == "vectorize":
            return s.sum(dim).abs().sum()
        return (s - q).abs().sum(dim).sum()

    d, n_rep, groups = 16, 2, 3
    out = []
    for g in range(groups):
        heads = [g + j * groups for j in range(n_rep)] if strided else [g * n_rep + j for j in range(n_rep)]
        q_rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads])
        kv_rows = torch.arange(g * d, (g + 1) * d)
        out.append(score("q_proj", rows=q_rows) + score("o_proj", cols=q_rows)
                   + score("k_proj", rows=kv_rows) + score("v_proj", rows=kv_rows))
    channels = torch.stack([score("gate_proj", rows=[c]) + score("up_proj", rows=[c]) + score("down_proj", cols=[c])
                            for c in range(96)])
    return torch.stack(out), channels


@pytest.mark.parametrize("importance", ["param_first", "param_mix", "vectorize"])
def test_taylor_group_scores_equal_the_literal_float64_sums(importance):
    model = _model()
    ids = random_calibration(256, 4, 20, seed=7)
    grads, fisher = lm_loss_gradients(model, ids, range(3), second_order=importance == "param_mix")
    for index in range(3):
        groups, channels = group_scores(model, index, grads, fisher, importance)
        ref_groups, ref_channels = reference_scores(model, ids, importance, index)
        assert torch.allclose(groups, ref_groups.detach(), rtol=1e-9, atol=1e-12)
        assert torch.allclose(channels, ref_channels.detach(), rtol=1e-9, atol=1e-12)


def test_gqa_groups_are_credited_with_their_own_query_heads():
    model = _model()
    ids = random_calibration(256, 4, 20, seed=7)
    grads, _ = lm_loss_gradients(model, ids, range(3), second_order=False)
    groups, _ = group_scores(model, 1, grads, None, "param_first")
    contiguous, _ = reference_scores(model, ids, "param_first", 1)
    strided, _ = reference_scores(model, ids, "param_first", 1, strided=True)  # the original's GQA aggregation
    assert torch.allclose(groups, contiguous.detach(), rtol=1e-9)
    assert not torch.allclose(groups, strided.detach(), rtol=1e-3)


def test_gradients_only_for_prunable_linears_of_the_range():
    model = tiny_llama(num_layers=4)
    grads, _ = lm_loss_gradients(model, random_calibration(256, 2, 16), range(1, 3), second_order=False)
    layers = model.model.layers
    assert set(grads) == {m for i in (1, 2) for m in [layers[i].self_attn.q_proj, layers[i].self_attn.k_proj,
                                                        layers[i].self_attn.v_proj, layers[i].self_attn.o_proj,
                                                        layers[i].mlp.gate_proj, layers[i].mlp.up_proj,
                                                        layers[i].mlp.down_proj]}
    assert all(p.grad is None and p.requires_grad for p in model.parameters())  # nothing left behind


def test_uniform_per_group_ratio_inside_the_default_range():
    assert default_layer_range(32) == (4, 30) and default_layer_range(30) == (4, 28)
    model = tiny_llama(num_layers=8, hidden_size=96, num_heads=8, num_kv_heads=4)
    dense = copy.deepcopy(model)
    plan = prune(model, "llm_pruner", 0.25, calibration=random_calibration(256, 4, 16)).plan
    start, end = default_layer_range(8)
    for i in range(8):
        inside = start <= i < end
        assert len(plan.kept_groups[i]) == (3 if inside else 4)  # int(4 * 0.75)
        assert len(plan.kept_channels[i]) == (72 if inside else 96)  # int(96 * 0.75)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, dense.model.layers[0].mlp.up_proj.weight)


def test_target_params_asks_for_a_whole_model_fraction():
    model = tiny_llama(num_layers=8, hidden_size=96, num_heads=8, num_kv_heads=4, intermediate_size=384)
    result = prune(model, "llm_pruner", calibration=random_calibration(256, 4, 16), target_params=0.2)
    achieved = 1 - result.params_after / result.params_before
    largest_step = max(result.plan.group_params) * 6  # one more group in each of the 6 pruned layers
    assert abs(achieved - 0.2) * result.params_before <= largest_step
    assert result.plan.extras["per_group_ratio"] > 0.2  # per-group ratio > whole-model fraction


def test_bad_llm_pruner_options_are_refused(tiny, calibration):
    with pytest.raises(ValueError, match="unknown importance 'taylor'"):
        prune(tiny, "llm_pruner", 0.2, calibration=calibration, importance="taylor")
    with pytest.raises(ValueError, match=r"layer range \[2, 9\) is not inside the model's 3 layers"):
        prune(tiny, "llm_pruner", 0.2, calibration=calibration, layer_start=2, layer_end=9)


def test_gradients_accumulated_in_mini_batches_equal_one_pass():
    # A large calibration set is taken in mini-batches (one pass over 512 x 128 tokens would hold 13 GB of
    # logits); the accumulated mean-loss gradient is the one-pass gradient, computed literally in float64.
    model = _model()
    ids = random_calibration(256, 7, 12, seed=3)
    grads, _ = lm_loss_gradients(model, ids, range(3), second_order=False, batch_size=3)  # 3 + 3 + 1 samples
    down = model.model.layers[2].mlp.down_proj
    literal = torch.autograd.grad(_loss(model, ids), [down.weight])[0]
    assert torch.allclose(grads[down], literal, rtol=1e-10, atol=1e-14)
    one_pass, _ = lm_loss_gradients(model, ids, range(3), second_order=False, batch_size=7)
    assert torch.allclose(grads[down], one_pass[down], rtol=1e-10, atol=1e-14)
