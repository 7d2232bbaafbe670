"""CFSP: the coarse allocation (mean keep exactly 1 - r, ordered by block importance), the angular block
distance against a direct float64 computation, the released code's score against its literal formula, the
FFN-only same-footing baselines as options of the shared methods, and IG-LoRA ranks."""

import copy
import math

import pytest
import torch

from structprune import load_pruned, prune, save_pruned
from structprune.allocate import cfsp_keep_ratios, cfsp_kept_count, global_allocation, standardise
from structprune.architectures import count_parameters
from structprune.methods import get_method
from structprune.models import tiny_llama
from structprune.recovery import importance_guided_ranks
from structprune.scores import cfsp_code_score_reference as code_score_reference
from structprune.scores import relative_channel_score as relative_score
from structprune.stats import block_distance

from ..helpers import logits


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.5, 0.8])
@pytest.mark.parametrize("spread", [1e2, 1e4, 1e6])  # small spread: no clipping; large: the clipping rule
def test_keep_ratios_average_exactly_one_minus_r_and_follow_importance(ratio, spread):
    importance = torch.rand(30, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * spread
    keep = cfsp_keep_ratios(importance, ratio)
    assert keep.mean().item() == pytest.approx(1 - ratio, abs=1e-12)
    assert keep.max() < 1  # no block asks for more than all its channels
    order = torch.argsort(importance)
    assert torch.all(keep[order][1:] >= keep[order][:-1])  # more important blocks keep more


def test_keep_ratios_literal_code_formula():
    importance = torch.tensor([1.0e4, 3.0e4, 2.0e4, 9.0e4], dtype=torch.float64)
    ratio = 0.5
    s = torch.sigmoid((importance - importance.mean()) / 1e4)
    mean = s.mean()
    assert s.max() / mean * (1 - ratio) >= 1  # this example needs the clipping branch
    k = mean * (1 / (1 - ratio) - 1) / (s.max() - mean) / 1.05
    expected = (mean + (s - mean) * k) / mean * (1 - ratio)
    assert torch.allclose(cfsp_keep_ratios(importance, ratio), expected, rtol=0, atol=1e-15)
    assert torch.equal(cfsp_keep_ratios(importance, 0.0), torch.ones(4, dtype=torch.float64))


def test_kept_counts_follow_the_code():
    assert cfsp_kept_count(1536, 0.7) == int(1536 * 0.7) + 1
    assert cfsp_kept_count(1536, 1.0) == 1536
    assert cfsp_kept_count(1536, 0.7, 128) == 1024  # 1075.2 -> nearest multiple of 128
    assert cfsp_kept_count(1536, 0.72, 128) == 1152  # 1105.9
    assert cfsp_kept_count(1536, 0.01, 128) == 128  # at least one multiple
    assert cfsp_kept_count(100, 0.999) == 100


def test_angular_distance_against_direct_float64():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 16, generator=generator)
    y = x + 0.7 * torch.randn(2, 5, 16, generator=generator)
    y[0, 0] = -x[0, 0]  # opposite: distance 1
    y[0, 1] = 3 * x[0, 1]  # same direction: distance 0
    x[1, 4] = 0  # undefined cosine: 0.5, as the code's nan_to_num
    got = block_distance(x, y)
    for b in range(2):
        for t in range(5):
            u, v = x[b, t].double().tolist(), y[b, t].double().tolist()
            nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(a * a for a in v))
            expected = 0.5 if nu == 0 or nv == 0 else math.acos(
                max(-1.0, min(1.0, sum(a * c for a, c in zip(u, v, strict=True)) / (nu * nv)))) / math.pi
            assert got[b, t].item() == pytest.approx(expected, abs=1e-7)
    assert got[0, 0].item() == pytest.approx(1.0) and got[0, 1].item() == pytest.approx(0.0, abs=1e-7)


def test_block_importance_is_the_sum_of_angular_distances_of_each_layer(calibration):
    model = tiny_llama(num_layers=3)
    hidden = []
    handles = [layer.register_forward_hook(lambda m, a, o: hidden.append((a[0], o[0] if isinstance(o, tuple) else o)))
               for layer in model.model.layers]
    with torch.no_grad():
        model(calibration, use_cache=False)
    for handle in handles:
        handle.remove()
    direct = []
    for inp, out in hidden:  # the block's input vs output, token by token, float64
        cos = torch.nn.functional.cosine_similarity(inp.double(), out.double(), dim=-1, eps=0)
        direct.append((torch.arccos(cos.clamp(-1, 1)) / torch.pi).sum().item())
    plan = prune(model, "cfsp", 0.3, calibration=calibration).plan
    assert plan.extras["block_importance"] == pytest.approx(direct, rel=1e-6)
    assert plan.extras["calibration_tokens"] == calibration.numel()
    keep = plan.extras["keep_ratios"]
    assert sum(keep) / len(keep) == pytest.approx(0.7, abs=1e-12)
    assert [len(c) for c in plan.kept_channels] == [cfsp_kept_count(96, k) for k in keep]
    assert all(len(g) == 2 for g in plan.kept_groups)  # attention untouched


