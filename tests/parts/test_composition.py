"""Compositions of parts: a method no paper has prunes, saves and reloads; plans rebuild their models
(least-squares restorations replayed); bad compositions fail at once with the valid choices."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from structprune import Plan, apply_plan, compose, load_pruned, prune, save_pruned
from structprune.allocate import ALLOCATIONS
from structprune.architectures import count_parameters
from structprune.compensate import COMPENSATIONS
from structprune.methods import METHODS
from structprune.scores import SCORES

from ..helpers import logits


def test_a_composition_no_paper_has_prunes_saves_and_reloads(tiny, calibration, probe, tmp_path):
    # a sharper sigmoid than CFSP's default: the tiny model's few tokens give small block importances
    composition = compose(score="wifv", allocation="cfsp", compensation="least_squares", a=1000.0)
    pruned = copy.deepcopy(tiny)
    result = prune(pruned, composition, 0.4, calibration=calibration)
    assert result.method == "composed" and result.label == "wifv × cfsp × least_squares"
    assert result.options["score"] == {"name": "wifv"}
    assert result.options["compensation"] == {"name": "least_squares", "damping": 0.01, "solver_dtype": "float64",
                                              "damping_toward": "zero"}
    assert result.params_after == count_parameters(pruned) < result.params_before
    # CFSP's allocation gives each block its own width; the restoration changed the kept down_proj columns
    widths = [layer.mlp.down_proj.in_features for layer in pruned.model.layers]
    assert len(set(widths)) > 1
    kept = result.plan.kept_channels[0]
    assert not torch.equal(pruned.model.layers[0].mlp.down_proj.weight, tiny.model.layers[0].mlp.down_proj.weight[:, kept])
    save_pruned(pruned, None, tmp_path / "ckpt", {"plan": result.plan.to_dict()})
    reloaded, _ = load_pruned(tmp_path / "ckpt")
    assert torch.equal(logits(reloaded, probe), logits(pruned, probe))


@pytest.mark.parametrize("parts", [
    {"score": "wanda", "allocation": "flap", "compensation": "least_squares"},
    {"score": "taylor", "allocation": "global", "compensation": "mean_bias"},
    {"score": "activation", "allocation": "uniform", "compensation": "least_squares", "sequential": True},
])
def test_plans_of_compositions_rebuild_their_model(parts, tiny, calibration, probe):
    pruned = copy.deepcopy(tiny)
    plan = prune(pruned, compose(**parts), 0.3, calibration=calibration).plan
    again = Plan.from_json(plan.to_json())
    rebuilt = apply_plan(copy.deepcopy(tiny), again, calibration if again.restores_weights else None)
    assert torch.equal(logits(rebuilt, probe), logits(pruned, probe))
    assert count_parameters(rebuilt) == plan.params_after


def test_fasp_plan_rebuilds_its_model_and_needs_its_calibration(tiny, calibration, probe):
    pruned = copy.deepcopy(tiny)
    plan = prune(pruned, "fasp", 0.3, calibration=calibration).plan
    assert plan.restores_weights
    with pytest.raises(ValueError, match="pass calibration="):
        apply_plan(copy.deepcopy(tiny), plan)
    rebuilt = apply_plan(copy.deepcopy(tiny), Plan.from_json(plan.to_json()), calibration)
    assert torch.equal(logits(rebuilt, probe), logits(pruned, probe))
    assert count_parameters(rebuilt) == plan.params_after


def test_fasp_plans_recorded_before_parts_still_replay_their_restoration():
    record = json.loads(next((Path(__file__).parents[2] / "results" / "runs" / "sweep").glob("9645f872ec9fcdb2.json"))
                        .read_text())
    plan = Plan.from_dict(record["metrics"]["plan"])
    assert plan.restores_weights == record["config"]["options"]["restore"]
    assert plan.parts["sequential"] == record["config"]["options"]["sequential"]


def test_ratio_zero_of_a_composition_is_the_identity(tiny, calibration, probe):
    pruned = copy.deepcopy(tiny)
    prune(pruned, compose(score="wifv", allocation="cfsp", compensation="least_squares"), 0.0, calibration=calibration)
    assert torch.equal(logits(pruned, probe), logits(tiny, probe))


@pytest.mark.parametrize(("parts", "message"), [
    ({"score": "wanda2"}, "unknown score 'wanda2': choose one of magnitude, wanda"),
    ({"allocation": "best"}, "unknown allocation 'best': choose one of uniform, flap"),
    ({"compensation": "magic"}, "unknown compensation 'magic': choose one of none, mean_bias, least_squares"),
    ({"score": "wifv", "damping": 0.1}, "unknown option 'damping' .* valid options: .*round_to"),
    ({"allocation": "flap", "sequential": True}, "cannot run sequentially: .* layer-wise allocation \\(uniform\\)"),
    ({"score": "taylor", "sequential": True}, "need LM-loss gradients, .* use sequential=False"),
    ({"score": "taylor", "attention_unit": "value_channel"}, "value-channel units regroup o_proj column scores"),
    ({"round_to": 0}, "option round_to of the composition must be at least 1, got 0"),
    ({"score": "wifv", "compensation": "least_squares", "damping": "x"}, "option damping .* must be a number, got 'x'"),
    ({"sequential": "yes"}, "option sequential of the composition must be true or false, got 'yes'"),
    ({"allocation": "cfsp", "block_metric": "euclid"}, "unknown block_metric 'euclid'"),
])
def test_bad_compositions_fail_at_once_with_the_valid_choices(parts, message):
    with pytest.raises(ValueError, match=message):
        compose(**parts)


def test_data_free_composition_needs_no_calibration_and_a_data_score_says_so(tiny):
    prune(copy.deepcopy(tiny), compose(score="magnitude", allocation="global"), 0.3)
    with pytest.raises(ValueError, match="calibrates on 'wikitext2': pass tokenizer="):
        prune(copy.deepcopy(tiny), compose(score="wifv"), 0.3)


def test_every_method_is_a_composition_of_registered_parts():
    for method in METHODS.values():
        parts = method.composition(**method.defaults)
        assert parts.score in SCORES and parts.allocation in ALLOCATIONS and parts.compensation in COMPENSATIONS


def test_llm_pruner_seed_default_applies_unless_a_seed_is_given(tiny, calibration):
    def plan(**kwargs):
        return prune(copy.deepcopy(tiny), "llm_pruner", 0.4, calibration=calibration, importance="random",
                     layer_start=0, **kwargs).plan

    default = plan()
    assert default.options["seed"] == 42
    assert default.kept_channels == plan(seed=42).kept_channels
    assert default.kept_channels != plan(seed=0).kept_channels


def test_speed_is_always_the_submodule():
    code = ("import inspect, structprune; from structprune import evaluate; assert inspect.ismodule(structprune.speed); "
            "import structprune.speed; assert inspect.ismodule(structprune.speed); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_the_cli_composes_parts_and_records_them(tmp_path, capsys):
    from structprune import cli
    from structprune.models import tiny_llama

    tiny_llama().save_pretrained(tmp_path / "dense", safe_serialization=True)
    code = cli.main(["prune", "--model", str(tmp_path / "dense"), "--score", "magnitude", "--allocation", "global",
                     "--option", "round_to=8", "--ratio", "0.3", "--output", str(tmp_path / "out")])
    assert code == 0
    record = json.loads(next((tmp_path / "results" / "runs" / "prune").glob("*.json")).read_text())
    assert record["config"]["method"] == "composed"
    assert record["config"]["options"]["allocation"] == {"name": "global"}
    assert record["config"]["options"]["round_to"] == 8
    model, _ = load_pruned(tmp_path / "out")
    assert all(layer.mlp.down_proj.in_features % 8 == 0 for layer in model.model.layers)
    assert cli.main(["prune", "--model", str(tmp_path / "dense"), "--method", "flap", "--score", "wanda", "--ratio",
                     "0.3", "--output", str(tmp_path / "x")]) == 2
    assert "drop --score" in capsys.readouterr().err
