"""Model loading, perplexity and run records."""

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F

from structprune.evaluate import perplexity_of_ids
from structprune.models import load_model, resolve_model_spec, tiny_llama
from structprune.records import config_hash, find_record, load_records, write_record


def test_tiny_llama_has_grouped_query_attention():
    model = tiny_llama(num_heads=4, num_kv_heads=2)
    attn = model.model.layers[0].self_attn
    assert attn.num_key_value_groups == 2
    assert attn.k_proj.out_features * 2 == attn.q_proj.out_features


def test_unknown_model_spec_is_refused_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="unknown model spec 'no-such-model'.*local checkpoint directory"):
        resolve_model_spec("no-such-model")
    with pytest.raises(ConnectionError, match="hub cannot be reached.*HF_HUB_OFFLINE"):
        load_model("meta-llama/Llama-2-7b-hf")
    assert time.perf_counter() - start < 10  # no long retries


def test_missing_local_path_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_perplexity_equals_a_direct_loop():
    model = tiny_llama()
    ids = torch.randint(0, 256, (1000,), generator=torch.Generator().manual_seed(0))
    result = perplexity_of_ids(model, ids, seqlen=64, batch_size=3)
    nlls = []
    with torch.no_grad():
        for w in range(1000 // 64):  # window by window, token by token
            window = ids[w * 64:(w + 1) * 64]
            logits = model(window[None]).logits[0].double()
            for t in range(63):
                nlls.append(-F.log_softmax(logits[t], -1)[window[t + 1]].item())
    assert result["windows"] == 15 and result["tokens"] == 15 * 63
    assert result["perplexity"] == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-5)
    subset = perplexity_of_ids(model, ids, seqlen=64, max_windows=4)
    assert subset["windows"] == 4
    assert subset["perplexity"] == pytest.approx(math.exp(sum(nlls[:4 * 63]) / (4 * 63)), rel=1e-5)


def test_seqlen_longer_than_context_is_refused():
    model = tiny_llama()  # context 512
    with pytest.raises(ValueError, match="longer than the model's context \\(512"):
        perplexity_of_ids(model, torch.zeros(2000, dtype=torch.long), seqlen=1024)


def test_records_are_atomic_findable_and_load_as_a_frame(tmp_path):
    config = {"model": "tiny", "ratio": 0.2}
    path = write_record("unit", config, {"perplexity": 12.5}, {"seconds": 1.0})
    record = json.loads(path.read_text())
    assert record["config_hash"] == config_hash(config) and record["versions"]["torch"] == torch.__version__
    assert find_record("unit", config)["metrics"]["perplexity"] == 12.5
    assert find_record("unit", {"model": "tiny", "ratio": 0.3}) is None
    assert not list(path.parent.glob("*.tmp-*"))
    frame = load_records(experiment="unit")
    assert frame.loc[0, "metrics.perplexity"] == 12.5 and frame.loc[0, "config.ratio"] == 0.2


def test_multi_head_copy_computes_the_same_function():
    import torch

    from structprune.architectures import count_parameters
    from structprune.models import repeat_kv_heads, tiny_llama

    gqa = tiny_llama(hidden_size=96, num_heads=6, num_kv_heads=2)  # head_dim 16, 3 query heads per KV head
    mha = repeat_kv_heads(gqa)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(mha(ids).logits, gqa(ids).logits, atol=1e-5, rtol=1e-5)
    assert mha.config.num_key_value_heads == 6
    assert count_parameters(mha) - count_parameters(gqa) == 3 * 2 * (6 - 2) * 16 * 96  # layers x (k, v) x new rows x in
