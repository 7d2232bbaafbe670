"""The speed benchmark measures what it says: analytic MACs equal counted FLOPs, decoding is real
KV-cache greedy decoding, and the records carry their protocol. (No timing thresholds here: speed
targets live in `benchmarks/bench_speed.py`.)"""

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from structprune import prune
from structprune.speed import greedy_decode, macs_per_token, prefill_macs, speed, speedup


def _pruned_with_empty_attention(tiny, calibration):
    pruned = copy.deepcopy(tiny)
    plan = prune(pruned, "flap", 0.6, calibration=calibration).plan
    assert 0 in [len(g) for g in plan.kept_groups] and len({len(c) for c in plan.kept_channels}) > 1
    return pruned


def _counted_macs(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("variant", ["dense", "pruned"])
def test_macs_per_token_equal_counted_flops_of_a_decode_step(tiny, calibration, probe, variant):
    """One decode step against c cached positions costs exactly macs_per_token(context=c + 1)."""
    model = tiny if variant == "dense" else _pruned_with_empty_attention(tiny, calibration)
    model.config._attn_implementation = "eager"  # attention as plain matmuls, which the counter sees
    prompt = probe[:1, :10]
    with torch.no_grad():
        past = model(prompt, use_cache=True).past_key_values
        counted = _counted_macs(lambda: model(probe[:1, 10:11], past_key_values=past, use_cache=True))
    expected = macs_per_token(model, context=prompt.shape[1] + 1)
    assert counted == expected["total"]
    if variant == "pruned":
        assert expected["total"] < macs_per_token(tiny, context=11)["total"]


def test_prefill_macs_counts_linears_per_token_and_the_head_once(tiny, probe):
    per_token = macs_per_token(tiny)
    tiny.config._attn_implementation = "eager"
    with torch.no_grad():
        counted = _counted_macs(lambda: tiny(probe, use_cache=False, logits_to_keep=1))
    batch, tokens = probe.shape
    # The counter sees the full (masked) attention square; the ideal counts the causal half.
    attention_full = batch * tokens * macs_per_token(tiny, context=tokens)["attention"]
    assert counted == batch * tokens * per_token["linear"] + attention_full + batch * per_token["lm_head"]
    assert prefill_macs(tiny, batch, tokens) == (batch * tokens * per_token["linear"] + batch * per_token["lm_head"]
                                                 + batch * tokens * macs_per_token(tiny, (tokens + 1) / 2)["attention"])


def test_greedy_decode_matches_generate(tiny, calibration, probe):
    model = _pruned_with_empty_attention(tiny, calibration)
    prompt = probe[:, :8]
    tokens, seconds = greedy_decode(model, prompt, new_tokens=6)
    expected = model.generate(prompt, max_new_tokens=7, min_new_tokens=7, do_sample=False)[:, 8:]
    assert torch.equal(tokens, expected) and seconds > 0


def test_speed_record_is_consistent_and_reports_ideal_speedup(tiny, calibration):
    shapes, batches = ((2, 16),), (2,)
    dense = speed(tiny, prefill_shapes=shapes, decode_batches=batches, new_tokens=4, repeats=2, threads=1)
    assert dense["threads"] == 1 and dense["repeats"] == 2
    (prefill,), (decode,) = dense["prefill"], dense["decode"]
    assert prefill["tokens_per_second"] == pytest.approx(2 * 16 / prefill["seconds"]["median"])
    assert prefill["seconds"]["min"] <= prefill["seconds"]["median"] <= prefill["seconds"]["max"]
    assert decode["latency_per_token_ms"] == pytest.approx(1000 * decode["seconds"]["median"] / 4)
    assert dense["parameters"] == sum(p.numel() for p in tiny.parameters())
    assert dense["memory"]["weights_mib"] == pytest.approx(dense["parameters"] * 4 / 2**20)
    pruned = _pruned_with_empty_attention(tiny, calibration)
    measured = speed(pruned, prefill_shapes=shapes, decode_batches=batches, new_tokens=4, repeats=2)
    (row,) = speedup(dense, measured)
    assert row["ideal"] == pytest.approx(prefill_macs(tiny, 2, 16) / prefill_macs(pruned, 2, 16)) and row["ideal"] > 1
    assert row["fraction_of_ideal"] == pytest.approx(row["measured"] / row["ideal"])


def test_cli_speed_on_a_pruned_checkpoint(tiny, calibration, tmp_path):
    import json

    from structprune import save_pruned
    from structprune.cli import main

    pruned = _pruned_with_empty_attention(tiny, calibration)
    save_pruned(pruned, None, tmp_path / "ckpt", {})
    output = tmp_path / "speed.json"
    assert main(["evaluate", "--model", str(tmp_path / "ckpt"), "--speed", "--repeats", "1", "--threads", "1",
                 "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    result = record["metrics"]["speed"]
    assert record["config"]["speed"] and record["config"]["threads"] == 1
    assert [(r["batch"], r["tokens"]) for r in result["prefill"]] == [(1, 128), (1, 512), (8, 128), (8, 512)]
    assert [r["batch"] for r in result["decode"]] == [1, 8] and result["decode"][0]["new_tokens"] == 128
    assert result["macs_per_token"]["total"] == macs_per_token(pruned)["total"]
    assert result["parameters"] == sum(p.numel() for p in pruned.parameters())
