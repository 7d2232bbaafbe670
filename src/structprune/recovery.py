"""Recovery after pruning: LoRA fine-tuning through peft, merged back into a plain pruned model.

LLM-Pruner's recipe (its post_training.py): LoRA r=8, alpha=16, dropout 0.05 on q, k, v, o, gate, up, down; the
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

from .architectures import adapter_for
from .data import instruction_rows
from .progress import progress as show

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


RANK_DIRECTIONS = ("uniform", "importance", "pruned")


def importance_guided_ranks(model, keep_ratios: list[float], rank: int = 8, direction: str = "importance",
                            targets=LORA_TARGETS) -> dict[str, int]:
    """IG-LoRA's per-block LoRA ranks (CFSP's recovery; not in the released code, so inferred: "-style").

    Under the budget of uniform LoRA (rank x blocks), block l gets r_l = max(1, round(rank L w_l / sum w)):
    direction "importance" weighs blocks by their coarse importance (w_l = keep_l, which is proportional to
    CFSP's sigmoid score s_l), "pruned" by what they lost (w_l = 1 - keep_l), "uniform" gives every block
    `rank`. Returns peft's `rank_pattern`: full module name -> rank, for every LoRA target of every block.
    """
    if direction not in RANK_DIRECTIONS:
        raise ValueError(f"unknown LoRA rank direction {direction!r}: choose one of {', '.join(RANK_DIRECTIONS)}")
    keep = torch.tensor(keep_ratios, dtype=torch.float64)
    weights = keep if direction == "importance" else 1 - keep
    if direction == "uniform" or weights.sum() <= 0:
        weights = torch.ones_like(keep)
    ranks = torch.clamp(torch.round(rank * len(keep) * weights / weights.sum()), min=1).long().tolist()
    prefix = adapter_for(model).layers + "."
    pattern = {}
    for name in lora_target_names(model, targets):
        block = name[name.index(prefix) + len(prefix):].split(".")[0] if prefix in name else None
        if block is not None:
            pattern[name] = ranks[int(block)]
    return pattern


def _training_rows(tokenizer, batch_size: int, micro_batch_size: int, nsamples: int | None, seed: int, data_path):
    if batch_size % micro_batch_size:
        raise ValueError(f"batch_size {batch_size} must be a multiple of micro_batch_size {micro_batch_size}")
    rows, source = instruction_rows(data_path)
    rng = random.Random(seed)
    rng.shuffle(rows)
    return (rows[:nsamples] if nsamples else rows), source


def _train(forward_model, trainable: list[nn.Parameter], tokenizer, rows: list[dict], total_steps: int, lr: float,
           batch_size: int, micro_batch_size: int, cutoff_len: int, warmup_steps: int, device, desc: str,
           progress: bool) -> list[tuple[int, float]]:
    """AdamW on `trainable` with the Alpaca examples of `rows` (LLM-Pruner's recipe); the loss curve."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimiser = torch.optim.AdamW(trainable, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)
    accumulation, cursor, curve = batch_size // micro_batch_size, 0, []
    steps = range(total_steps)
    for step in (show(steps, desc, unit="step") if progress else steps):
        optimiser.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(accumulation):
            chunk = [rows[(cursor + i) % len(rows)] for i in range(micro_batch_size)]
            cursor += micro_batch_size
            batch = _batch([alpaca_example(tokenizer, row, cutoff_len) for row in chunk], pad_id)
            loss = forward_model(**{k: v.to(device) for k, v in batch.items()}).loss / accumulation
            loss.backward()
            step_loss += loss.item()
        optimiser.step()
        schedule.step()
        curve.append((step + 1, step_loss))
    return curve


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

    rows, source = _training_rows(tokenizer, batch_size, micro_batch_size, nsamples, seed, data_path)
    total_steps = max_steps if max_steps is not None else math.ceil(epochs * max(1, len(rows) // batch_size))
    options = {"max_steps": max_steps, "epochs": epochs, "lr": lr, "batch_size": batch_size,
               "micro_batch_size": micro_batch_size, "cutoff_len": cutoff_len, "r": r, "alpha": alpha,
               "dropout": dropout, "targets": list(targets), "nsamples": len(rows), "warmup_steps": warmup_steps,
               "seed": seed, "rank_pattern": rank_pattern, "steps": total_steps}
    start = time.perf_counter()
    # Even with zero steps the adapters are attached and merged: LoRA's B starts at zero, so that is exact.
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=lora_target_names(model, targets), rank_pattern=rank_pattern or {})
    peft_model = get_peft_model(model, config)
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    curve = _train(peft_model, trainable, tokenizer, rows, total_steps, lr, batch_size, micro_batch_size, cutoff_len,
                   warmup_steps, next(model.parameters()).device, "LoRA recovery", progress)
    peft_model.merge_and_unload()  # folds B A into the pruned weights; `model` is the merged model
    model.eval()
    return {"method": "lora", "options": options, "data": source, "loss_curve": curve,
            "seconds": time.perf_counter() - start}


class GroupLoRALinear(nn.Module):
    """A linear with group-wise quantised weights and a group-pooled LoRA: QA-LoRA (Xu et al., 2023), the
    reading of SAAP's "group fine-tuning" (inferred; docs/methods.md).

    Input column j belongs to group g(j) = j // group_size (the last group may be shorter: pruned widths are
    rarely multiples). W[o, j] ~ scale[o, g] (q[o, j] - zero[o, g]), q in [0, 2^bits - 1] (asymmetric min/max).
    The adapter sees the inputs averaged within each group: y += scaling B A pool(x), A [r, groups], B [out, r]
    (B = 0 at the start, so the adapter starts as the identity). Its update is constant within a group, so
    `merge` folds it into the zero-points exactly: zero[o, g] -= scaling (B A)[o, g] / (size[g] scale[o, g]).
    """

    def __init__(self, linear: nn.Linear, bits: int = 4, group_size: int = 32, r: int = 8, alpha: int = 16):
        super().__init__()
        weight = linear.weight.detach().float()
        out_features, in_features = weight.shape
        self.in_features, self.out_features, self.bits, self.scaling = in_features, out_features, bits, alpha / r
        group_of = torch.arange(in_features) // group_size
        groups = int(group_of.max()) + 1
        sizes = torch.bincount(group_of, minlength=groups).float()
        pool = torch.zeros(in_features, groups)
        pool[torch.arange(in_features), group_of] = 1.0 / sizes[group_of]
        low = torch.full((out_features, groups), float("inf")).scatter_reduce(1, group_of.expand(out_features, -1),
                                                                               weight, "amin")
        high = torch.full((out_features, groups), float("-inf")).scatter_reduce(1, group_of.expand(out_features, -1),
                                                                                 weight, "amax")
        levels = 2 ** bits - 1
        scale = ((high - low) / levels).clamp_min(1e-8)
        zero = -low / scale
        q = torch.clamp(torch.round(weight / scale[:, group_of] + zero[:, group_of]), 0, levels)
        self.register_buffer("q", q.to(torch.uint8 if bits <= 8 else torch.int32))
        self.register_buffer("scale", scale)
        self.register_buffer("zero", zero)
        self.register_buffer("group_of", group_of)
        self.register_buffer("sizes", sizes)
        self.register_buffer("pool", pool)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.lora_A = nn.Parameter(torch.empty(r, groups))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        self.merged = False

    def dequantized(self) -> torch.Tensor:
        return self.scale[:, self.group_of] * (self.q.float() - self.zero[:, self.group_of])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x, self.dequantized().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        if not self.merged:
            y = y + (x @ self.pool.to(x.dtype)) @ self.lora_A.T.to(x.dtype) @ self.lora_B.T.to(x.dtype) * self.scaling
        return y

    @torch.no_grad()
    def merge(self) -> None:
        update = self.scaling * (self.lora_B.float() @ self.lora_A.float())  # [out, groups]
        self.zero -= update / (self.sizes * self.scale)
        self.merged = True

    def to_linear(self) -> nn.Linear:
        """A plain linear holding the (merged) dequantised weights, for saving and speed measurements."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.dequantized())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def attach_group_lora(model, bits: int = 4, group_size: int = 32, r: int = 8, alpha: int = 16,
                      targets=LORA_TARGETS) -> dict[str, GroupLoRALinear]:
    """Replace the target linears by GroupLoRALinear modules (in place); name -> module."""
    attached = {}
    for name in lora_target_names(model, targets):
        parent, _, child = name.rpartition(".")
        linear = model.get_submodule(name)
        module = GroupLoRALinear(linear, bits, group_size, r, alpha).to(linear.weight.device)
        setattr(model.get_submodule(parent), child, module)
        attached[name] = module
    return attached


def merge_group_lora(model, attached: dict[str, GroupLoRALinear]) -> None:
    """Fold every adapter into its zero-points and put plain linears (dequantised weights) back."""
    for name, module in attached.items():
        module.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.to_linear().to(module.scale.device, model.dtype))


def group_lora_recover(model, tokenizer, bits: int = 4, group_size: int = 32, max_steps: int | None = 100,
                       epochs: float = 2.0, lr: float = 1e-4, batch_size: int = 8, micro_batch_size: int = 4,
                       cutoff_len: int = 256, r: int = 8, alpha: int = 16, targets=LORA_TARGETS,
                       nsamples: int | None = None, warmup_steps: int = 0, seed: int = 0, data_path=None,
                       progress: bool = True) -> dict:
    """SAAP-style group fine-tuning: quantise the pruned linears group-wise, train group-pooled LoRA adapters
    on Alpaca-cleaned (the same recipe and loop as `lora_recover`), merge them into the zero-points. The model
    ends with plain linears whose weights lie on the `bits`-bit group grid (simulated low-bit deployment)."""
    rows, source = _training_rows(tokenizer, batch_size, micro_batch_size, nsamples, seed, data_path)
    total_steps = max_steps if max_steps is not None else math.ceil(epochs * max(1, len(rows) // batch_size))
    options = {"bits": bits, "group_size": group_size, "max_steps": max_steps, "epochs": epochs, "lr": lr,
               "batch_size": batch_size, "micro_batch_size": micro_batch_size, "cutoff_len": cutoff_len, "r": r,
               "alpha": alpha, "targets": list(targets), "nsamples": len(rows), "warmup_steps": warmup_steps,
               "seed": seed, "steps": total_steps}
    start = time.perf_counter()
    torch.manual_seed(seed)
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    attached = attach_group_lora(model, bits, group_size, r, alpha, targets)
    trainable = [p for m in attached.values() for p in (m.lora_A, m.lora_B)]
    model.train()
    try:
        curve = _train(model, trainable, tokenizer, rows, total_steps, lr, batch_size, micro_batch_size, cutoff_len,
                       warmup_steps, next(model.parameters()).device, "group fine-tuning", progress)
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
    merge_group_lora(model, attached)
    model.eval()
    return {"method": "group_lora", "options": options, "data": source, "loss_curve": curve,
            "seconds": time.perf_counter() - start}
