"""LoRA recovery: merged zero-step adapters are exact, a few steps lower the training loss, and the merged
model saves and reloads as a plain pruned checkpoint."""

import pytest
import torch
from torch import nn

from structprune import load_pruned, prune, save_pruned
from structprune.recovery import _batch, alpaca_example, lora_recover

from ..helpers import logits

pytestmark = pytest.mark.embedded


def test_lora_with_zero_steps_leaves_logits_unchanged(embedded):
    model, tokenizer = embedded
    prune(model, "magnitude", 0.2)
    probe = tokenizer(["Recovery must not change a model it did not train."], return_tensors="pt").input_ids
    before = logits(model, probe)
    record = lora_recover(model, tokenizer, max_steps=0, progress=False)
    assert record["loss_curve"] == [] and record["options"]["r"] == 8
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear  # adapters merged away
    assert torch.equal(logits(model, probe), before)


def test_a_few_lora_steps_lower_the_training_loss_and_the_result_reloads(embedded, tmp_path):
    model, tokenizer = embedded
    prune(model, "wanda_sp", 0.3, calibration="c4", tokenizer=tokenizer, nsamples=4, seqlen=64)
    from structprune.data import instruction_rows

    rows, _ = instruction_rows()
    import random

    random.Random(0).shuffle(rows)  # the rows lora_recover trains on (same seed, nsamples=4)
    batch = _batch([alpaca_example(tokenizer, row, 96) for row in rows[:4]], tokenizer.eos_token_id)
    with torch.no_grad():
        before = model(**batch).loss.item()
    record = lora_recover(model, tokenizer, max_steps=6, lr=2e-3, batch_size=4, micro_batch_size=2,
                          cutoff_len=96, nsamples=4, progress=False)
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert len(record["loss_curve"]) == 6 and after < before - 0.1
    probe = batch["input_ids"][:1]
    save_pruned(model, tokenizer, tmp_path / "recovered", {"recovery": record})
    reloaded, _ = load_pruned(tmp_path / "recovered")
    assert torch.equal(logits(reloaded, probe), logits(model, probe))
