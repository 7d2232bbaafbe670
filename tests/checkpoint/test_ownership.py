"""Writers touch only their own files, never lose a checkpoint, and never both win one destination."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from structprune import cli, load_pruned
from structprune.checkpoint import CHECKPOINT_TOKEN, SIDECAR, install_checkpoint, read_sidecar
from structprune.models import tiny_llama
from structprune.staging import STAGING, locked, staging_dir
from tests.checkpoint.test_reliability_inputs import run_cli

REPO = Path(__file__).resolve().parents[2]
# A user's folders and files beside an output, named like a writer's temporaries and backups.
LOOKALIKE_FOLDERS = ("notes.tmp-4242", "photos.tmp-2024-05", "ck.old-4242", "out.old-4242")
LOOKALIKE_FILES = ("report.tmp-77777", "out.gguf.tmp-4242-x", "rec.json.tmp-99999999-a")


@pytest.fixture
def dense_dir(tmp_path):
    path = tmp_path / "dense"
    tiny_llama().save_pretrained(path, safe_serialization=True)
    return path


def _user_files(folder: Path) -> dict[str, bytes]:
    made = {}
    for name in LOOKALIKE_FOLDERS:
        (folder / name).mkdir(parents=True)
        (folder / name / "draft.txt").write_text(f"mine: {name}")
        made[f"{name}/draft.txt"] = f"mine: {name}".encode()
    for name in LOOKALIKE_FILES:
        (folder / name).write_text(f"mine: {name}")
        made[name] = f"mine: {name}".encode()
    return made


def _still_there(folder: Path, made: dict[str, bytes]) -> None:
    for name, data in made.items():
        assert (folder / name).read_bytes() == data, name


def _token(checkpoint: Path) -> str:
    return read_sidecar(checkpoint)[CHECKPOINT_TOKEN]


def _records(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (tmp_path / "results/runs/prune").glob("*.json")]


@pytest.mark.parametrize("stream", [False, True])
def test_every_writer_leaves_the_users_lookalike_files_alone(tmp_path, capsys, stream):
    work = tmp_path / "ws"
    work.mkdir()
    made = _user_files(work)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (work / f"mine.tmp-{dead.pid}-x").write_text("mine too")  # even with a dead process's number in it
    made[f"mine.tmp-{dead.pid}-x"] = b"mine too"
    stream_flag = ["--stream"] if stream else []
    prune = ["prune", "--model", "tiny-smollm2", "--method", "magnitude", "--ratio", 0.3, "--output", work / "out"]
    code, err = run_cli(capsys, *prune, *stream_flag)
    assert code == 0, err
    _still_there(work, made)
    code, err = run_cli(capsys, *prune, *stream_flag)  # refused: it exists
    assert code == 2 and "exists" in err
    _still_there(work, made)
    code, err = run_cli(capsys, *prune, "--overwrite", *stream_flag)
    assert code == 0, err
    _still_there(work, made)
    assert not (work / "ck").exists()  # a user's ck.old-4242 is never moved into place
    if not stream:
        code, err = run_cli(capsys, "evaluate", "--model", work / "out", "--perplexity", "wikitext2",
                            "--max-windows", 1, "--seqlen", 16, "--output", work / "rec.json")
        assert code == 0, err
        code, err = run_cli(capsys, "export", work / "out", "--output", work / "out.gguf")
        assert code == 0, err
        _still_there(work, made)
    assert not (work / STAGING).exists()  # nothing of ours is left either


def _prune(dense_dir, output, *extra):
    return ["prune", "--model", str(dense_dir), "--method", "magnitude", "--ratio", "0.3", "--output", str(output),
            *map(str, extra)]


def _checkpoint_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("step", ["weights", "install", "record"])
def test_a_failed_overwrite_keeps_the_old_checkpoint(dense_dir, tmp_path, capsys, monkeypatch, step):
    """Each step of an overwrite fails in turn: the old checkpoint stays, byte for byte."""
    import structprune.checkpoint
    import structprune.records

    old = tmp_path / "ck"
    assert run_cli(capsys, *_prune(dense_dir, old))[0] == 0
    before = _checkpoint_bytes(old)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if step == "weights":  # writing the new checkpoint's files
        monkeypatch.setattr(torch.nn.Module, "save_pretrained", fail, raising=False)
        from transformers import PreTrainedModel

        monkeypatch.setattr(PreTrainedModel, "save_pretrained", fail)
    elif step == "install":  # renaming the new one into place, after the old one was moved aside
        real_replace = os.replace

        def new_one_fails(src, dst):
            if Path(dst) == old and ".tmp-" in Path(src).name:
                raise OSError(28, "No space left on device")
            return real_replace(src, dst)

        monkeypatch.setattr(structprune.checkpoint.os, "replace", new_one_fails)
    else:  # the run record
        monkeypatch.setattr(cli, "write_record", fail)
    code, err = run_cli(capsys, *_prune(dense_dir, old, "--overwrite"))
    assert code == 2 and "No space left" in err
    assert _checkpoint_bytes(old) == before
    monkeypatch.undo()
    load_pruned(old)
    assert not (tmp_path / STAGING).exists()


def test_without_overwrite_an_output_that_appeared_meanwhile_is_never_replaced(dense_dir, tmp_path, capsys):
    first = tmp_path / "ck"
    assert run_cli(capsys, *_prune(dense_dir, first))[0] == 0
    before = _checkpoint_bytes(first)
    other = staging_dir(tmp_path) / "other"  # another writer's finished checkpoint, checked before ck appeared
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="appeared while this run was writing"):
        install_checkpoint(other, first, overwrite=False)
    assert _checkpoint_bytes(first) == before and other.is_dir()


def _concurrent(commands: list[list[str]], env: dict) -> list[subprocess.CompletedProcess]:
    processes = [subprocess.Popen([sys.executable, "-m", "structprune", *c], env=env, cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in processes]


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_two_writers_of_one_new_folder_one_wins_and_its_record_describes_it(dense_dir, tmp_path, stream):
    env = {**os.environ, "STRUCTPRUNE_RESULTS": str(tmp_path / "results"), "STRUCTPRUNE_PROGRESS": "0"}
    extra = ["--stream"] if stream else []
    out = tmp_path / "ck"
    done = _concurrent([_prune(dense_dir, out, *extra)] * 2, env)
    codes = sorted(d.returncode for d in done)
    assert codes == [0, 2], [d.stderr[-400:] for d in done]
    loser = next(d for d in done if d.returncode == 2)
    assert "exists" in loser.stderr or "appeared while this run was writing" in loser.stderr
    records = _records(tmp_path)
    assert len(records) == 1 and records[0][CHECKPOINT_TOKEN] == _token(out)
    # With --overwrite the writers take turns: both finish, the folder holds one whole checkpoint, and a record
    # names it.
    done = _concurrent([_prune(dense_dir, out, *extra, "--overwrite")] * 2, env)
    assert [d.returncode for d in done] == [0, 0], [d.stderr[-400:] for d in done]
    assert _token(out) in {r[CHECKPOINT_TOKEN] for r in _records(tmp_path)}
    load_pruned(out)
    assert not (tmp_path / STAGING).exists()


def test_a_reader_waits_for_a_writer_and_never_mixes_two_versions(dense_dir, tmp_path, capsys):
    ck = tmp_path / "ck"
    assert run_cli(capsys, *_prune(dense_dir, ck))[0] == 0
    loaded = []
    with locked(ck):  # a writer is replacing ck
        reader = threading.Thread(target=lambda: loaded.append(load_pruned(ck)))
        reader.start()
        time.sleep(1.0)
        assert reader.is_alive() and not loaded  # the reader waits
    reader.join(timeout=60)
    assert loaded


KILL_AT_RECORD = """
import os, signal, sys
import structprune.records
structprune.records.write_record = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from structprune import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_kill_between_checkpoint_and_record_is_recovered_by_the_next_run(dense_dir, tmp_path):
    env = {**os.environ, "STRUCTPRUNE_RESULTS": str(tmp_path / "results"), "STRUCTPRUNE_PROGRESS": "0"}
    ck = tmp_path / "ck"
    killed = subprocess.run([sys.executable, "-c", KILL_AT_RECORD, *_prune(dense_dir, ck)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL and ck.is_dir() and not _records(tmp_path)
    again = subprocess.run([sys.executable, "-m", "structprune", *_prune(dense_dir, ck)], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-400:]
    assert "left without its record" in again.stderr
    assert [r[CHECKPOINT_TOKEN] for r in _records(tmp_path)] == [_token(ck)]
    # Killed while overwriting: the old checkpoint waits as a backup; the next --overwrite finishes the job.
    killed = subprocess.run([sys.executable, "-c", KILL_AT_RECORD, *_prune(dense_dir, ck, "--overwrite")], env=env,
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in (tmp_path / STAGING).glob("ck.old-*")]
    again = subprocess.run([sys.executable, "-m", "structprune", *_prune(dense_dir, ck, "--overwrite")], env=env,
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-400:]
    assert _token(ck) in {r[CHECKPOINT_TOKEN] for r in _records(tmp_path)}
    assert not (tmp_path / STAGING).exists()


def test_export_is_checked_like_prune_before_loading(dense_dir, tmp_path, capsys, monkeypatch):
    import shutil

    from structprune import models

    ck = tmp_path / "ck"
    assert run_cli(capsys, *_prune(dense_dir, ck))[0] == 0
    real_load = models.load_model

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the destination was checked")

    monkeypatch.setattr(models, "load_model", no_load)
    (tmp_path / "folder.gguf").mkdir()
    code, err = run_cli(capsys, "export", ck, "--output", tmp_path / "folder.gguf")
    assert code == 2 and "is a folder: name a file" in err
    locked_dir = tmp_path / "readonly"
    locked_dir.mkdir()
    real_access = os.access  # root writes anywhere: the folder is read-only as os.access reports it
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == locked_dir else real_access(path, mode))
    code, err = run_cli(capsys, "export", ck, "--output", locked_dir / "m.gguf")
    assert code == 2 and "not a writable folder" in err
    monkeypatch.setattr(os, "access", real_access)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    code, err = run_cli(capsys, "export", ck, "--output", tmp_path / "m.gguf")
    assert code == 2 and "MiB free, and" in err and "m.gguf needs up to" in err
    monkeypatch.undo()
    # A NaN weight: refused like prune refuses it, and no file is written.
    from safetensors.torch import load_file, save_file

    weights = load_file(ck / "model.safetensors")
    weights["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(weights, ck / "model.safetensors", metadata={"format": "pt"})
    for extra in ([], ["--check"]):
        code, err = run_cli(capsys, "export", ck, "--output", tmp_path / "nan.gguf", *extra)
        assert code == 2 and "NaN or Inf in the weights" in err and not (tmp_path / "nan.gguf").exists()
    assert real_load  # unchanged


def _edit_config(ck: Path, **changes) -> None:
    config = json.loads((ck / "config.json").read_text())
    config.update(changes)
    (ck / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("edit", ["widths", "model_type", "sidecar", "sidecar_list"])
def test_an_edited_checkpoint_is_a_clear_error_for_evaluate_and_export(dense_dir, tmp_path, capsys, edit):
    ck = tmp_path / "ck"
    assert run_cli(capsys, *_prune(dense_dir, ck))[0] == 0
    if edit == "widths":
        config = json.loads((ck / "config.json").read_text())
        config["layer_shapes"][0]["intermediate_size"] += 3
        (ck / "config.json").write_text(json.dumps(config))
        expected = "the weights do not match config.json's layer shapes"
    elif edit == "model_type":
        _edit_config(ck, model_type="llama")
        expected = "config.json names model_type 'llama'"
    elif edit == "sidecar":
        (ck / SIDECAR).write_text("{not json")
        expected = f"{ck / SIDECAR} is not valid JSON"
    else:
        (ck / SIDECAR).write_text("[1, 2]")
        expected = "not the provenance object"
    for argv in (["evaluate", "--model", ck, "--perplexity", "wikitext2", "--max-windows", 1, "--seqlen", 16],
                 ["export", ck, "--output", tmp_path / "m.gguf"]):
        code, err = run_cli(capsys, *argv)
        assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--tasks", ",,"], "names no task"),
    (["--tasks", "boolq", "--limit", "100000000000000000000"], "more documents than any task holds"),
    (["--tasks", "boolq", "--limit", "1e20"], "is not a whole number"),
    (["--perplexity", "wikitext2", "--engine", "llama.cpp"], "--engine llama.cpp chooses where --speed is timed"),
    (["--perplexity", "wikitext2", "--limit", "5"], "--limit only applies with --tasks"),
    (["--perplexity", "wikitext2", "--repeats", "5"], "--repeats only applies with --speed"),
    (["--perplexity", "wikitext2", "--threads", "2"], "--threads only applies with --speed"),
    (["--speed", "--gguf-dtype", "q8_0"], "--gguf-dtype only applies with --engine llama.cpp"),
    (["--tasks", "boolq", "--max-windows", "4"], "--max-windows only applies with --perplexity"),
])
def test_options_that_say_nothing_or_too_much_are_refused_at_once(argv, message, capsys, monkeypatch):
    from structprune import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model before the refusal"))
    code, err = run_cli(capsys, "evaluate", "--model", "tiny-smollm2", *argv)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--recover-steps", "5"], "--recover-steps only applies with --recover lora"),
    (["--recover-lr", "0.1"], "--recover-lr only applies with --recover lora"),
    (["--eval-seqlen", "64"], "--eval-seqlen only applies with --perplexity"),
    (["--max-windows", "4"], "--max-windows only applies with --perplexity"),
])
def test_prune_options_that_would_be_ignored_are_refused(argv, message, dense_dir, tmp_path, capsys):
    code, err = run_cli(capsys, *_prune(dense_dir, tmp_path / "ck", *argv))
    assert code == 2 and message in err and not (tmp_path / "ck").exists()


def test_lora_recovery_without_a_seed_uses_seed_zero(dense_dir, tmp_path, capsys, monkeypatch):
    seen = {}

    def fake_recover(model, tokenizer, max_steps, lr, seed):
        seen["seed"] = seed
        return {"options": {"steps": max_steps}, "loss_curve": []}

    monkeypatch.setattr(cli, "lora_recover", fake_recover)
    code, err = run_cli(capsys, *_prune(dense_dir, tmp_path / "ck", "--recover", "lora"))
    assert code == 0, err
    assert seen == {"seed": 0}
    (record,) = _records(tmp_path)
    assert record["config"]["recovery_options"]["seed"] == 0
