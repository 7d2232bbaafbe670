"""Pruning time, memory and speed at real size, on a random-weight LLaMA-7B-shaped model (no download).

For each method, a fresh model is built from a `LlamaConfig` with LLaMA-7B's shapes (hidden 4096,
intermediate 11008, 32 heads, 32 layers, vocab 32000; `--layers` keeps fewer for a CPU) and seeded
random weights, then:
- one plain forward over the method's calibration tokens (the yardstick for pruning time),
- `prune(...)` at `--ratio`: wall time and peak memory,
- optionally (`--speed`) the speed benchmark of the dense model and of each pruned one.
Calibration is uniform random token ids (the shapes, not the text, set the cost), with each method's
paper sample count and length unless `--nsamples`/`--seqlen` override them.
One record per method under results/runs/bench_scale/.

    python benchmarks/bench_scale.py --device cuda --dtype bfloat16 --speed     # GPU machine
    python benchmarks/bench_scale.py --layers 2 --nsamples 16                   # CPU, 2 layers
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
            "num_hidden_layers": 32, "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6}


def build(layers: int, device: str, dtype: torch.dtype, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**LLAMA_7B, "num_hidden_layers": layers})
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.structprune_source = {"spec": f"random LLaMA-7B-shaped, {layers} layers", "seed": seed}
    return model.eval()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def forward_seconds(model, ids: torch.Tensor, device: str, batch_size: int = 8) -> float:
    model(ids[:1].to(device), use_cache=False, logits_to_keep=1)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for batch in ids.split(batch_size):
        model(batch.to(device), use_cache=False, logits_to_keep=1)
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--methods", default="flap,wanda_sp,magnitude,random,llm_pruner")
    parser.add_argument("--nsamples", type=int, default=None, help="calibration sequences (default: the paper's)")
    parser.add_argument("--seqlen", type=int, default=None, help="calibration length (default: the paper's)")
    parser.add_argument("--speed", action="store_true", help="also measure dense and pruned speed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--round-to", type=int, default=1, help="keep MLP channel counts a multiple of k")
    args = parser.parse_args()

    from structprune import prune
    from structprune.data import random_calibration
    from structprune.methods import get_method
    from structprune.records import write_record
    from structprune.speed import speed, speedup

    dtype = getattr(torch, args.dtype)
    dense_speed = None
    if args.speed:
        model = build(args.layers, args.device, dtype)
        dense_speed = speed(model, repeats=args.repeats)
        print(f"dense: {dense_speed['parameters'] / 1e9:.2f} B params, prefill 8x512 "
              f"{dense_speed['prefill'][-1]['tokens_per_second']:.0f} tok/s, decode b1 "
              f"{dense_speed['decode'][0]['tokens_per_second']:.1f} tok/s", flush=True)
        del model
    for name in args.methods.split(","):
        _, paper_nsamples, paper_seqlen = get_method(name).calibration
        nsamples, seqlen = args.nsamples or paper_nsamples or 1, args.seqlen or paper_seqlen or 128
        model = build(args.layers, args.device, dtype)
        ids = random_calibration(model.config.vocab_size, nsamples, seqlen, seed=0)
        forward = forward_seconds(model, ids, args.device)
        result = prune(model, name, args.ratio, calibration=ids if paper_nsamples else None, round_to=args.round_to)
        metrics = {"prune_seconds": result.seconds, "forward_seconds": forward,
                   "prune_over_forward": result.seconds / forward, "peak_memory": result.peak_memory,
                   "params_before": result.params_before, "params_after": result.params_after,
                   "label": result.label}
        if args.speed:
            pruned_speed = speed(model, repeats=args.repeats)
            metrics["speed"] = pruned_speed
            metrics["dense_speed"] = dense_speed
            metrics["speedup"] = speedup(dense_speed, pruned_speed)
        config = {"benchmark": "scale", "model": f"random LLaMA-7B-shaped ({args.layers} layers, seed 0)",
                  "method": name, "ratio": args.ratio, "calibration": "uniform random token ids (seed 0)",
                  "nsamples": nsamples, "seqlen": seqlen, "device": args.device, "dtype": args.dtype,
                  "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                  "speed": args.speed, "round_to": args.round_to}
        path = write_record("bench_scale", config, metrics)
        line = (f"{name:>10}: prune {result.seconds:8.2f} s = {metrics['prune_over_forward']:6.2f} x forward "
                f"({forward:.2f} s over {nsamples}x{seqlen}); params {result.params_before / 1e9:.3f} B -> "
                f"{result.params_after / 1e9:.3f} B; peak {result.peak_memory}")
        if args.speed:
            best = metrics["speedup"][-1]
            line += f"; prefill 8x512 speedup {best['measured']:.2f} (ideal {best['ideal']:.2f})"
        print(line + f"  [{path.name}]", flush=True)
        del model, result
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
