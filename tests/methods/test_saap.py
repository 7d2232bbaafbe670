"""SAAP-style: the uncertainty-weighted fusion (never zero where a criterion is positive; closed and learned
forms agree), the fluctuation indicator, the layer choice at LLM-Pruner's parameter count, and group
fine-tuning whose merged model equals the adapter model."""

import copy

import pytest
import torch

from structprune import prune
from structprune.allocate import fluctuation
from structprune.models import tiny_llama
from structprune.recovery import GroupLoRALinear, attach_group_lora, merge_group_lora
from structprune.scores import fit_log_variances, fuse_closed, fuse_learned

from ..helpers import logits


def _scores(seed: int, n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(n, generator=generator, dtype=torch.float64).abs() ** 3 * 1e-3  # heavy-tailed, small
    vector[::10] *= 1e-12  # near-cancelled signed sums: the geometric mean is far below the mean
    element = torch.rand(n, generator=generator, dtype=torch.float64) * 10
    return vector, element


def test_fusion_is_never_zero_where_either_criterion_is_positive():
    vector, element = _scores(0)
    vector[:20] = 0.0  # signed sums that cancel exactly
    element[20:30] = 0.0
    for fused in (fuse_closed(vector, element), fuse_learned(vector, element)):
        positive = (vector > 0) | (element > 0)
        assert (fused[positive] > 0).all()
    # a criterion that is zero over the whole scope: the other one still ranks the units
    assert torch.equal(torch.argsort(fuse_closed(torch.zeros(50, dtype=torch.float64), element[:50])),
                       torch.argsort(element[:50]))
    assert (fuse_closed(torch.zeros(50, dtype=torch.float64), element[50:100]) > 0).all()


def test_closed_and_learned_fusion_agree():
    vector, element = _scores(1)
    s1, s2 = fit_log_variances(vector, element)
    assert torch.exp(s1).item() == pytest.approx(vector.mean().item(), rel=1e-3)  # sigma^2 = mean importance
    assert torch.exp(s2).item() == pytest.approx(element.mean().item(), rel=1e-3)
    closed, learned = fuse_closed(vector, element), fuse_learned(vector, element)
    assert torch.allclose(learned, closed, rtol=2e-3)
    # the same units would be pruned (up to a swap of near-tied ones at the cut)
    keep_closed, keep_learned = (set(torch.argsort(x)[100:].tolist()) for x in (closed, learned))
    assert len(keep_closed ^ keep_learned) <= 2
    # and the fusion is not a plain sum: the criterion with the small scale still counts
    assert not torch.equal(torch.argsort(closed), torch.argsort(vector + element))


def test_fluctuation_is_the_coefficient_of_variation_over_batches():
    means = torch.tensor([[1.0, 4.0, 2.0], [3.0, 4.0, 2.0], [2.0, 4.0, 8.0]], dtype=torch.float64)
    expected = torch.tensor([1.0 / 2.0, 0.0, torch.tensor([2.0, 2.0, 8.0]).std().item() / 4.0], dtype=torch.float64)
    assert torch.allclose(fluctuation(means), expected)
    assert torch.equal(fluctuation(means[:1]), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.5])
def test_layer_choice_meets_llm_pruners_parameter_count_within_one_unit(ratio):
    calibration = torch.randint(0, 256, (10, 24), generator=torch.Generator().manual_seed(5))
    model = tiny_llama(num_layers=8)
    reference = prune(copy.deepcopy(model), "llm_pruner", ratio, calibration=calibration).plan
    plan = prune(model, "saap", ratio, calibration=calibration).plan
    extras = plan.extras
    assert extras["target_params_removed"] == reference.params_removed
    assert abs(plan.params_removed - reference.params_removed) <= max(plan.channel_params)
    # the most fluctuating layers are never pruned; the chosen ones are the least important candidates
    excluded = extras["excluded"]
    fluct = torch.tensor(extras["fluctuation"])
    most_fluctuating = set(torch.sort(fluct, descending=True, stable=True).indices[:excluded].tolist())
    chosen = extras["chosen_layers"]
    assert not most_fluctuating & set(chosen)
    untouched = [i for i in range(8) if len(plan.kept_channels[i]) == 96 and len(plan.kept_groups[i]) == 2]
    assert set(untouched) >= set(range(8)) - set(chosen)
    candidates = sorted(set(range(8)) - most_fluctuating, key=lambda i: (extras["layer_importance"][i], i))
    assert sorted(candidates[:len(chosen)]) == chosen


def test_group_lora_quantises_on_the_grid_and_merges_into_the_zero_points(tiny, probe):
    model = copy.deepcopy(tiny)
    linear = model.model.layers[0].mlp.down_proj
    module = GroupLoRALinear(linear, bits=4, group_size=32, r=4, alpha=8)
    # asymmetric 4-bit min/max quantisation: error at most half a step, 16 levels per group
    error = (module.dequantized() - linear.weight).abs()
    assert (error <= module.scale[:, module.group_of] / 2 + 1e-6).all()
    assert module.q.max() <= 15
    attached = attach_group_lora(model, bits=4, group_size=40, r=4, alpha=8)  # 96 = 40 + 40 + 16: a short group
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in attached.values():
            m.lora_B.normal_(0, 0.05, generator=generator)  # a trained adapter
    unmerged = logits(model, probe)
    assert not torch.allclose(unmerged, logits(tiny, probe), atol=1e-3)
    merge_group_lora(model, attached)
    assert all(type(model.get_submodule(name)) is torch.nn.Linear for name in attached)
    assert torch.allclose(logits(model, probe), unmerged, atol=5e-5, rtol=1e-5)  # float32 rounding of the merge
