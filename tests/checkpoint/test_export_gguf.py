"""GGUF export: llama.cpp (xllamacpp, in a child process) reproduces the PyTorch model's next-token
distribution, dense and pruned by every exportable method, including layers left with no attention or no
MLP; shapes the format cannot hold are refused; files appear atomically."""

import copy

import pytest
import torch

from structprune import compose, prune
from structprune.data import random_calibration
from structprune.export import export_gguf, layer_tensors
from structprune.llamacpp import parity, run_completions
from structprune.models import load_model
from structprune.surgery import finalize_pruned, prune_layer

pytestmark = pytest.mark.slow  # llama.cpp starts in a child process per check: make test, not make check

# f32 weights, f32 KV cache, plain attention: llama.cpp sums in another order, so log-probabilities agree to
# 2e-5 (tiny model) to 3e-4 nats (embedded). A wrong permutation or a lost bias moves them by tenths to whole
# nats.
LOGPROB_TOLERANCE = 1e-3
EXPORTABLE = ["flap", "wanda_sp", "llm_pruner", "cfsp", "saap", "magnitude", "random"]


@pytest.fixture(scope="module")
def tiny_smollm2():
    return load_model("tiny-smollm2")


def prompts(count: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (count, length), generator=generator).tolist()


def check_parity(model, tokenizer, path, count=3, length=40):
    summary = export_gguf(model, tokenizer, path, "f32")
    result = parity(model, path, prompts(count, length, tokenizer.vocab_size), first=8)
    assert result["positions"] + result["withheld"] == count * (length - 7)
    assert result["withheld"] <= 0.1 * count * (length - 7)  # tokens that end inside a UTF-8 character
    assert result["top1_agreement"] == 1.0, result
    assert result["max_logprob_difference"] < LOGPROB_TOLERANCE, result
    return summary, result


def test_dense_tiny_model_runs_in_llama_cpp_with_the_same_distribution(tiny_smollm2, tmp_path):
    model, tokenizer = tiny_smollm2
    summary, _ = check_parity(model, tokenizer, tmp_path / "dense.gguf")
    assert summary["tensor_types"] == {"f32": 3 + 9 * model.config.num_hidden_layers}
    assert [w["heads"] for w in summary["layers"]] == [model.config.num_attention_heads] * model.config.num_hidden_layers


@pytest.mark.parametrize("method", EXPORTABLE + ["fasp_ffn_only", "wifv x cfsp x least_squares"])
def test_pruned_models_of_every_exportable_method_keep_their_distribution(method, tiny_smollm2, tmp_path):
    model, tokenizer = copy.deepcopy(tiny_smollm2[0]), tiny_smollm2[1]
    calibration = random_calibration(tokenizer.vocab_size, 8, 32, seed=1)
    spec, options = method, {}
    if method == "fasp_ffn_only":
        spec, options = "fasp", {"attention": False}
    elif " x " in method:
        spec = compose(score="wifv", allocation="cfsp", compensation="least_squares")
    result = prune(model, spec, 0.3, calibration=calibration, **options)
    summary, _ = check_parity(model, tokenizer, tmp_path / "pruned.gguf")
    shapes = model.config.layer_shapes
    assert [w["channels"] for w in summary["layers"]] == [max(s["intermediate_size"], 1) for s in shapes]
    assert result.params_after < result.params_before


def test_layers_without_attention_or_mlp_are_rewritten_exactly(tiny_smollm2, tmp_path):
    """Layer 0 loses every head (compensated: its o_proj bias is the whole attention output), layer 1 every
    MLP channel (with a down_proj bias), layer 2 every head without a bias: llama.cpp would skip the bias
    or the residual, or abort, if these were written as they are."""
    model, tokenizer = copy.deepcopy(tiny_smollm2[0]), tiny_smollm2[1]
    config, hidden = model.config, model.config.hidden_size
    groups = list(range(config.num_key_value_heads))
    channels = list(range(config.intermediate_size))
    generator = torch.Generator().manual_seed(3)
    prune_layer(model, 0, [], channels, o_bias=torch.randn(hidden, generator=generator))
    prune_layer(model, 1, groups, [], down_bias=torch.randn(hidden, generator=generator))
    prune_layer(model, 2, [], channels[::2])
    finalize_pruned(model)
    widths = [layer_tensors(model, i)[1] for i in range(3)]
    assert widths[0] == {"heads": 1, "kv_heads": 1, "channels": config.intermediate_size}  # a zero head + bias
    assert widths[1]["channels"] == 1  # a zero channel + bias
    assert widths[2]["heads"] == 0  # no bias to carry: attention skipped
    check_parity(model, tokenizer, tmp_path / "empty.gguf")


def test_value_channel_cuts_are_refused_with_the_option_that_avoids_them(tiny_smollm2, tmp_path):
    model, tokenizer = copy.deepcopy(tiny_smollm2[0]), tiny_smollm2[1]
    prune(model, "fasp", 0.3, calibration=random_calibration(tokenizer.vocab_size, 8, 32, seed=1))
    output = tmp_path / "fasp.gguf"
    with pytest.raises(ValueError, match="one head size for q, k and v.*attention=False"):
        export_gguf(model, tokenizer, output)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_quantised_exports_run_and_rows_q8_0_cannot_hold_fall_back_to_f16(tiny_smollm2, tmp_path):
    model, tokenizer = copy.deepcopy(tiny_smollm2[0]), tiny_smollm2[1]
    prune(model, "magnitude", 0.3)  # MLP widths 268 of 384: down_proj rows are not multiples of 32
    q8 = export_gguf(model, tokenizer, tmp_path / "q8.gguf", "q8_0")
    layers = model.config.num_hidden_layers
    assert q8["tensor_types"]["f16"] == layers  # every ffn_down
    assert q8["tensor_types"]["q8_0"] == 2 + 6 * layers  # embeddings, LM head, q k v o gate up
    f16 = export_gguf(model, tokenizer, tmp_path / "f16.gguf", "f16")
    assert f16["tensor_types"] == {"f32": 1 + 2 * layers, "f16": 2 + 7 * layers}
    for path in (tmp_path / "q8.gguf", tmp_path / "f16.gguf"):
        answer = run_completions(path, [{"prompt": [5, 6, 7], "n_predict": 4}])[0]
        assert answer["usage"]["completion_tokens"] == 4
    assert (tmp_path / "q8.gguf").stat().st_size < (tmp_path / "f16.gguf").stat().st_size


