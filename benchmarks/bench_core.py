"""Benchmark of the pruning core on the embedded model (CPU): `make bench`.

Measures, on 128 x 128 WikiText-2 calibration tokens (seed 0):
- a plain forward of the decoder over the calibration tokens (embeddings, layers, final norm; no lm_head),
- the statistics pass (layer by layer, hooks on o_proj and down_proj inputs, float64 accumulators),
  whose target is <= 1.3x the plain forward,
- total pruning wall time of each method at ratio 0.2, and each case's peak RSS,
each case in a fresh process (so peak memory is its own), median of `--repeats` runs.
Writes one record to results/runs/bench/.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time


def _case(name: str, nsamples: int, seqlen: int, repeats: int, queue) -> None:
    import torch

    from structprune import calibration_batches, load_model, prune
    from structprune.scores import output_linears
    from structprune.speed import peak_rss_mib
    from structprune.stats import collect_statistics

    model, tokenizer = load_model("embedded")
    ids = calibration_batches(tokenizer, "wikitext2", nsamples, seqlen, seed=0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if name == "forward":
            with torch.no_grad():
                for batch in ids.split(8):
                    model.model(batch, use_cache=False)
        elif name == "statistics":
            collect_statistics(model, ids, output_linears(model))
        else:
            import copy

            prune(copy.deepcopy(model), name, 0.2, calibration=ids)
        times.append(time.perf_counter() - start)
    peak_mib = peak_rss_mib()
    queue.put({"case": name, "seconds_median": statistics.median(times), "seconds": times, "peak_rss_mib": peak_mib,
               "threads": torch.get_num_threads()})


def run_in_fresh_process(case, *args) -> dict:
    """case(*args, queue) in a spawned process (so its peak memory is its own); what it put on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=case, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def run_case(name: str, nsamples: int, seqlen: int, repeats: int) -> dict:
    return run_in_fresh_process(_case, name, nsamples, seqlen, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="flap,wanda_sp,magnitude,random")
    args = parser.parse_args()

    from structprune.records import write_record

    cases = ["forward", "statistics", *args.methods.split(",")]
    results = {}
    for name in cases:
        results[name] = run_case(name, args.nsamples, args.seqlen, args.repeats)
        r = results[name]
        print(f"{name:>12}: median {r['seconds_median']:7.2f} s over {len(r['seconds'])} runs, "
              f"peak RSS {r['peak_rss_mib']:7.0f} MiB")
    ratio = results["statistics"]["seconds_median"] / results["forward"]["seconds_median"]
    print(f"statistics pass / plain forward = {ratio:.2f} (target <= 1.3)")
    config = {"benchmark": "core", "model": "embedded", "calibration": "wikitext2 (validation split)",
              "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": 0, "repeats": args.repeats,
              "ratio": 0.2, "device": "cpu"}
    path = write_record("bench", config, {"cases": results, "statistics_over_forward": ratio})
    print(f"record: {path}")


if __name__ == "__main__":
    main()
