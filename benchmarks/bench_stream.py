"""Benchmark of streamed pruning, a model larger than memory on this machine (`make bench-stream`).

1. Writes (once, cached) a random-weight LLaMA-2-7B-shaped checkpoint in bfloat16: 32 layers, hidden 4096,
   MLP 11008, 32 heads, vocabulary 32000, normal(0, 0.02) weights from a fixed seed, one safetensors shard
   per decoder layer (13.5 GB).
2. Each case in a fresh process (so its peak RSS is its own):
   - forward: one streamed forward pass over the calibration tokens (16 x 128 random token ids, seed 0):
     layer by layer, each layer read from the shards, run, dropped; then the final norm and head;
   - flap: FLAP at ratio 0.2 on the same tokens, streamed (a scoring pass, then a cutting pass that writes
     the pruned checkpoint), computing in bfloat16 like the checkpoint;
   - reload: the pruned checkpoint's shapes checked against its config, and its streamed perplexity on the
     first 4 windows of 128 tokens of WikiText-2 test ids (random-weight model: only finiteness is claimed).
3. The 135M embedded model, FLAP at 0.2 on 128 x 128 WikiText-2 tokens: in memory and streamed, peak RSS.
The page cache is dropped before each 7B-shaped case where permitted (root): every case reads from disk, as a
model larger than memory always does. Targets: peak RSS of the 7B-shaped streamed prune <= 4 GiB, and its wall time <= 1.5 x the streamed forward.
Writes one record to results/runs/bench_stream/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

SHAPE = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
         "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
         "tie_word_embeddings": False}


def write_random_checkpoint(folder: Path, seed: int = 0, layers: int | None = None) -> Path:
    """The random LLaMA-2-7B-shaped bfloat16 checkpoint (see the module docstring), written atomically."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from structprune.progress import progress

    if (folder / "model.safetensors.index.json").is_file():
        return folder
    config = LlamaConfig(**{**SHAPE, "num_hidden_layers": layers or SHAPE["num_hidden_layers"]}, dtype="bfloat16")
    with init_empty_weights():
        skeleton = LlamaForCausalLM(config)
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config.save_pretrained(tmp)
    generator = torch.Generator().manual_seed(seed)
    total = config.num_hidden_layers + 1
    groups = [[k for k in shapes if k.startswith(f"model.layers.{i}.")] for i in range(config.num_hidden_layers)]
    groups.append([k for k in shapes if not k.startswith("model.layers.")])
    weight_map, size = {}, 0
    for number, names in progress(enumerate(groups, 1), "writing the random 7B-shaped checkpoint", total=total,
                                  unit="shard"):
        tensors = {}
        for name in names:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shapes[name], dtype=torch.bfloat16)
            else:
                tensors[name] = (torch.randn(shapes[name], generator=generator) * 0.02).to(torch.bfloat16)
            size += tensors[name].numel() * 2
        shard = f"model-{number:05d}-of-{total:05d}.safetensors"
        save_file(tensors, str(tmp / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, shard))
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": size},
                                                                  "weight_map": weight_map}))
    os.replace(tmp, folder)
    return folder


def _case(name: str, source: str, output: str, nsamples: int, seqlen: int, queue) -> None:
    import torch

    from structprune.data import random_calibration
    from structprune.speed import peak_rss_mib

    ids = random_calibration(32000, nsamples=nsamples, seqlen=seqlen, seed=0)
    start = time.perf_counter()
    result: dict = {}
    if name == "forward":
        from structprune.streaming import open_stream, streamed_perplexity_of_ids

        stream = open_stream(source, torch.bfloat16)
        streamed_perplexity_of_ids(stream, ids.flatten(), seqlen, batch_size=8)
    elif name == "flap":
        from structprune import prune_streamed

        pruned = prune_streamed(source, output, "flap", 0.2, calibration=ids, dtype=torch.bfloat16, overwrite=True)
        result = {"params_before": pruned.params_before, "params_after": pruned.params_after,
                  "removed_fraction": 1 - pruned.params_after / pruned.params_before}
    elif name == "reload":
        from structprune.checkpoint import check_checkpoint
        from structprune.streaming import open_stream, streamed_perplexity_of_ids

        check_checkpoint(output)
        text = random_calibration(32000, nsamples=4, seqlen=seqlen, seed=1).flatten()
        ppl = streamed_perplexity_of_ids(open_stream(output, torch.bfloat16), text, seqlen, batch_size=4)
        result = {"perplexity_random_ids": ppl["perplexity"], "windows": ppl["windows"],
                  "output_bytes": sum(p.stat().st_size for p in Path(output).glob("*.safetensors"))}
    elif name in ("embedded_in_memory", "embedded_streamed"):
        from structprune import calibration_batches, load_model, prune, prune_streamed
        from structprune.models import local_tokenizer
        from structprune.streaming import local_checkpoint

        result["rss_after_imports_mib"] = peak_rss_mib()  # the interpreter, torch and transformers
        tokenizer = local_tokenizer(local_checkpoint("embedded"))
        ids = calibration_batches(tokenizer, "wikitext2", 128, 128, seed=0)
        start = time.perf_counter()
        if name == "embedded_in_memory":
            model, _ = load_model("embedded")
            result["rss_after_load_mib"] = peak_rss_mib()
            prune(model, "flap", 0.2, calibration=ids)
        else:
            prune_streamed("embedded", output, "flap", 0.2, calibration=ids, overwrite=True)
    result.update({"case": name, "seconds": time.perf_counter() - start,
                   "peak_rss_mib": peak_rss_mib(),
                   "threads": torch.get_num_threads()})
    queue.put(result)


