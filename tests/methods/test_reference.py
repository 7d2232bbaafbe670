"""The fast path (layer-by-layer statistics, streaming float64 accumulators, slicing surgery, float32
model) against the literal float64 references in tests/reference.py."""

import copy

import pytest
import torch

from structprune import prune
from structprune.models import tiny_llama

from ..helpers import logits
from ..reference import reference_flap, reference_wanda_sp


@pytest.mark.parametrize("structure", ["AL-AM", "UL-UM", "UL-MM", "AL-MM"])
@pytest.mark.parametrize("metric", ["WIFV", "IFV", "WIFN"])
def test_flap_matches_reference(structure, metric, calibration):
    model = tiny_llama(num_layers=4, hidden_size=96, num_heads=6, num_kv_heads=3)  # n_rep = 2: groups aggregate 2 heads
    ratio = 0.4
    ref_groups, ref_channels, ref_o, ref_down = reference_flap(model, calibration, ratio, metric, structure)
    # The float32 model keeps the same units ...
    plan32 = prune(copy.deepcopy(model), "flap", ratio, calibration=calibration, metric=metric,
                   structure=structure).plan
    assert plan32.kept_groups == ref_groups
    assert plan32.kept_channels == ref_channels
    # ... and on a float64 model the fast path's compensation equals the reference's.
    plan = prune(copy.deepcopy(model).double(), "flap", ratio, calibration=calibration, metric=metric,
                 structure=structure).plan
    assert plan.kept_groups == ref_groups
    assert plan.kept_channels == ref_channels
    removed_something = False
    for fast, ref in zip(plan.o_bias + plan.down_bias, ref_o + ref_down, strict=True):
        assert (fast is None) == (ref is None)
        if ref is not None:
            removed_something = True
            assert torch.allclose(torch.tensor(fast, dtype=torch.float64), ref.detach(), atol=1e-6, rtol=0)
    assert removed_something


def test_wanda_sp_matches_sequential_mask_reference(calibration, probe):
    model = tiny_llama(num_layers=4, hidden_size=96, num_heads=6, num_kv_heads=3)
    ratio = 0.5
    ref_groups, ref_channels, masked = reference_wanda_sp(model, calibration, ratio)
    pruned = copy.deepcopy(model)
    plan = prune(pruned, "wanda_sp", ratio, calibration=calibration).plan
    assert plan.kept_groups == ref_groups
    assert plan.kept_channels == ref_channels
    assert all(len(g) == 2 for g in plan.kept_groups)  # floor(0.5 * 3) = 1 of 3 groups removed per layer
    # Sliced float32 model computes what the masked float64 model computes.
    assert torch.allclose(logits(pruned, probe).double(), logits(masked, probe), atol=1e-3, rtol=1e-4)


def test_magnitude_keeps_the_largest_column_norms():
    model = tiny_llama(num_layers=2, hidden_size=96, num_heads=6, num_kv_heads=3)
    layers = [(copy.deepcopy(layer.self_attn.o_proj.weight), copy.deepcopy(layer.mlp.down_proj.weight))
              for layer in model.model.layers]
    plan = prune(model, "magnitude", 0.5).plan
    for (o, down), groups, channels in zip(layers, plan.kept_groups, plan.kept_channels, strict=True):
        norms = down.double().norm(dim=0)
        assert channels == sorted(norms.argsort(descending=True)[:48].tolist())
        group_norms = [o[:, g * 32:(g + 1) * 32].double().norm(dim=0).sum().item() for g in range(3)]
        assert groups == sorted(sorted(range(3), key=lambda g: -group_norms[g])[:2])
