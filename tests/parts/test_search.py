"""The allocation search and its `counts` allocation, on a tiny LLaMA."""

import copy

import pytest
import torch

from structprune import compose, prune
from structprune.data import random_calibration
from structprune.models import tiny_llama
from structprune.search import kl_to_dense, search_allocation


@pytest.fixture
def model():
    return tiny_llama(num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=128)


def _search(model, calibration, seed=0, **options):
    held_out = random_calibration(256, nsamples=4, seqlen=24, seed=7)
    composition = compose(score="wifv", allocation="flap", compensation="mean_bias", round_to=4)
    return search_allocation(model, composition, 0.2, calibration, held_out, generations=6, offspring=3,
                             channel_step=8, seed=seed, **options), held_out


def test_search_is_deterministic_keeps_the_parameter_count_and_reproduces(model, calibration):
    first, held_out = _search(model, calibration)
    second, _ = _search(model, calibration)
    assert (first.groups, first.channels, first.history) == (second.groups, second.channels, second.history)
    assert first.evaluations == 1 + 6 * 3
    assert all(a >= b for a, b in zip([first.start_fitness, *first.history], first.history, strict=False))
    assert first.fitness == first.history[-1] <= first.start_fitness
    # Every move trades units of one kind between layers, so the search ends where the start's cut was.
    start = prune(copy.deepcopy(model), compose(score="wifv", allocation="flap", compensation="mean_bias",
                                                round_to=4), target_params=0.2, calibration=calibration)
    assert first.params_removed == start.params_before - start.params_after
    # The result is a plain composition: applying it gives the searched model and its fitness.
    pruned = copy.deepcopy(model)
    applied = prune(pruned, first.composition, 0.2, calibration=calibration)
    assert [len(k) for k in applied.plan.kept_channels] == first.channels
    assert [len(k) for k in applied.plan.kept_groups] == first.groups
    with torch.no_grad():
        dense = torch.log_softmax(model(held_out).logits.float(), -1)
    assert kl_to_dense(pruned, held_out, dense) == pytest.approx(first.fitness, rel=1e-12)


def test_counts_of_the_dense_widths_leave_the_model_unchanged(model, calibration, probe):
    dense = copy.deepcopy(model)
    composition = compose(score="wanda", allocation="counts", compensation="mean_bias", groups=[2] * 4,
                          channels=[128] * 4)
    prune(model, composition, 0.0, calibration=calibration)
    with torch.no_grad():
        assert torch.equal(model(probe).logits, dense(probe).logits)


def test_counts_keep_the_highest_scored_units(model, calibration):
    result = prune(model, compose(score="magnitude", allocation="counts", groups=[2, 1, 0, 2],
                                  channels=[128, 64, 8, 100]), 0.0)
    assert [len(k) for k in result.plan.kept_groups] == [2, 1, 0, 2]
    assert [len(k) for k in result.plan.kept_channels] == [128, 64, 8, 100]


def test_bad_counts_and_searches_fail_clearly(model, calibration):
    with pytest.raises(ValueError, match="one kept count per layer"):
        prune(copy.deepcopy(model), compose(score="magnitude", allocation="counts", channels=[8, 8]), 0.0)
    with pytest.raises(ValueError, match="list of int"):
        compose(score="magnitude", allocation="counts", channels=[8, 8.5, 8, 8])
    held_out = random_calibration(256, nsamples=2, seqlen=16, seed=7)
    with pytest.raises(ValueError, match="one-shot composition"):
        search_allocation(model, compose(score="wanda", sequential=True), 0.2, calibration, held_out)
    with pytest.raises(ValueError, match="generations must be"):
        search_allocation(model, compose(score="wanda"), 0.2, calibration, held_out, generations=-1)


def test_a_searched_composition_keeps_its_unit_pass_and_options(model, calibration):
    """The counts that the search found replace the allocation only: a value-channel composition with its own
    mini-batches stays one, and so does the plan it writes (replayed through `composition_of`); a sequential one
    is refused with the reason, never silently made one-shot."""
    from dataclasses import asdict

    from structprune.apply import composition_of
    from structprune.search import with_counts

    composition = compose(score="wanda", allocation="uniform", compensation="least_squares",
                          attention_unit="value_channel", gradient_batches=3, round_to=4, batch_size=2,
                          damping=0.05)
    searched = with_counts(composition, [2, 2, 1, 2], [96, 64, 64, 96])
    changed = {k for k, v in asdict(searched).items() if asdict(composition)[k] != v}
    assert changed == {"allocation", "allocation_options"}
    assert searched.allocation_options == {"groups": [2, 2, 1, 2], "channels": [96, 64, 64, 96]}
    result = prune(model, searched, 0.0, calibration=calibration)  # the counts decide; the ratio is not read
    replayed = composition_of(result.plan)
    for name in ("sequential", "attention_unit", "gradient_batches", "round_to", "batch_size", "compensation"):
        assert getattr(replayed, name) == getattr(searched, name), name
    assert replayed.compensation_options["damping"] == 0.05
    sequential = compose(score="wanda", allocation="uniform", compensation="least_squares", sequential=True)
    with pytest.raises(ValueError, match="allocation 'counts' needs every layer's scores before any cut"):
        with_counts(sequential, [2, 2, 1, 2], [96, 64, 64, 96])