def drop_page_cache() -> bool:
    """Write back and drop the kernel's page cache (root only), so that every case reads the checkpoint from
    disk, as a model larger than memory is always read; False where it is not permitted."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def run_case(*args) -> dict:
    # benchmarks/ is on the path when a benchmark runs as a script
    from bench_core import run_in_fresh_process

    return run_in_fresh_process(_case, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(Path.home() / ".cache" / "structprune" / "bench-llama2-7b-shaped"),
                        help="where the random checkpoint is cached and the pruned one written")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--layers", type=int, default=None, help="fewer layers, for a quick trial (not recorded)")
    parser.add_argument("--keep", action="store_true", help="keep the pruned checkpoint")
    args = parser.parse_args()

    from structprune.records import environment, write_record

    folder = Path(args.folder)
    source = folder / ("dense" if args.layers is None else f"dense-{args.layers}-layers")
    output = folder / "flap-0.2"
    start = time.perf_counter()
    write_random_checkpoint(source, layers=args.layers)
    print(f"random checkpoint: {source} ({time.perf_counter() - start:.0f} s)")
    results = {}
    cold = True
    for name in ("forward", "flap", "reload"):
        cold = drop_page_cache() and cold
        results[name] = run_case(name, str(source), str(output), args.nsamples, args.seqlen)
        print(f"{name:>8}: {results[name]['seconds']:7.1f} s, peak RSS {results[name]['peak_rss_mib']:7.0f} MiB "
              f"{ {k: v for k, v in results[name].items() if k not in ('case', 'seconds', 'peak_rss_mib')} }")
    small = folder / "embedded-flap-0.2"
    for name in ("embedded_in_memory", "embedded_streamed"):
        results[name] = run_case(name, "embedded", str(small), 128, 128)
        print(f"{name:>8}: {results[name]['seconds']:7.1f} s, peak RSS {results[name]['peak_rss_mib']:7.0f} MiB")
    shutil.rmtree(small, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(output, ignore_errors=True)
    ratio = results["flap"]["seconds"] / results["forward"]["seconds"]
    weights = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    print(f"streamed FLAP / streamed forward = {ratio:.2f} (target <= 1.5); peak RSS "
          f"{results['flap']['peak_rss_mib'] / 1024:.2f} GiB (target <= 4) against {weights / 2**30:.1f} GiB of weights")
    if args.layers is not None:
        return
    config = {"benchmark": "stream", "model": "random LLaMA-2-7B-shaped, bfloat16, seed 0", "shape": SHAPE,
              "calibration": "random token ids, seed 0", "nsamples": args.nsamples, "seqlen": args.seqlen,
              "method": "flap", "ratio": 0.2, "dtype": "bfloat16", "device": "cpu",
              "page_cache": "dropped before each case" if cold else "not dropped (not permitted)",
              "small_model": {"model": "embedded", "calibration": "wikitext2 128 x 128, seed 0", "method": "flap",
                              "ratio": 0.2}}
    path = write_record("bench_stream", config, {"cases": results, "prune_over_forward": ratio,
                                                 "weights_bytes": weights, "machine": environment()})
    print(f"record: {path}")


if __name__ == "__main__":
    main()
