"""What was gained: measured prefill and decode throughput, latency, peak memory, and the analytic ideal.

The ideal speedup of a pruned model is its ratio of multiply-accumulates (MACs) to the dense model's,
computed from the actual per-layer shapes (`macs_per_token`). Measured numbers are medians over
`repeats` timed runs after `warmup` untimed ones, with the spread (min, max) beside them; the thread
count is fixed and recorded. On CUDA, times come from CUDA events after synchronisation and memory is
`torch.cuda.max_memory_allocated`; on the CPU, wall time (`time.perf_counter`) and the process RSS.

Decode is the KV-cache loop that `generate` runs (greedy, one token per step), timed without the
prefill of its prompt, so tokens/s counts generated tokens only.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

import torch

from .architectures import adapter_for, attention_of, count_parameters, decoder_layers, head_dim, mlp_of

PREFILL_SHAPES = ((1, 128), (1, 512), (8, 128), (8, 512))  # (batch, prompt tokens)
DECODE_BATCHES = (1, 8)


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB: the kernel's high-water mark of its own address space
    (VmHWM). getrusage's ru_maxrss is not used where VmHWM exists: Linux carries it over from the parent
    across fork and exec, so a child started by a large process would report the parent's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def macs_per_token(model, context: float = 0.0) -> dict:
    """Multiply-accumulates to process one token, from the model's actual per-layer widths.

    linear: every q/k/v/o and gate/up/down matmul of the decoder; attention: QK^T and AV against
    `context` cached positions (each kept query head attends to them with head_dim MACs each way);
    lm_head: hidden x vocab. Norms, rotary and activations are ignored (O(hidden) per token).
    """
    adapter, config = adapter_for(model), model.config
    d = head_dim(config)
    linear = attention = 0
    for layer in decoder_layers(model):
        attn, mlp = attention_of(layer, adapter), mlp_of(layer, adapter)
        for module in (*(getattr(attn, n, None) for n in (adapter.q, adapter.k, adapter.v, adapter.o)),
                       *(getattr(mlp, n) for n in (adapter.gate, adapter.up, adapter.down))):
            if module is not None:  # a layer that lost every KV group has no q/k/v/o
                linear += module.in_features * module.out_features
        o = getattr(attn, adapter.o, None)
        query_heads = 0 if o is None else o.in_features // d
        attention += 2 * query_heads * d * context
    lm_head = model.get_output_embeddings()
    head = lm_head.in_features * lm_head.out_features
    return {"linear": linear, "attention": attention, "lm_head": head, "context": context,
            "total": linear + attention + head}


def prefill_macs(model, batch: int, tokens: int) -> float:
    """MACs of one prefill of `batch` x `tokens`, logits for the last position only (as `generate`)."""
    per_token = macs_per_token(model, context=(tokens + 1) / 2)  # mean causal context over the prompt
    return batch * (tokens * (per_token["linear"] + per_token["attention"]) + per_token["lm_head"])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    """Seconds taken by fn(); CUDA events on a GPU, wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def _spread(seconds: list[float]) -> dict:
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "runs": len(seconds)}


def _repeat(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    _synchronize(device)
    return _spread([_timed(fn, device) for _ in range(repeats)])


def _prompt(model, batch: int, tokens: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=generator)
    return ids.to(next(model.parameters()).device)


@torch.no_grad()
def measure_prefill(model, batch: int, tokens: int, warmup: int = 1, repeats: int = 3, seed: int = 0) -> dict:
    """Throughput of one forward pass over a batch of prompts (no cache kept, last-position logits)."""
    ids = _prompt(model, batch, tokens, seed)
    device = ids.device
    timing = _repeat(lambda: model(ids, use_cache=False, logits_to_keep=1), device, warmup, repeats)
    return {"batch": batch, "tokens": tokens, "seconds": timing,
            "tokens_per_second": batch * tokens / timing["median"], "macs": prefill_macs(model, batch, tokens)}


@torch.no_grad()
def greedy_decode(model, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float]:
    """Greedy KV-cache decoding, as `generate` does it: the prompt's prefill gives the first token,
    then `new_tokens` single-token steps against the cache. Returns all new_tokens + 1 generated ids
    and the seconds of the decode steps alone."""
    out = model(prompt, use_cache=True, logits_to_keep=1)
    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    generated = [token]

    def steps():
        nonlocal past, token
        for _ in range(new_tokens):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            generated.append(token)

    seconds = _timed(steps, prompt.device)
    return torch.cat(generated, dim=1), seconds


@torch.no_grad()
def measure_decode(model, batch: int, new_tokens: int = 128, prompt_tokens: int = 128, warmup: int = 1,
                   repeats: int = 3, seed: int = 0) -> dict:
    """Tokens/s and latency per generated token of greedy decoding with the KV cache."""
    prompt = _prompt(model, batch, prompt_tokens, seed)
    for _ in range(warmup):
        greedy_decode(model, prompt, new_tokens)
    timing = _spread([greedy_decode(model, prompt, new_tokens)[1] for _ in range(repeats)])
    return {"batch": batch, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "seconds": timing,
            "tokens_per_second": batch * new_tokens / timing["median"],
            "latency_per_token_ms": 1000 * timing["median"] / new_tokens}


def speed(model, prefill_shapes=PREFILL_SHAPES, decode_batches=DECODE_BATCHES, new_tokens: int = 128,
          warmup: int = 1, repeats: int = 3, threads: int | None = None, seed: int = 0) -> dict:
    """Prefill and decode throughput, latency, peak memory, parameters and analytic MACs of `model`.

    threads: torch intra-op threads for the measurement (recorded; default: leave as is).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        prefill = [measure_prefill(model, b, t, warmup, repeats, seed) for b, t in prefill_shapes]
        decode = [measure_decode(model, b, new_tokens, 128, warmup, repeats, seed) for b in decode_batches]
    finally:
        model.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        memory = {"cuda_max_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    else:
        memory = {"process_peak_rss_mib": peak_rss_mib()}
    weights = {id(p): p for p in model.parameters()}.values()
    memory["weights_mib"] = sum(p.numel() * p.element_size() for p in weights) / 2**20
    return {
        "prefill": prefill, "decode": decode, "memory": memory, "parameters": count_parameters(model),
        "macs_per_token": macs_per_token(model), "device": str(device), "dtype": str(next(model.parameters()).dtype),
        "threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats, "seed": seed,
        "protocol": (f"random prompts (seed {seed}); prefill: one forward, last-position logits, median of {repeats} "
                     f"after {warmup} warm-up; decode: greedy KV-cache steps after a 128-token prompt, "
                     f"{new_tokens} new tokens; {torch.get_num_threads()} threads on {device}"),
    }


def speedup(dense: dict, pruned: dict) -> list[dict]:
    """Measured prefill speedup of `pruned` over `dense` per shape, beside the MACs-ratio ideal."""
    rows = []
    for d, p in zip(dense["prefill"], pruned["prefill"], strict=True):
        ideal = d["macs"] / p["macs"]
        measured = p["tokens_per_second"] / d["tokens_per_second"]
        rows.append({"batch": d["batch"], "tokens": d["tokens"], "measured": measured, "ideal": ideal,
                     "fraction_of_ideal": measured / ideal})
    return rows
