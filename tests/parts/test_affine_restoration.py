"""The affine least-squares compensation (kept columns and a bias refitted together): against a float64 literal
solve on explicit activations, its two limits (FLAP's bias, FASP's least squares), and in the pipeline."""

import copy

import pytest
import torch

from structprune import Plan, apply_plan, compose, prune
from structprune.compensate import affine_least_squares, least_squares, mean_bias
from structprune.stats import ChannelStats

from ..helpers import logits


def activations(tokens=400, channels=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, channels, generator=generator, dtype=torch.float64) * 0.5 + 1.0  # non-zero means
    x[:, 3] = x[:, 1] * 0.7 + 0.1 * x[:, 3]  # correlated columns, as real activations are
    weight = torch.randn(6, channels, generator=generator, dtype=torch.float64)
    stats = ChannelStats(channels)
    stats.gram = torch.zeros(channels, channels, dtype=torch.float64)
    for chunk in x.split(97):  # several updates, as a calibration pass makes them
        stats.update(chunk[None])
    return x, weight, stats


def test_undamped_solution_is_least_squares_on_the_kept_columns_and_a_constant():
    x, weight, stats = activations()
    kept = torch.tensor([0, 2, 3, 5, 8, 9, 11])
    result = affine_least_squares(weight.float(), stats, kept, damping=0.0)
    design = torch.cat([x[:, kept], torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, x @ weight.T).solution.T  # [out, |S| + 1], literal
    assert torch.allclose(result.weight, solution[:, :-1], atol=1e-5)
    assert torch.allclose(torch.tensor(result.bias, dtype=torch.float64), solution[:, -1], atol=1e-5)

    def error(v, b):
        return ((x @ weight.T - x[:, kept] @ v.T.to(torch.float64) - b) ** 2).sum().item()

    affine = error(result.weight, torch.tensor(result.bias, dtype=torch.float64))
    plain = least_squares(weight.float(), stats, kept, damping=0.0).weight
    flap = torch.tensor(mean_bias(weight.float(), stats, kept).bias, dtype=torch.float64)
    assert affine <= error(plain, 0.0) and affine <= error(weight[:, kept], flap)  # contains both
    assert affine < 0.99 * min(error(plain, 0.0), error(weight[:, kept], flap))


def test_large_damping_toward_the_kept_weights_gives_flaps_bias():
    _, weight, stats = activations(seed=1)
    kept = torch.tensor([1, 4, 6, 7, 10])
    result = affine_least_squares(weight.float(), stats, kept, damping=1e9, damping_toward="kept")
    assert torch.allclose(result.weight, weight[:, kept], atol=1e-6)
    assert result.bias == pytest.approx(mean_bias(weight.float(), stats, kept).bias, abs=1e-5)
    assert affine_least_squares(weight.float(), stats, torch.arange(12)).weight is None  # nothing removed
    assert affine_least_squares(weight.float(), stats, torch.tensor([], dtype=torch.long)).bias == pytest.approx(
        mean_bias(weight.float(), stats, torch.tensor([], dtype=torch.long)).bias)


@pytest.mark.parametrize("sequential", [False, True])
def test_pipeline_counts_the_bias_replays_the_plan_and_leaves_ratio_zero_alone(tiny, calibration, probe, sequential):
    composition = compose(score="wifv", allocation="uniform" if sequential else "flap",
                          compensation="affine_least_squares", sequential=sequential)
    dense = copy.deepcopy(tiny)
    prune(tiny, composition, 0.0, calibration=calibration)
    assert torch.equal(logits(tiny, probe), logits(dense, probe))
    pruned = copy.deepcopy(dense)
    result = prune(pruned, composition, 0.4, calibration=calibration)
    assert result.plan.restores_weights and result.plan.new_bias_params > 0
    assert result.params_after == result.plan.params_after == sum(p.numel() for p in pruned.parameters())
    rebuilt = apply_plan(copy.deepcopy(dense), Plan.from_json(result.plan.to_json()), calibration)
    assert torch.equal(logits(rebuilt, probe), logits(pruned, probe))
