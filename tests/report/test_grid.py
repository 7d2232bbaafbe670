"""The composition grid of notebook 06: a composition is a record like a paper method (it rebuilds its model
and evaluates in the dtype it names), and the grid's comparisons follow the paired per-window losses."""

import math

import pytest
import torch

from structprune import compose, perplexity, report
from structprune.composition import composition_from
from structprune.experiments import calibration_of, grid_runs, pruning_run, rebuild
from structprune.profiles import profile_settings


@pytest.fixture
def smoke():
    return profile_settings("smoke")  # the tiny random model with SmolLM2's tokenizer


def test_composition_record_rebuilds_its_model_and_evaluates_in_its_dtype(smoke):
    composition = compose("wanda", "global", "affine_least_squares")
    record = pruning_run(smoke, composition, None, target_params=0.02, calibration=calibration_of(smoke, "flap"),
                         also=("c4",), experiment="grid", eval_dtype="bfloat16")
    config = record["config"]
    assert config["method"] == "composed" and config["label"] == composition.label
    assert config["options"] == composition.describe() and config["evaluation"]["dtype"] == "bfloat16"
    assert composition_from(config["options"]).describe() == composition.describe()
    assert 1 - record["metrics"]["params_after"] / record["metrics"]["params_before"] == pytest.approx(0.02, abs=1e-3)

    model, tokenizer = rebuild(record)  # the affine refit is recomputed from the recorded calibration tokens
    assert sum(p.numel() for p in model.parameters()) == record["metrics"]["params_after"]
    for dataset, split, key in (("wikitext2", "test", "perplexity"), ("c4", "validation", "perplexity_c4")):
        again = perplexity(model.to(torch.bfloat16), tokenizer, dataset, split, 128, smoke["eval_max_windows"])
        assert again["perplexity"] == pytest.approx(record["metrics"][key]["perplexity"], rel=1e-6)
    fresh, _ = rebuild(record)  # the cached rebuild hands out copies: the cast above did not reach it
    assert next(fresh.parameters()).dtype == torch.float32
    assert pruning_run(smoke, composition, None, target_params=0.02, calibration=calibration_of(smoke, "flap"),
                       also=("c4",), experiment="grid", eval_dtype="bfloat16")["created"] == record["created"]
    with pytest.raises(ValueError, match="needs calibration"):
        pruning_run(smoke, composition, None, target_params=0.02)


def test_grid_runs_every_cell_of_the_profile_at_every_target(smoke):
    grid = dict(smoke["grid"], scores=["magnitude"], allocations=["uniform", "global"], compensations=["mean_bias"])
    records = grid_runs({**smoke, "grid": grid}, [0.02])
    assert [report.composition_parts(r) for r in records] == [
        {"score": "magnitude", "allocation": a, "compensation": "mean_bias"} for a in ("uniform", "global")]
    assert {r["config"]["target_params"] for r in records} == {0.02}
    assert all(r["config"]["evaluation"]["also"] == ["c4"] for r in records)


def _ppl(nll: list[float], seqlen: int = 128) -> dict:
    mean = sum(nll) / len(nll)
    return {"perplexity": math.exp(mean), "ci95": [math.exp(mean - 0.1), math.exp(mean + 0.1)], "windows": len(nll),
            "window_nll": nll, "seqlen": seqlen}


def _record(label: str, target: float, params: int, parts: dict | None = None, sets: dict | None = None) -> dict:
    config = {"method": "composed" if parts else "flap", "label": label, "target_params": target,
              "evaluation": {"dataset": "wikitext2", "also": ["c4"]}}
    if parts:
        config["options"] = {kind: {"name": name} for kind, name in parts.items()}
    metrics = {"params_after": params, "params_before": 100}
    if sets:
        metrics.update(perplexity=sets["wikitext2"], perplexity_c4=sets["c4"])
    return {"config": config, "metrics": metrics}


def test_grid_comparisons_follow_the_paired_window_losses():
    base = [4.0 + 0.05 * math.sin(i) for i in range(32)]
    shifted = lambda delta, noise=0.0: [x + delta + noise * math.cos(3 * i) for i, x in enumerate(base)]  # noqa: E731
    dense = {"wikitext2": _ppl(shifted(-0.5)), "c4": _ppl(shifted(-0.5))}
    flap = _record("FLAP", 0.2, 80)
    cfsp = _record("CFSP", 0.2, 80)
    papers = [(flap, {"wikitext2": _ppl(shifted(0.0)), "c4": _ppl(shifted(0.0))}),
              (cfsp, {"wikitext2": _ppl(shifted(0.1)), "c4": _ppl(shifted(-0.1))})]
    # lower than both papers on WikiText-2; on C4 lower than FLAP but tied with CFSP (noise around the same mean)
    best = _record("wifv × flap × affine", 0.2, 80, {"score": "wifv", "allocation": "flap", "compensation": "affine"},
                   {"wikitext2": _ppl(shifted(-0.2)), "c4": _ppl(shifted(-0.1, noise=0.3))})
    rows = report.grid_rows([best], papers, dense)
    assert rows.loc[0, "WikiText-2 x dense"] == pytest.approx(math.exp(0.3))
    assert rows.loc[0, "WikiText-2 paired x lowest paper"].startswith(f"{math.exp(-0.2):.2f} x FLAP")
    assert rows.loc[0, "WikiText-2 paired x lowest paper"].endswith("(lower)")
    differences = [0.3 * math.cos(3 * i) for i in range(32)]  # C4: composition - CFSP, the lowest paper there
    mean = sum(differences) / 32
    se = math.sqrt(sum((d - mean) ** 2 for d in differences) / 31 / 32)
    expected = f"{math.exp(mean):.2f} x CFSP [{math.exp(mean - 1.959964 * se):.2f}, {math.exp(mean + 1.959964 * se):.2f}]"
    assert rows.loc[0, "C4 paired x lowest paper"] == f"{expected} (n.d.)"

    against = report.against_papers_rows([best], papers).set_index("paper method")
    assert against.loc["FLAP", "C4: verdict"] == "composition lower"
    assert against.loc["CFSP", "C4: verdict"] == "not distinguishable"
    assert against.loc["CFSP", "WikiText-2: verdict"] == "composition lower"

    status = report.target_status_rows([best], papers, dense, {0.2: 1.35}).iloc[0]
    assert status["WikiText-2 x dense"] == pytest.approx(math.exp(0.3)) and status["goal met"] == "yes"
    assert status["below every paper method on WikiText-2"] == "yes (2 of 2)"
    assert status["below every paper method on C4"] == "no (1 of 2)"
    assert report.target_status_rows([best], papers, dense, {0.2: 1.3}).iloc[0]["goal met"] == "no"


def test_speed_with_a_baseline_times_both_models_in_one_record(smoke):
    from structprune.experiments import speed_run

    dense, pruned = pruning_run(smoke, "dense", 0.0), pruning_run(smoke, "magnitude", 0.2)
    shapes = {"prefill_shapes": [[1, 16]], "decode_batches": [1], "new_tokens": 2}
    record = speed_run(pruned, repeats=1, baseline=dense, **shapes)
    metrics = record["metrics"]
    assert metrics["baseline_speed"]["parameters"] == dense["metrics"]["params_after"]
    assert metrics["speed"]["parameters"] == pruned["metrics"]["params_after"] < dense["metrics"]["params_after"]
    assert record["config"]["baseline"] == dense["config_hash"]
    alone = speed_run(pruned, repeats=1, **shapes)  # without a baseline: another record, the pruned model only
    assert alone["config_hash"] != record["config_hash"] and "baseline_speed" not in alone["metrics"]
