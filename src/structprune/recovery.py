"""Recovery after pruning: LoRA fine-tuning through peft, merged back into a plain pruned model.

LLM-Pruner's recipe (spec §4.7): LoRA r=8, alpha=16, dropout 0.05 on q, k, v, o, gate, up, down; the
Alpaca-cleaned instructions with the Alpaca prompt template, `cutoff_len` 256 tokens, an EOS appended,
loss on the response only; AdamW. The paper trains 2 epochs on ~50k rows with batch 64 and lr 1e-4 on a
GPU; on a CPU use `max_steps`. After training the adapters are merged, so the result is an ordinary pruned
checkpoint (no peft needed to load it). Usable after any method.
"""

from __future__ import annotations

import math
import random
import time

import torch
from torch import nn

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_example(tokenizer, row: dict, cutoff_len: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one instruction row; prompt tokens are masked with -100 in the labels."""
    template = PROMPT_WITH_INPUT if row.get("input") else PROMPT_NO_INPUT
    prompt = template.format(instruction=row["instruction"], input=row.get("input", ""))
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer(prompt + row["output"], add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
    full_ids = full_ids[:cutoff_len]
    labels = [-100] * min(len(prompt_ids), len(full_ids)) + full_ids[len(prompt_ids):]
    return full_ids, labels


def _batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def lora_target_names(model, targets=LORA_TARGETS) -> list[str]:
    """Full names of the linears LoRA wraps (zero-width linears of emptied layers are left out)."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.split(".")[-1] in targets and module.weight.numel() > 0]


def lora_recover(model, tokenizer, max_steps: int | None = 100, epochs: float = 2.0, lr: float = 1e-4,
                 batch_size: int = 8, micro_batch_size: int = 4, cutoff_len: int = 256, r: int = 8,
                 alpha: int = 16, dropout: float = 0.05, targets=LORA_TARGETS, nsamples: int | None = None,
                 warmup_steps: int = 0, seed: int = 0, data_path=None, rank_pattern: dict | None = None,
                 progress: bool = True) -> dict:
    """Fine-tune `model` with LoRA on Alpaca-cleaned and merge the adapters into it (in place).

    max_steps: optimiser steps (None: `epochs` over the rows); batch_size = micro_batch_size x accumulation.
    rank_pattern: per-module LoRA ranks (peft), for importance-guided recovery. Returns the record
    fields: options, data source, the loss curve (step, loss) and seconds.
    """
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    from .data import instruction_rows

    if batch_size % micro_batch_size:
        raise ValueError(f"batch_size {batch_size} must be a multiple of micro_batch_size {micro_batch_size}")
    rows, source = instruction_rows(data_path)
    rng = random.Random(seed)
    rng.shuffle(rows)
    rows = rows[:nsamples] if nsamples else rows
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    steps_per_epoch = max(1, len(rows) // batch_size)
    total_steps = max_steps if max_steps is not None else math.ceil(epochs * steps_per_epoch)
    options = {"max_steps": max_steps, "epochs": epochs, "lr": lr, "batch_size": batch_size,
               "micro_batch_size": micro_batch_size, "cutoff_len": cutoff_len, "r": r, "alpha": alpha,
               "dropout": dropout, "targets": list(targets), "nsamples": len(rows), "warmup_steps": warmup_steps,
               "seed": seed, "rank_pattern": rank_pattern, "steps": total_steps}
    curve: list[tuple[int, float]] = []
    start = time.perf_counter()
    # Even with zero steps the adapters are attached and merged: LoRA's B starts at zero, so that is exact.
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=lora_target_names(model, targets), rank_pattern=rank_pattern or {})
    peft_model = get_peft_model(model, config)
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)
    device = next(model.parameters()).device
    accumulation, cursor = batch_size // micro_batch_size, 0
    for step in tqdm(range(total_steps), desc="LoRA recovery", disable=not progress):
        optimiser.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(accumulation):
            chunk = [rows[(cursor + i) % len(rows)] for i in range(micro_batch_size)]
            cursor += micro_batch_size
            batch = _batch([alpaca_example(tokenizer, row, cutoff_len) for row in chunk], pad_id)
            loss = peft_model(**{k: v.to(device) for k, v in batch.items()}).loss / accumulation
            loss.backward()
            step_loss += loss.item()
        optimiser.step()
        schedule.step()
        curve.append((step + 1, step_loss))
    peft_model.merge_and_unload()  # folds B A into the pruned weights; `model` is the merged model
    model.eval()
    return {"method": "lora", "options": options, "data": source, "loss_curve": curve,
            "seconds": time.perf_counter() - start}
