"""Streamed pruning and evaluation (one decoder layer's weights resident) against the in-memory pipeline:
the same plans, bit-identical checkpoints' logits, the same perplexity windows; and its faults."""

import errno
import json
import os
import shutil

import pytest
import torch

from structprune import compose, load_pruned, prune, prune_streamed
from structprune.evaluate import perplexity_of_ids
from structprune.models import load_model, tiny_llama, tiny_opt
from structprune.staging import staging_dir
from structprune.streaming import CheckpointReader, open_stream, streamed_perplexity_of_ids


def _checkpoint(model, folder):
    model.save_pretrained(folder, safe_serialization=True)
    return str(folder)


@pytest.fixture
def tiny_dir(tmp_path):
    """A 3-layer GQA LLaMA checkpoint on disk, untied head, saved in two shards (streaming reads indexes)."""
    model = tiny_llama(num_layers=3)
    model.config.tie_word_embeddings = False
    model.save_pretrained(tmp_path / "dense", safe_serialization=True, max_shard_size="100KB")
    assert (tmp_path / "dense" / "model.safetensors.index.json").is_file()
    return str(tmp_path / "dense")


def _both(source: str, output, method, ratio=None, calibration=None, **options):
    """(in-memory result, in-memory model, streamed result, reloaded streamed checkpoint)."""
    model, tokenizer = load_model(source, device="cpu")
    in_memory = prune(model, method, ratio, calibration=calibration, tokenizer=tokenizer, **options)
    streamed = prune_streamed(source, output, method, ratio, calibration=calibration, **options)
    reloaded, _ = load_pruned(output)
    return in_memory, model, streamed, reloaded


def _assert_same(in_memory, model, streamed, reloaded, probe):
    assert streamed.plan.to_dict() == in_memory.plan.to_dict()
    assert streamed.params_after == in_memory.params_after < in_memory.params_before
    with torch.no_grad():
        assert torch.equal(reloaded(probe).logits, model(probe).logits)


METHODS = [("flap", {}), ("wanda_sp", {}), ("fasp", {}), ("cfsp", {}), ("magnitude", {}), ("random", {}),
           ("flap", {"structure": "UL-UM"}), ("wanda_sp", {"allocation": "global"})]


@pytest.mark.parametrize(("method", "options"), METHODS, ids=[f"{m}-{o}" for m, o in METHODS])
def test_streamed_prune_equals_in_memory(tiny_dir, tmp_path, calibration, probe, method, options):
    results = _both(tiny_dir, tmp_path / "out", method, 0.4, calibration, **options)
    _assert_same(*results, probe)
    shards = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(shards) == 4  # one per decoder layer, one for the rest


COMPOSITIONS = [
    compose(score="wifv", allocation="global", compensation="least_squares"),  # one-shot, Gram per layer kept
    compose(score="wanda", allocation="uniform", compensation="mean_bias", sequential=True),
    compose(score="activation", allocation="cfsp", compensation="mean_bias", round_to=8),
    compose(score="wanda", allocation="uniform", compensation="least_squares", attention_unit="value_channel",
            sequential=True),
]


@pytest.mark.parametrize("composition", COMPOSITIONS, ids=[c.label for c in COMPOSITIONS])
def test_streamed_compositions_equal_in_memory(tiny_dir, tmp_path, calibration, probe, composition):
    _assert_same(*_both(tiny_dir, tmp_path / "out", composition, 0.3, calibration), probe)


@pytest.mark.parametrize("method", ["flap", "wanda_sp", "fasp"])
def test_streamed_target_params_equal_in_memory(tiny_dir, tmp_path, calibration, probe, method):
    results = _both(tiny_dir, tmp_path / "out", method, calibration=calibration, target_params=0.25)
    _assert_same(*results, probe)
    assert results[2].plan.extras == results[0].plan.extras


def test_streamed_tied_model_with_tokenizer(tmp_path, probe):
    """tiny-smollm2 ties its head to the embeddings and carries a tokenizer; calibration by dataset name."""
    results = _both("tiny-smollm2", tmp_path / "out", "flap", 0.3, "wikitext2", nsamples=4, seqlen=32)
    _assert_same(*results, probe)
    stored = CheckpointReader(tmp_path / "out").names()
    assert "lm_head.weight" not in stored  # tied, as save_pretrained writes it
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "out" / "pruning.json").read_text())["streamed"] is True


