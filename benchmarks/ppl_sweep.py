"""Perplexity of pruned SmolLM2-135M for several methods and ratios (the core result table).

Each (method, ratio) is one resumable run with a record under results/runs/<experiment>/; the dense model
is evaluated with the same protocol. Prints a Markdown table.

    python benchmarks/ppl_sweep.py --methods flap,wanda_sp,magnitude,random --ratios 0.2,0.5 \\
        --flap-nsamples 128 --max-windows 256
"""

from __future__ import annotations

import argparse
import copy

from structprune import load_model, perplexity, prune
from structprune.architectures import count_parameters
from structprune.methods import get_method
from structprune.records import run_once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--methods", default="flap,wanda_sp,magnitude,random")
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--flap-nsamples", type=int, default=None, help="FLAP calibration samples (paper: 1024)")
    parser.add_argument("--seqlen", type=int, default=128, help="evaluation window")
    parser.add_argument("--max-windows", type=int, default=256, help="first N windows of WikiText-2 test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--experiment", default="core_sweep")
    args = parser.parse_args()

    dense, tokenizer = load_model(args.model)
    evaluation = {"dataset": "wikitext2", "split": "test", "seqlen": args.seqlen, "max_windows": args.max_windows}

    def evaluate(model) -> dict:
        return perplexity(model, tokenizer, "wikitext2", "test", args.seqlen, args.max_windows)

    rows = []
    base = {"model": dense.structprune_source, "evaluation": evaluation, "seed": args.seed}
    params = count_parameters(dense)
    record = run_once(args.experiment, {**base, "method": "dense", "ratio": 0.0},
                      lambda: ({"perplexity": evaluate(dense), "params_before": params, "params_after": params}, {}))
    rows.append(("Dense", 0.0, record))
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for name in args.methods.split(","):
            method = get_method(name)
            dataset, nsamples, seqlen = method.calibration
            if name == "flap" and args.flap_nsamples:
                nsamples = args.flap_nsamples
            calibration = {"dataset": dataset, "nsamples": nsamples, "seqlen": seqlen}
            config = {**base, "method": name, "ratio": ratio, "calibration": calibration,
                      "options": method.defaults}

            def compute(name=name, ratio=ratio, dataset=dataset, nsamples=nsamples, seqlen=seqlen):
                model = copy.deepcopy(dense)
                result = prune(model, name, ratio, calibration=dataset, tokenizer=tokenizer, nsamples=nsamples,
                               seqlen=seqlen, seed=args.seed)
                metrics = {"perplexity": evaluate(model), "params_before": result.params_before,
                           "params_after": result.params_after, "plan": result.plan.summary(),
                           "peak_memory": result.peak_memory,
                           "calibration": result.calibration}
                return metrics, {"prune_seconds": result.seconds}

            record = run_once(args.experiment, config, compute)
            rows.append((method.label, ratio, record))
            print(f"{method.label} {ratio}: {record['metrics']['perplexity']['perplexity']:.2f}", flush=True)

    print(f"\nWikiText-2 test perplexity, seqlen {args.seqlen}, first {args.max_windows} windows; model {args.model}\n")
    print("| method | ratio | perplexity | parameters | removed of prunable | prune s |")
    print("|---|---|---|---|---|---|")
    for label, ratio, record in rows:
        m = record["metrics"]
        removed = m.get("plan", {}).get("removed_fraction_of_prunable", 0.0)
        seconds = record["timings"].get("prune_seconds", 0.0)
        print(f"| {label} | {ratio:.0%} | {m['perplexity']['perplexity']:.2f} | {m['params_after']:,} | {removed:.1%} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
