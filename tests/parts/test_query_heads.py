"""Query-head units inside KV groups (GQA/MQA): the same number of query heads leaves every group of a layer.
Against a literal reference (the dense model with the removed heads' o_proj columns zeroed computes the same
function), the score regrouping, identities, parameter counts, checkpoints, plans and streaming."""

import copy

import pytest
import torch

from structprune import apply_plan, compose, load_pruned, prune, save_pruned
from structprune.architectures import AttentionGeometry, count_parameters
from structprune.models import tiny_llama
from structprune.units import ATTENTION_UNITS, query_heads_kept

from ..helpers import logits

HEADS, KV_HEADS, HEAD_DIM = 8, 2, 8  # tiny_llama: hidden 64, 8 query heads of 8 over 2 KV heads (n_rep 4)


@pytest.fixture
def gqa():
    return tiny_llama(num_layers=3, num_heads=HEADS, num_kv_heads=KV_HEADS)


def zero_removed_heads(model, plan):
    """Reference: a removed query head contributes nothing, exactly as if its o_proj columns were zero."""
    masked = copy.deepcopy(model)
    n_rep = HEADS // KV_HEADS
    with torch.no_grad():
        for index, layer in enumerate(masked.model.layers):
            for g, kept in enumerate(plan.kept_heads[index]):
                for r in set(range(n_rep)) - set(kept):
                    head = g * n_rep + r
                    layer.self_attn.o_proj.weight[:, head * HEAD_DIM:(head + 1) * HEAD_DIM] = 0
            removed = sorted(set(range(96)) - set(plan.kept_channels[index]))
            layer.mlp.down_proj.weight[:, removed] = 0
    return masked


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_pruned_heads_compute_the_reference_function(gqa, calibration, probe, ratio):
    pruned = copy.deepcopy(gqa)
    result = prune(pruned, compose(score="wanda", attention_unit="query_head"), ratio, calibration=calibration)
    keep = 4 - int(ratio * 4)
    assert all(len(kept) == keep for layer in result.plan.kept_heads for kept in layer)
    assert all(layer.self_attn.num_key_value_groups == keep for layer in pruned.model.layers)
    assert torch.allclose(logits(pruned, probe), logits(zero_removed_heads(gqa, result.plan), probe), atol=1e-5, rtol=0)
    assert result.params_after == count_parameters(pruned) == result.plan.params_after


def kept_query_heads(columns, groups, n_rep, head_dim, ratio):
    geometry = AttentionGeometry(groups=groups, queries_per_group=n_rep, head_dim=head_dim, value_dim=head_dim,
                                 hidden=64, q_bias=False, v_bias=False)
    return ATTENTION_UNITS["query_head"].choose(columns, geometry, query_heads_kept(n_rep, ratio))


def test_head_scores_are_the_sums_of_their_o_proj_column_scores():
    generator = torch.Generator().manual_seed(3)
    columns = torch.rand(KV_HEADS * 4 * HEAD_DIM, generator=generator, dtype=torch.float64)
    kept = kept_query_heads(columns, KV_HEADS, 4, HEAD_DIM, 0.5)
    for g in range(KV_HEADS):  # literal: each head's columns summed, the two best of the group, sorted
        sums = [sum(columns[(g * 4 + r) * HEAD_DIM + c].item() for c in range(HEAD_DIM)) for r in range(4)]
        assert kept[g] == sorted(sorted(range(4), key=lambda r: -sums[r])[:2])
    assert kept_query_heads(columns, KV_HEADS, 4, HEAD_DIM, 0.99) == [[r] for r in (
        max(range(4), key=lambda r: columns[(g * 4 + r) * HEAD_DIM:(g * 4 + r + 1) * HEAD_DIM].sum().item())
        for g in range(KV_HEADS))]  # at least one head stays in every group


def test_ratio_zero_is_the_identity_and_checkpoints_plans_and_streams_agree(gqa, calibration, probe, tmp_path):
    from structprune import prune_streamed

    dense = copy.deepcopy(gqa)
    composition = compose(score="wifv", allocation="flap", compensation="mean_bias", attention_unit="query_head")
    prune(gqa, composition, 0.0, calibration=calibration)
    assert torch.equal(logits(gqa, probe), logits(dense, probe))
    pruned = copy.deepcopy(dense)
    result = prune(pruned, composition, 0.5, calibration=calibration)
    save_pruned(pruned, None, tmp_path / "heads")
    reloaded, _ = load_pruned(tmp_path / "heads")
    assert torch.equal(logits(reloaded, probe), logits(pruned, probe))
    assert [s["num_attention_heads"] for s in reloaded.config.layer_shapes] == [4, 4, 4]
    rebuilt = apply_plan(copy.deepcopy(dense), type(result.plan).from_json(result.plan.to_json()))
    assert torch.equal(logits(rebuilt, probe), logits(pruned, probe))
    dense.save_pretrained(tmp_path / "dense", safe_serialization=True)
    streamed = prune_streamed(str(tmp_path / "dense"), tmp_path / "streamed", composition, 0.5, calibration=calibration)
    assert streamed.plan.to_dict() == result.plan.to_dict()
    assert torch.equal(logits(load_pruned(tmp_path / "streamed")[0], probe), logits(pruned, probe))


def test_target_params_counts_query_heads(gqa, calibration):
    result = prune(gqa, compose(score="wanda", attention_unit="query_head"), target_params=0.2,
                   calibration=calibration)
    removed = result.params_before - result.params_after
    assert abs(removed - 0.2 * result.params_before) <= 3 * 64  # within one MLP channel (gate, up, down rows of 64)
    assert result.plan.kept_heads is not None


def test_query_heads_need_column_scores(gqa):
    with pytest.raises(ValueError, match="query-head units regroup o_proj column scores"):
        compose(score="taylor", attention_unit="query_head")


def test_the_allocation_chooses_how_many_query_heads_each_layer_keeps(gqa, calibration, probe):
    """Units inside KV groups follow the allocation's per-layer counts where it gives them (the counts allocation's
    `inner`), and the plan's parameter count is the model's."""
    composition = compose(score="wanda", allocation="counts", attention_unit="query_head", inner=[1, 4, 2])
    result = prune(copy.deepcopy(gqa), composition, 0.5, calibration=calibration)
    assert [len(layer[0]) for layer in result.plan.kept_heads] == [1, 4, 2]
    assert all(len(kept) == len(layer[0]) for layer in result.plan.kept_heads for kept in layer)
    assert result.params_after == count_parameters(result.model) == result.plan.params_after
    assert torch.allclose(logits(result.model, probe), logits(zero_removed_heads(gqa, result.plan), probe),
                          atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="inner must list one count per layer"):
        prune(copy.deepcopy(gqa), compose(score="wanda", allocation="counts", attention_unit="query_head",
                                          inner=[1, 2]), 0.5, calibration=calibration)
