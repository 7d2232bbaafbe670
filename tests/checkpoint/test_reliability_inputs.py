"""Damaged checkpoints, destructive overwrites, unchecked options and late failures: each refused early,
with a message that says what to do, and nothing of the user's lost."""

import copy
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from structprune import cli, compose, load_pruned, prune, save_pruned
from structprune.checkpoint import check_output
from structprune.models import load_model, tiny_llama
from structprune.staging import staging_dir


@pytest.fixture
def dense_dir(tmp_path):
    """A dense tiny LLaMA saved as a Hugging Face folder (safetensors)."""
    path = tmp_path / "dense"
    tiny_llama().save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture
def flap_checkpoint(tiny, calibration, tmp_path):
    prune(tiny, "flap", 0.4, calibration=calibration)
    return save_pruned(tiny, None, tmp_path / "pruned", {"plan": "x"})


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse refusals
        code = exit_.code
    return code, capsys.readouterr().err


def _drop_tensor(folder: Path, name: str) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    del weights[name]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def test_a_dense_folder_with_a_missing_tensor_is_refused_on_every_loading_path(dense_dir, capsys, tmp_path):
    _drop_tensor(dense_dir, "model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ValueError, match=r"missing keys: model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(str(dense_dir))
    code, err = run_cli(capsys, "prune", "--model", dense_dir, "--method", "magnitude", "--ratio", 0.3,
                        "--output", tmp_path / "out")
    assert code == 2 and "model.layers.1.mlp.up_proj.weight" in err and not (tmp_path / "out").exists()


def test_a_pruned_checkpoint_with_an_unexpected_tensor_is_refused(flap_checkpoint):
    config = json.loads((flap_checkpoint / "config.json").read_text())
    assert config["layer_shapes"][0]["down_proj_bias"]  # FLAP's compensation bias
    config["layer_shapes"][0]["down_proj_bias"] = False
    (flap_checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unexpected tensor model\.layers\.0\.mlp\.down_proj\.bias"):
        load_pruned(flap_checkpoint)


def test_an_index_that_points_at_a_pickle_is_refused(dense_dir):
    weights = dense_dir / "model.safetensors"
    torch.save({"x": torch.zeros(1)}, dense_dir / "pytorch_model.bin")  # benign pickle
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "pytorch_model.bin"}}
    (dense_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    weights.unlink()
    with pytest.raises(ValueError, match="points at pytorch_model.bin: structprune reads weights only from safetensors"):
        load_model(str(dense_dir))
    (dense_dir / "model.safetensors.index.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no safetensors weights \(only pytorch_model.bin\)"):
        load_model(str(dense_dir))


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_a_truncated_or_empty_weight_file_gets_a_clear_error(dense_dir, damage, capsys):
    weights = dense_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    code, err = run_cli(capsys, "evaluate", "--model", dense_dir, "--speed")
    assert code == 2 and "model.safetensors is" in err and ("truncated" in err or "empty" in err)
    assert "Traceback" not in err


def test_overwrite_never_deletes_a_folder_that_is_not_a_checkpoint(tiny, tmp_path, capsys):
    thesis = tmp_path / "mine" / "thesis.tex"
    thesis.parent.mkdir()
    thesis.write_text("years of work")
    prune(tiny, "magnitude", 0.3)
    with pytest.raises(FileExistsError, match="not a structprune checkpoint.*only replaces a pruned checkpoint"):
        save_pruned(tiny, None, thesis.parent, overwrite=True)
    with pytest.raises(FileExistsError, match="not a structprune checkpoint"):
        save_pruned(tiny, None, thesis, overwrite=True)  # a regular file
    assert thesis.read_text() == "years of work"


def test_an_interrupted_overwrite_is_restored_or_cleaned_by_the_next_run(flap_checkpoint, tiny, recwarn):
    dead = 2**22 + 12345  # no such process
    stranded = staging_dir(flap_checkpoint.parent) / f"{flap_checkpoint.name}.old-{dead}"
    os.replace(flap_checkpoint, stranded)  # as if killed between the two renames
    check_output(flap_checkpoint, overwrite=False)  # without --overwrite a backup is left alone, and said
    assert stranded.is_dir() and any("--overwrite to restore" in str(w.message) for w in recwarn.list)
    check_output(flap_checkpoint, overwrite=True)
    assert flap_checkpoint.is_dir() and not stranded.exists()
    assert any("restored" in str(w.message) for w in recwarn.list)
    load_pruned(flap_checkpoint)  # the old checkpoint, intact
    shutil.copytree(flap_checkpoint, staging_dir(flap_checkpoint.parent) / stranded.name)
    check_output(flap_checkpoint, overwrite=True)  # a complete checkpoint is there: the backup is superseded
    assert not stranded.exists() and flap_checkpoint.is_dir()


@pytest.mark.parametrize(("option", "message"), [
    ("attention=no", "option attention of method 'flap' must be true or false, got 'no'"),
    ("attention=0", "option attention of method 'flap' must be true or false, got 0"),
    ("bias_compensation=no", "option bias_compensation of method 'flap' must be true or false"),
    ("round_to=1.5", "option round_to of method 'flap' must be a whole number, got 1.5"),
    ("round_to=0", "option round_to of method 'flap' must be at least 1, got 0"),
])
def test_option_values_are_checked_against_their_types(option, message, dense_dir, tmp_path, capsys):
    code, err = run_cli(capsys, "prune", "--model", dense_dir, "--method", "flap", "--ratio", 0.3,
                        "--option", option, "--output", tmp_path / "out")
    assert code == 2 and message in err


def test_zero_samples_or_tokens_are_refused_not_read_as_the_paper_default(tiny, capsys, tmp_path, dense_dir):
    code, err = run_cli(capsys, "prune", "--model", dense_dir, "--method", "flap", "--ratio", 0.3, "--nsamples", 0,
                        "--output", tmp_path / "out")
    assert code == 2 and "--nsamples: must be at least 1, got 0" in err
    with pytest.raises(ValueError, match="at least 1 sample of at least 2 tokens, got nsamples=0"):
        prune(copy.deepcopy(tiny), "flap", 0.3, calibration="wikitext2", tokenizer=object(), nsamples=0)
    with pytest.raises(ValueError, match="calibration seqlen 4096 is longer than the model's context"):
        prune(copy.deepcopy(tiny), "flap", 0.3, calibration="wikitext2", tokenizer=object(), seqlen=4096)


def test_output_problems_are_found_before_any_work(dense_dir, tmp_path, capsys, monkeypatch):
    import structprune.models

    monkeypatch.setattr(structprune.models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    existing = tmp_path / "existing"
    existing.mkdir()
    code, err = run_cli(capsys, "prune", "--model", dense_dir, "--method", "magnitude", "--ratio", 0.3,
                        "--output", existing)
    assert code == 2 and "pass --overwrite" in err
    code, err = run_cli(capsys, "prune", "--model", dense_dir, "--method", "magnitude", "--ratio", 0.3,
                        "--output", "/proc/structprune-out")
    assert code == 2 and "cannot write /proc/structprune-out" in err and "choose another --output" in err


def test_evaluate_refuses_nan_weights_and_writes_no_record(tmp_path, capsys):
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan", safe_serialization=True)
    code, err = run_cli(capsys, "evaluate", "--model", tmp_path / "nan", "--speed", "--output", tmp_path / "r.json")
    assert code == 2 and "NaN or Inf in the weights" in err and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--seqlen", "0"], "--seqlen: must be at least 1, got 0"),
    (["--max-windows", "0"], "--max-windows: must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["--dtype", "float99"], "unknown dtype 'float99': choose one of float32, float16, bfloat16, float64"),
    (["--device", "cuda"], "needs a CUDA GPU, and torch sees none here: use --device cpu"),
])
def test_plain_bad_evaluate_input_gets_one_line_and_exit_2(argv, message, capsys, dense_dir):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    code, err = run_cli(capsys, "evaluate", "--model", dense_dir, "--perplexity", "wikitext2", *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_data_file_that_is_not_utf8_is_named(tmp_path, monkeypatch):
    from structprune.data import DATA_ENV, LOCAL_FILES, evaluation_text

    path = tmp_path / LOCAL_FILES[("wikitext2", "test")]
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe not text \x80")
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(ValueError, match=f"{path.name} is not UTF-8 text"):
        evaluation_text("wikitext2", "test")


def test_zero_shot_without_local_task_data_offline_says_what_to_do(tmp_path, monkeypatch):
    from structprune.data import DATA_ENV
    from structprune.evaluate import zero_shot

    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no local zero-shot task data .* set STRUCTPRUNE_DATA"):
        zero_shot(tiny_llama(), None, ["boolq"], limit=1)


def test_a_checkpoint_and_its_record_are_written_together(dense_dir, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "results" / "runs" / "prune"
    for name in ("a", "b"):  # the same config to two folders: two records
        code, _ = run_cli(capsys, "prune", "--model", dense_dir, "--method", "magnitude", "--ratio", 0.3,
                          "--output", tmp_path / name)
        assert code == 0
    records = [json.loads(p.read_text()) for p in runs.glob("*.json")]
    assert sorted(Path(r["config"]["output"]).name for r in records) == ["a", "b"]

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "write_record", disk_full, raising=False)
    import structprune.records

    monkeypatch.setattr(structprune.records, "write_record", disk_full)
    code, err = run_cli(capsys, "prune", "--model", dense_dir, "--method", "magnitude", "--ratio", 0.3,
                        "--output", tmp_path / "c")
    assert code == 2 and "could not be written" in err and not (tmp_path / "c").exists()


def test_files_follow_the_users_umask_and_evaluate_never_replaces_a_file(tiny, tmp_path, capsys, dense_dir):
    old = os.umask(0o022)
    try:
        prune(tiny, "magnitude", 0.3)
        checkpoint = save_pruned(tiny, None, tmp_path / "ckpt")
        from structprune.records import write_record

        record = write_record("x", {"a": 1}, {}, path=tmp_path / "record.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o755
    assert stat.S_IMODE(record.stat().st_mode) == 0o644
    existing = tmp_path / "mine.json"
    existing.write_text("keep")
    code, err = run_cli(capsys, "evaluate", "--model", dense_dir, "--speed", "--output", existing)
    assert code == 2 and "pass --overwrite" in err and existing.read_text() == "keep"


def test_a_seed_beyond_64_bits_is_refused_with_the_range(tiny, capsys, dense_dir, tmp_path):
    code, err = run_cli(capsys, "prune", "--model", dense_dir, "--method", "random", "--ratio", 0.3,
                        "--seed", 2**64, "--output", tmp_path / "o")
    assert code == 2 and "must be in [0, 2**63)" in err
    with pytest.raises(ValueError, match=r"seed must be a whole number in \[0, 2\*\*63\)"):
        prune(tiny, "random", 0.3, seed=2**64)
    with pytest.raises(ValueError, match=r"option seed of score 'random' must be in \[0, 2\*\*63\)"):
        compose(score="random", seed=2**63 + 1)

