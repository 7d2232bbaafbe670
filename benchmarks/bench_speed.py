"""Speed target of the pruned models (CPU): `make bench`.

For each method and ratio (default-profile pruning runs, shared with notebooks 01 and 05 through their
records), the measured prefill speedup over dense at the largest shape (batch 8 x 512) against the ideal
(MACs ratio from the per-layer shapes). Target: measured >= 0.9 x ideal. Decode is reported as measured.

    python benchmarks/bench_speed.py --methods flap,wanda_sp --ratios 0.2,0.5 --round-to 1
    python benchmarks/bench_speed.py --methods llm_pruner,saap --ratios 0.2 --fresh   # SAAP's +5 % claim

Speed records are reused by default; `--fresh` measures every model again in this process (nothing is read
from or written to the speed records), so models compared with each other are measured back to back.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--methods", default="flap,wanda_sp,llm_pruner")
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--round-to", type=int, default=1, help="keep MLP channel counts a multiple of k")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="measure again instead of reading speed records")
    args = parser.parse_args()

    from structprune.experiments import pruning_run, rebuild, speed_run
    from structprune.profiles import profile_settings
    from structprune.speed import speed, speedup

    settings = profile_settings(args.profile)

    def measure(record: dict) -> dict:
        if args.fresh:
            return speed(rebuild(record)[0], repeats=args.repeats, threads=args.threads, **settings["speed"])
        return speed_run(record, args.threads, args.repeats, **settings["speed"])["metrics"]["speed"]

    dense = measure(pruning_run(settings, "dense", 0.0))
    print(dense["protocol"])
    worst = None
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for method in args.methods.split(","):
            options = {"round_to": args.round_to} if args.round_to != 1 else {}
            record = pruning_run(settings, method, ratio, options)
            measured = measure(record)
            largest = speedup(dense, measured)[-1]
            decode = ", ".join(f"batch {p['batch']} {p['tokens_per_second'] / d['tokens_per_second']:.2f}x"
                               for d, p in zip(dense["decode"], measured["decode"], strict=True))
            print(f"{record['config']['label']:>10} {ratio:.0%}: prefill {largest['batch']}x{largest['tokens']} "
                  f"{largest['measured']:.2f}x, ideal {largest['ideal']:.2f}x -> {largest['fraction_of_ideal']:.2f} of "
                  f"ideal; decode {decode}", flush=True)
            if worst is None or largest["fraction_of_ideal"] < worst[0]:
                worst = (largest["fraction_of_ideal"], method, ratio)
    fraction, method, ratio = worst
    print(f"target prefill >= 0.9 x ideal: worst {method} {ratio:.0%} at {fraction:.2f} -> "
          f"{'met' if fraction >= 0.9 else 'NOT met'}")


if __name__ == "__main__":
    main()