def test_streamed_opt(tmp_path, calibration, probe):
    source = _checkpoint(tiny_opt(), tmp_path / "opt")
    _assert_same(*_both(source, tmp_path / "out", "flap", 0.3, calibration), probe)
    model, _ = load_pruned(tmp_path / "out")
    ids = calibration.flatten()
    streamed = streamed_perplexity_of_ids(open_stream(tmp_path / "out"), ids, 24, batch_size=4)
    assert streamed["window_nll"] == perplexity_of_ids(model, ids, 24, batch_size=4)["window_nll"]


def test_streamed_perplexity_equals_in_memory(tiny_dir, calibration):
    """Layer by layer over all windows, in groups (each group reads the weights once): the same windows'
    negative log-likelihoods as the whole model, bit for bit."""
    model, _ = load_model(tiny_dir, device="cpu")
    ids = calibration.flatten()
    expected = perplexity_of_ids(model, ids, 16, batch_size=3)
    stream = open_stream(tiny_dir)
    one_group = streamed_perplexity_of_ids(stream, ids, 16, batch_size=3)
    groups = streamed_perplexity_of_ids(stream, ids, 16, batch_size=3, max_activation_bytes=16 * 64 * 4 * 5)
    for result in (one_group, groups):
        assert result["window_nll"] == expected["window_nll"]
        assert result["perplexity"] == expected["perplexity"] and result["windows"] == 18
    assert all(p.device.type == "meta" for p in stream.model.model.layers.parameters())


def test_gradient_methods_refuse_streaming_and_leave_nothing(tiny_dir, tmp_path, calibration):
    for method in ("llm_pruner", "saap"):
        with pytest.raises(ValueError, match=r"cannot stream.*--device auto"):
            prune_streamed(tiny_dir, tmp_path / "out", method, 0.2, calibration=calibration)
    assert os.listdir(tmp_path) == ["dense"]


def test_interrupted_streamed_prune_leaves_no_checkpoint_and_reruns(tiny_dir, tmp_path, calibration, probe,
                                                                     monkeypatch):
    from structprune.streaming import CheckpointWriter

    real_write, written = CheckpointWriter.write, []

    def write_then_interrupt(self, shard, tensors):
        if len(written) == 2:
            raise KeyboardInterrupt  # Ctrl-C while layer 2 is written
        written.append(shard)
        real_write(self, shard, tensors)

    monkeypatch.setattr(CheckpointWriter, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prune_streamed(tiny_dir, tmp_path / "out", "flap", 0.4, calibration=calibration)
    assert sorted(os.listdir(tmp_path)) == ["dense"]  # no checkpoint, no temporary folder
    monkeypatch.setattr(CheckpointWriter, "write", real_write)
    # A killed run (no cleanup at all) leaves its temporary folder: the next run removes it and starts cleanly.
    orphan = staging_dir(tmp_path) / "out.tmp-999999999-x"
    orphan.mkdir()
    (orphan / "model-00001-of-00004.safetensors").write_bytes(b"half")
    _assert_same(*_both(tiny_dir, tmp_path / "out", "flap", 0.4, calibration), probe)
    assert sorted(os.listdir(tmp_path)) == ["dense", "out"]


def test_truncated_damaged_or_missing_shard_fails_before_any_work(tiny_dir, tmp_path, calibration):
    index = json.loads((tmp_path / "dense" / "model.safetensors.index.json").read_text())
    shard = tmp_path / "dense" / sorted(set(index["weight_map"].values()))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="truncated"):
        prune_streamed(tiny_dir, tmp_path / "out", "flap", 0.2, calibration=calibration)
    shard.write_bytes(len(b"{not json").to_bytes(8, "little") + b"{not json" + data[8:])
    with pytest.raises(ValueError, match="damaged header"):
        prune_streamed(tiny_dir, tmp_path / "out", "flap", 0.2, calibration=calibration)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="is missing"):
        prune_streamed(tiny_dir, tmp_path / "out", "flap", 0.2, calibration=calibration)
    assert os.listdir(tmp_path) == ["dense"]


