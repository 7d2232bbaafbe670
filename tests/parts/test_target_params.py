"""Matched parameter counts: `target_params` removes a fraction of the whole model's parameters, solved by a
search over each method's own ratio, for every method and for compositions."""

import copy

import pytest

from structprune import compose, prune
from structprune.data import random_calibration
from structprune.methods import METHODS
from structprune.models import tiny_llama

MODEL = dict(num_layers=4, hidden_size=96, num_heads=6, num_kv_heads=3, intermediate_size=256)
COMPOSED = {"wifv x cfsp x least_squares": dict(score="wifv", allocation="cfsp", compensation="least_squares", a=1000.0),
            "taylor x global x mean_bias": dict(score="taylor", allocation="global", compensation="mean_bias")}


@pytest.fixture(scope="module")
def model():
    return tiny_llama(**MODEL)


@pytest.mark.parametrize("target", [0.2, 0.4])
@pytest.mark.parametrize("method", sorted(METHODS) + sorted(COMPOSED))
def test_target_params_is_met_within_one_channel_and_tops_up_the_solved_ratio(method, target, model):
    calibration = random_calibration(256, 10, 24, seed=1)
    spec = compose(**COMPOSED[method]) if method in COMPOSED else method
    result = prune(copy.deepcopy(model), spec, calibration=calibration, target_params=target)
    goal = target * result.params_before
    removed = result.params_before - result.params_after
    assert abs(removed - goal) <= max(result.plan.channel_params)  # one unit: the smallest, an MLP channel
    assert result.plan.extras["target_params"] == target
    assert result.plan.extras["achieved_fraction"] == pytest.approx(removed / result.params_before)
    # The method's own rule at the solved ratio stays at or below the goal; the top-up takes the rest as the
    # lowest-scored of that cut's kept channels, spread evenly (one channel apart at most) over the layers.
    alone = prune(copy.deepcopy(model), spec, result.ratio, calibration=calibration)
    assert alone.params_before - alone.params_after <= goal
    top_up = result.plan.extras.get("top_up_channels", [0] * len(alone.plan.kept_channels))
    cut_layers = [i for i, kept in enumerate(alone.plan.kept_channels) if kept]
    assert max(top_up[i] for i in cut_layers) - min(top_up[i] for i in cut_layers) <= 1
    sequential = method in ("wanda_sp", "fasp")  # later layers calibrate on the topped-up earlier ones
    for layer, (ours, theirs) in enumerate(zip(result.plan.kept_channels, alone.plan.kept_channels, strict=True)):
        assert len(theirs) - len(ours) == top_up[layer]
        assert sequential or set(ours) <= set(theirs)
    assert sequential or result.plan.kept_groups == alone.plan.kept_groups


def test_ratio_and_target_are_one_or_the_other(model):
    with pytest.raises(ValueError, match="a pruning ratio or target_params"):
        prune(copy.deepcopy(model), "magnitude", 0.2, target_params=0.2)
    with pytest.raises(ValueError, match="target_params must be a fraction in \\(0, 1\\)"):
        prune(copy.deepcopy(model), "magnitude", target_params=1.5)
    with pytest.raises(ValueError, match="removes at most"):
        prune(copy.deepcopy(model), "cfsp", calibration=random_calibration(256, 4, 16), target_params=0.95)


def test_top_up_spreads_the_shortfall_evenly_and_stops_at_each_layers_last_unit():
    from structprune.targets import top_up_channels

    # 10.4 channels of 100 parameters short over 4 layers: 10 channels, 3 + 3 + 2 + 2 (rounded to nearest)
    assert top_up_channels(1040, [50, 50, 50, 50], [100] * 4, 1) == [3, 3, 2, 2]
    assert top_up_channels(1060, [50, None, 50, 50], [100] * 4, 1) == [4, 0, 4, 3]  # an uncut layer is left alone
    assert top_up_channels(40, [50, 50], [100, 100], 1) == [0, 0]  # less than half a channel: nothing
    # multiples of 8: units of 8 channels; a layer keeps at least one unit, the rest goes to the others
    assert top_up_channels(5 * 8 * 100, [16, 64], [100, 100], 8) == [1, 4]