def test_code_score_reduces_to_the_activation_norm():
    generator = torch.Generator().manual_seed(2)
    down, up, gate = (torch.randn(*shape, generator=generator) for shape in ((64, 96), (96, 64), (96, 64)))
    activation = torch.rand(96, generator=generator, dtype=torch.float64)
    literal = code_score_reference(down, up, gate, activation)
    assert torch.allclose(literal, 3 / 64 * activation, rtol=1e-12, atol=0)
    assert torch.equal(torch.argsort(literal), torch.argsort(activation))
    # The paper-intent variant does depend on the weights
    relative = relative_score(down, up, gate, activation)
    assert (relative > 0).all() and not torch.equal(torch.argsort(relative), torch.argsort(activation))


def test_cfsp_keeps_channels_by_activation_norm_and_reloads(calibration, probe, tmp_path):
    from structprune.stats import collect_statistics

    model = tiny_llama(num_layers=3)
    stats = collect_statistics(model, calibration, ("mlp.down_proj",))
    norms = [s["mlp.down_proj"].sumsq.sqrt() for s in stats]
    result = prune(model, "cfsp", 0.4, calibration=calibration)
    for kept, norm in zip(result.plan.kept_channels, norms, strict=True):
        assert kept == sorted(torch.argsort(norm, descending=True)[:len(kept)].tolist())
    assert result.label == "CFSP" and result.params_after == count_parameters(model)
    save_pruned(model, None, tmp_path / "cfsp")
    reloaded, _ = load_pruned(tmp_path / "cfsp")
    assert torch.equal(logits(reloaded, probe), logits(model, probe))


def test_cfsp_round_to_and_relative_variant(calibration):
    plan = prune(tiny_llama(num_layers=3, intermediate_size=256), "cfsp", 0.5, calibration=calibration,
                 round_to=64).plan
    assert all(len(c) % 64 == 0 and len(c) > 0 for c in plan.kept_channels)
    variant = prune(tiny_llama(num_layers=3), "cfsp", 0.5, calibration=calibration, fine_metric="relative")
    assert variant.label == "CFSP-style (relative score)"
    with pytest.raises(ValueError, match="fine_metric"):
        prune(tiny_llama(), "cfsp", 0.5, calibration=calibration, fine_metric="wanda")


def test_global_allocation_keeps_the_top_standardised_scores():
    generator = torch.Generator().manual_seed(3)
    scores = [torch.rand(40, generator=generator) * scale for scale in (1.0, 10.0, 100.0)]
    kept = global_allocation(scores, 0.3)
    assert sum(map(len, kept)) == 120 - math.floor(0.3 * 120)
    z = [standardise(s) for s in scores]
    threshold = min(z[i][k].min() for i, k in enumerate(kept))
    for i, k in enumerate(kept):  # everything removed scores at most the weakest kept unit
        removed = sorted(set(range(40)) - set(k))
        assert (z[i][removed] <= threshold).all()
    assert len({len(k) for k in kept}) > 1  # per-layer counts differ: the threshold is global


def test_ffn_only_baselines_are_options_of_the_shared_methods(tiny, calibration):
    shapes = 3 * 96
    for method, options, label in [("magnitude", {"attention": False}, "Magnitude-sp (FFN)"),
                                   ("wanda_sp", {"attention": False, "allocation": "global"}, "Wanda-sp (FFN, global)"),
                                   ("flap", {"attention": False}, "FLAP (FFN)")]:
        result = prune(copy.deepcopy(tiny), method, 0.25, calibration=calibration, **options)
        plan = result.plan
        assert result.label == label == get_method(method).label_for(plan.options)
        assert all(len(g) == 2 for g in plan.kept_groups), method  # attention untouched
        assert sum(map(len, plan.kept_channels)) == shapes - math.floor(0.25 * shapes), method
        if method == "flap":
            assert all(b is None for b in plan.o_bias) and any(b is not None for b in plan.down_bias)
    # Wanda-sp global: the one-shot dense scores, z-scored per layer, one threshold
    from structprune.scores import wanda_column as wanda_column_score
    from structprune.stats import collect_statistics

    stats = collect_statistics(tiny, calibration, ("mlp.down_proj",))
    scores = [wanda_column_score(tiny.model.layers[i].mlp.down_proj.weight, s["mlp.down_proj"])
              for i, s in enumerate(stats)]
    plan = prune(copy.deepcopy(tiny), "wanda_sp", 0.25, calibration=calibration, attention=False,
                 allocation="global").plan
    assert plan.kept_channels == global_allocation(scores, 0.25)


@pytest.mark.parametrize("direction", ["uniform", "importance", "pruned"])
def test_importance_guided_ranks_keep_the_uniform_budget(direction):
    model = tiny_llama(num_layers=4)
    keep = [0.9, 0.5, 0.7, 0.6]
    pattern = importance_guided_ranks(model, keep, rank=8, direction=direction)
    assert len(pattern) == 4 * 7  # q, k, v, o, gate, up, down of every block
    ranks = [pattern[f"model.layers.{i}.mlp.down_proj"] for i in range(4)]
    assert all(pattern[f"model.layers.{i}.self_attn.q_proj"] == ranks[i] for i in range(4))
    assert abs(sum(ranks) - 8 * 4) <= 2  # rounding only
    if direction == "uniform":
        assert ranks == [8, 8, 8, 8]
    elif direction == "importance":
        assert ranks[0] == max(ranks) and ranks[1] == min(ranks)
    else:
        assert ranks[1] == max(ranks) and ranks[0] == min(ranks)