def test_disk_full_is_a_clear_error_and_leaves_nothing(tiny_dir, tmp_path, calibration, monkeypatch):
    import safetensors.torch

    calls = []

    def full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    real = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="disk full while writing model-00002-of-00004") as caught:
        prune_streamed(tiny_dir, tmp_path / "out", "wanda_sp", 0.2, calibration=calibration)
    assert caught.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == ["dense"]
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(OSError, match="MiB free, and .*out needs up to"):
        prune_streamed(tiny_dir, tmp_path / "out", "wanda_sp", 0.2, calibration=calibration)
    assert os.listdir(tmp_path) == ["dense"]


def test_cli_streams_when_the_model_would_not_fit(tmp_path, monkeypatch, capsys):
    """Told that memory is short, the CLI streams by itself, says so, and writes what --stream writes."""
    from structprune import cli, streaming

    common = ["prune", "--model", "tiny-smollm2", "--method", "wanda_sp", "--ratio", "0.3", "--nsamples", "4",
              "--seqlen", "32", "--perplexity", "wikitext2", "--eval-seqlen", "32", "--max-windows", "4"]
    assert cli.main([*common, "--output", str(tmp_path / "whole")]) == 0
    assert "streaming" not in capsys.readouterr().err
    monkeypatch.setattr(streaming, "available_memory", lambda: 1000)
    assert cli.main([*common, "--output", str(tmp_path / "auto")]) == 0
    captured = capsys.readouterr()
    assert "streaming, one decoder layer resident (--stream)" in captured.err
    assert "(streamed, one layer resident)" in captured.out
    whole, auto = load_pruned(tmp_path / "whole")[0], load_pruned(tmp_path / "auto")[0]
    ids = torch.arange(64).view(2, 32)
    with torch.no_grad():
        assert torch.equal(whole(ids).logits, auto(ids).logits)
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs" / "prune").glob("*.json")]
    by_output = {r["config"]["output"]: r for r in records}
    ppl = [by_output[str((tmp_path / name).resolve())]["metrics"]["perplexity_wikitext2"]["window_nll"]
           for name in ("whole", "auto")]
    assert ppl[0] == ppl[1] and len(ppl[0]) == 4
    assert cli.main(["evaluate", "--model", str(tmp_path / "auto"), "--stream", "--perplexity", "wikitext2",
                     "--seqlen", "32", "--max-windows", "4"]) == 0
    assert "streamed" in capsys.readouterr().out
    assert cli.main(["evaluate", "--model", str(tmp_path / "auto"), "--stream", "--tasks", "boolq"]) != 0
    assert "measures perplexity only" in capsys.readouterr().err


@pytest.mark.embedded
@pytest.mark.parametrize("method", ["flap", "fasp"])
def test_streamed_embedded_model_equals_in_memory(tmp_path, method):
    """The embedded SmolLM2-135M, streamed and in memory: the same plan, identical logits after reload."""
    model, tokenizer = load_model("embedded", device="cpu")
    ids = torch.tensor(tokenizer("The quick brown fox jumps over the lazy dog. " * 40)["input_ids"][:256]).view(4, 64)
    probe = ids[:1, :48]
    _assert_same(*_both("embedded", tmp_path / "out", method, 0.2, ids), probe)


@pytest.mark.embedded
def test_gemma3_270m_prunes_streamed_and_in_memory_alike(tmp_path):
    """The second real model (Gemma 3 270M, one KV head per layer, head_dim 256, sliding-window and global
    layers): a streamed Wanda-sp prune at 5 % of the model equals the in-memory one, and reloads."""
    model, tokenizer = load_model("gemma3-270m", device="cpu")
    assert type(model).__name__ == "Gemma3ForCausalLM" and sum(p.numel() for p in model.parameters()) == 268_098_176
    ids = torch.tensor(tokenizer("The quick brown fox jumps over the lazy dog. " * 40)["input_ids"][:128]).view(2, 64)
    in_memory = prune(model, "wanda_sp", calibration=ids, target_params=0.05)
    streamed = prune_streamed("gemma3-270m", tmp_path / "out", "wanda_sp", calibration=ids, target_params=0.05)
    reloaded, _ = load_pruned(tmp_path / "out")
    _assert_same(in_memory, model, streamed, reloaded, ids[:1, :40])
    assert type(reloaded).__name__ == "StructprunedGemma3ForCausalLM"
