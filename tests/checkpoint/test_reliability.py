"""Reliability: bad input fails with advice, killed runs resume without leftovers, runs are deterministic and
re-runnable from their records, and nothing unpickles a model."""

import copy
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from structprune import load_pruned, prune, save_pruned
from structprune.data import calibration_batches
from structprune.models import load_model, tiny_llama
from structprune.records import atomic_write_text
from structprune.staging import remove_orphans, staging_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkpoint(tiny, calibration, tmp_path):
    prune(tiny, "flap", 0.4, calibration=calibration)
    return save_pruned(tiny, None, tmp_path / "pruned")


def test_checkpoint_whose_config_disagrees_with_its_weights_is_refused(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    config["layer_shapes"][1]["intermediate_size"] += 8  # as if someone edited the widths
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"do not match config.json.*layers\.1\.mlp.*re-run the pruning"):
        load_pruned(checkpoint)


def test_checkpoint_with_a_missing_shard_or_no_weights_is_refused(checkpoint):
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00002.safetensors")
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors.*missing"):
        load_pruned(checkpoint)
    (checkpoint / "model.safetensors.index.json").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_pruned(checkpoint)


def test_checkpoint_with_a_tensor_missing_is_refused(checkpoint):
    from safetensors.torch import load_file, save_file

    weights = load_file(checkpoint / "model.safetensors")
    del weights["model.layers.0.self_attn.q_proj.weight"]
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing tensor model.layers.0.self_attn.q_proj.weight"):
        load_pruned(checkpoint)


def test_pickled_weights_are_never_loaded(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").rename(tmp_path / "model" / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="never unpickles"):
        load_model(str(tmp_path / "model"))


def test_source_never_unpickles_or_trusts_remote_code():
    sources = {p: p.read_text() for p in (REPO / "src" / "structprune").rglob("*.py")}
    for path, text in sources.items():
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert "torch.load(" not in code and "import pickle" not in code, path
        assert not re.search(r"trust_remote_code\s*=\s*True", code.replace("trust_remote_code=True)`", "")), path


def test_nan_in_the_weights_is_refused(tiny, calibration):
    with torch.no_grad():
        tiny.model.layers[1].mlp.up_proj.weight[3, 4] = float("nan")
    for method in ("flap", "magnitude"):
        with pytest.raises(FloatingPointError, match=r"NaN or Inf in the weights of model.layers.1.mlp.up_proj"):
            prune(copy.deepcopy(tiny), method, 0.2, calibration=calibration)


def test_a_model_too_small_for_the_ratio_is_refused(tiny, calibration):
    # 2 KV groups and 96 channels per layer: 0.5 % of them is less than one unit
    with pytest.raises(ValueError, match="removes no unit of this model.*too small for this ratio"):
        prune(tiny, "wanda_sp", 0.005, calibration=calibration)


@pytest.mark.parametrize("content", ["", "\n \n"])
def test_empty_calibration_text_is_refused(content, tmp_path, _embedded):
    folder = tmp_path / "data" / "wikitext2"
    folder.mkdir(parents=True)
    (folder / "wiki.valid.raw").write_text(content)
    with pytest.raises(ValueError, match="too few calibration tokens"):
        calibration_batches(_embedded[1], "wikitext2", 4, 128, data_path=tmp_path / "data")


def test_orphaned_temporaries_of_killed_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    folder = tmp_path / "runs"
    staging = staging_dir(folder)
    orphan_file = staging / f"abc.json.tmp-{dead.pid}-x1"
    orphan_dir = staging / f"model.tmp-{dead.pid}-x2"
    live = staging / f"abc.json.tmp-{os.getpid()}-x3"  # this process, still writing
    orphan_file.write_text("{partial")
    orphan_dir.mkdir()
    live.write_text("{")
    atomic_write_text(folder / "record.json", "{}")
    assert not orphan_file.exists() and not orphan_dir.exists() and live.exists()
    assert json.loads((folder / "record.json").read_text()) == {}
    assert remove_orphans(folder) == []


SWEEP = textwrap.dedent("""
    from structprune.experiments import pruning_run
    from structprune.profiles import profile_settings

    settings = profile_settings("smoke")
    for method in ("magnitude", "random", "flap"):
        pruning_run(settings, method, 0.3)
""")


@pytest.mark.embedded
@pytest.mark.slow
def test_killed_sweep_resumes_keeps_finished_records_and_leaves_nothing_partial(tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, "STRUCTPRUNE_RESULTS": str(results), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    runs = results / "runs" / "sweep"
    process = subprocess.Popen([sys.executable, "-c", SWEEP], env=env, cwd=REPO, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(runs.glob("*.json")):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # as a Ctrl-C'd or OOM-killed `make reproduce`
    process.wait()
    finished = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    assert 1 <= len(finished) < 3, "kill the sweep while it runs"
    for data in finished.values():
        json.loads(data)  # every record on disk is complete
    subprocess.run([sys.executable, "-c", SWEEP], env=env, cwd=REPO, check=True, timeout=600)
    after = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    assert len(after) == 3
    assert all(after[name] == data for name, data in finished.items()), "finished records are kept, not redone"
    assert not [p for p in results.rglob("*") if ".tmp-" in p.name], "no temporaries are left behind"


@pytest.mark.embedded
def test_same_config_twice_gives_the_same_plan_and_metrics_and_a_record_reruns(monkeypatch, _embedded):
    import structprune.experiments as experiments
    from structprune.experiments import pruning_run, recompute_metrics
    from structprune.profiles import profile_settings

    monkeypatch.setattr(experiments, "_dense", lambda spec, device, dtype: _embedded)
    settings = profile_settings("smoke")
    for method in ("flap", "wanda_sp", "llm_pruner"):
        record = pruning_run(settings, method, 0.3)
        again = recompute_metrics(record)  # computed from the record's config alone
        assert json.dumps(again["plan"], sort_keys=True) == json.dumps(record["metrics"]["plan"], sort_keys=True)
        assert again["perplexity"]["perplexity"] == record["metrics"]["perplexity"]["perplexity"], method
        assert again["params_after"] == record["metrics"]["params_after"]