def test_bad_input_fails_clearly(tiny_smollm2, tmp_path):
    model, tokenizer = tiny_smollm2
    with pytest.raises(ValueError, match="dtype must be one of f32, f16, q8_0"):
        export_gguf(model, tokenizer, tmp_path / "x.gguf", "q4")
    with pytest.raises(ValueError, match="must end in .gguf"):
        export_gguf(model, tokenizer, tmp_path / "x.bin")
    with pytest.raises(FileNotFoundError, match="export a model first"):
        run_completions(tmp_path / "missing.gguf", [])
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(RuntimeError, match="llama.cpp could not run"):  # the engine fails in the child, not here
        run_completions(broken, [{"prompt": [1], "n_predict": 1}])


@pytest.mark.embedded
@pytest.mark.parametrize("method", [None, "flap"])
def test_embedded_model_parity_over_hundreds_of_positions(method, tmp_path):
    from structprune.evaluate import evaluation_ids

    model, tokenizer = load_model("embedded")
    if method:
        prune(model, method, 0.2, calibration="wikitext2", tokenizer=tokenizer, nsamples=32)
    ids = evaluation_ids(tokenizer, "wikitext2", "test")
    texts = [ids[start:start + 72].tolist() for start in range(0, 4 * 997, 997)]  # 4 x 64 positions
    export_gguf(model, tokenizer, tmp_path / "m.gguf", "f32")
    result = parity(model, tmp_path / "m.gguf", texts, first=9)
    assert result["positions"] + result["withheld"] == 256 and result["withheld"] <= 8
    assert result["top1_agreement"] == 1.0, result
    assert result["max_logprob_difference"] < LOGPROB_TOLERANCE, result


def test_cli_export_writes_the_file_and_refuses_what_is_not_a_model(tmp_path, capsys):
    from structprune.cli import main

    output = tmp_path / "tiny.gguf"
    assert main(["export", "tiny-smollm2", "--output", str(output), "--dtype", "f16"]) == 0
    assert output.is_file() and "MLP channels per layer [384, 384, 384, 384]" in capsys.readouterr().out
    assert main(["export", "tiny-smollm2", "--output", str(output)]) == 2  # exists, no --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    (tmp_path / "not_a_model").mkdir()
    assert main(["export", str(tmp_path / "not_a_model"), "--output", str(tmp_path / "x.gguf")]) == 2
    assert "not a model checkpoint" in capsys.readouterr().err and not (tmp_path / "x.gguf").exists()


def test_cli_measures_speed_in_llama_cpp_into_a_record(tmp_path, capsys):
    import json

    from structprune.cli import main

    record = tmp_path / "engine.json"
    assert main(["evaluate", "--model", "tiny-smollm2", "--speed", "--engine", "llama.cpp", "--gguf-dtype", "q8_0",
                 "--repeats", "1", "--output", str(record)]) == 0
    saved = json.loads(record.read_text())
    assert saved["config"]["engine"] == "llama.cpp" and saved["config"]["gguf_dtype"] == "q8_0"
    result = saved["metrics"]["engine_speed"]
    assert result["prefill_tokens_per_second"] > 0 and result["decode_tokens_per_second"] > 0
    assert "llama.cpp prefill" in capsys.readouterr().out


def test_cli_exports_a_saved_pruned_checkpoint_with_the_same_distribution(tiny_smollm2, tmp_path, capsys):
    from structprune.checkpoint import save_pruned
    from structprune.cli import main
    from structprune.models import load_pruned

    model, tokenizer = copy.deepcopy(tiny_smollm2[0]), tiny_smollm2[1]
    prune(model, "flap", 0.3, calibration=random_calibration(tokenizer.vocab_size, 8, 32, seed=1))
    save_pruned(model, tokenizer, tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), "--output", str(tmp_path / "ckpt.gguf"), "--check"]) == 0
    assert "top-1 agreement 1.0000" in capsys.readouterr().out
    reloaded, _ = load_pruned(tmp_path / "ckpt")
    result = parity(reloaded, tmp_path / "ckpt.gguf", prompts(2, 30, tokenizer.vocab_size))
    assert result["max_logprob_difference"] < LOGPROB_TOLERANCE


def test_query_head_cuts_export_with_their_per_layer_head_counts(tiny_smollm2, tmp_path):
    """Query heads removed inside KV groups: llama.cpp's per-layer head counts hold them exactly."""
    model, tokenizer = copy.deepcopy(tiny_smollm2[0]), tiny_smollm2[1]
    calibration = random_calibration(tokenizer.vocab_size, 8, 32, seed=1)
    prune(model, compose(score="wifv", allocation="flap", compensation="mean_bias", attention_unit="query_head"), 0.5,
          calibration=calibration)
    summary, _ = check_parity(model, tokenizer, tmp_path / "heads.gguf")
    assert [(w["heads"], w["kv_heads"]) for w in summary["layers"]] == [(2, 2)] * model.config.num_hidden_layers
