"""Families whose windows start with BOS (Gemma): evaluation and calibration windows are BOS, then text;
the other families read windows cut from the running text, unchanged."""

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from structprune import prune
from structprune.architectures import window_bos_id
from structprune.data import calibration_batches
from structprune.evaluate import perplexity_of_ids
from structprune.models import load_model, tiny_llama


def _gemma(vocab_size: int = 256):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=32,
                              max_position_embeddings=256)
    return Gemma3ForCausalLM(config).eval()


def _literal_perplexity(model, windows: torch.Tensor) -> float:
    """Mean next-token loss over every window, each scored from its second token on, written out."""
    with torch.no_grad():
        logits = model(windows, use_cache=False).logits.double()
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    return math.exp(loss.item())


def test_gemma_windows_start_with_bos_and_score_every_text_token():
    model = _gemma()
    bos = model.config.bos_token_id
    assert window_bos_id(model) == bos and window_bos_id(tiny_llama()) is None
    text = torch.randint(3, 256, (60,), generator=torch.Generator().manual_seed(1))
    ids = torch.cat([torch.tensor([bos]), text])  # as the tokenizer gives it: one BOS, then the text
    result = perplexity_of_ids(model, ids, seqlen=16, max_windows=3)
    windows = torch.cat([torch.full((3, 1), bos), text[:45].view(3, 15)], 1)  # BOS + 15 text tokens each
    assert result["windows"] == 3 and result["tokens"] == 45
    assert result["perplexity"] == pytest.approx(_literal_perplexity(model, windows), rel=1e-5)
    without = _literal_perplexity(model, ids[:48].view(3, 16))  # windows of the running text, as other families
    assert result["perplexity"] != pytest.approx(without, rel=1e-3)

    llama = tiny_llama()
    plain = perplexity_of_ids(llama, ids, seqlen=16, max_windows=3)
    assert plain["perplexity"] == pytest.approx(_literal_perplexity(llama, ids[:48].view(3, 16)), rel=1e-5)


def test_gemma_calibration_windows_start_with_bos():
    _, tokenizer = load_model("tiny-smollm2")
    plain = calibration_batches(tokenizer, "wikitext2", 3, 15, seed=4)
    with_bos = calibration_batches(tokenizer, "wikitext2", 3, 16, seed=4, bos_token_id=7)
    assert with_bos.shape == (3, 16) and (with_bos[:, 0] == 7).all() and torch.equal(with_bos[:, 1:], plain)

    model = _gemma(vocab_size=len(tokenizer))
    result = prune(model, "wanda_sp", 0.2, calibration="wikitext2", tokenizer=tokenizer, nsamples=2, seqlen=16)
    expected = calibration_batches(tokenizer, "wikitext2", 2, 16, seed=0, bos_token_id=model.config.bos_token_id)
    assert result.calibration["token_sha256"] == hashlib.sha256(expected.numpy().tobytes()).hexdigest()[:16]
