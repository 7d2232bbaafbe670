"""The allocation search on the embedded model, against the allocation it starts from (`search.py`).

Embedded SmolLM2-135M; FLAP's parts (WIFV score, bias compensation) with its calibration of the default profile
(WikiText-2 train, 512 x 128, seed 0); the search starts from FLAP's own AL-AM allocation at exactly 20 % and
40 % of the model's parameters removed and moves KV groups and 32-channel MLP steps between layers. Fitness:
KL(dense || pruned) on 16 x 128 held-out WikiText-2 train tokens (seed 2). Evaluation, never on the search's
tokens: WikiText-2 test and C4 validation, first 64 windows of 128 tokens, 95 % intervals and a paired
comparison of the searched model with the start on the same windows.
Writes results/runs/allocation_search/<hash>.json per target (a rerun resumes).
--score/--allocation/--compensation search other parts the same way, e.g. notebook 06's best composition at 20 %:
--score activation --compensation affine_least_squares --targets 0.2.
"""

from __future__ import annotations

import argparse
import copy

SPLITS = {"wikitext2": "test", "c4": "validation"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="0.2,0.4")
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--offspring", type=int, default=4)
    parser.add_argument("--score", default="wifv")
    parser.add_argument("--allocation", default="flap")
    parser.add_argument("--compensation", default="mean_bias")
    args = parser.parse_args()

    from structprune import calibration_batches, compose, load_model, perplexity, prune
    from structprune.evaluate import paired_perplexity
    from structprune.records import run_once
    from structprune.search import search_allocation

    model, tokenizer = load_model("embedded")
    calibration = calibration_batches(tokenizer, "wikitext2", 512, 128, seed=0)
    held_out = calibration_batches(tokenizer, "wikitext2", 16, 128, seed=2)
    parts = compose(score=args.score, allocation=args.allocation, compensation=args.compensation)
    start = ("start (FLAP's AL-AM)" if (args.score, args.allocation, args.compensation) == ("wifv", "flap", "mean_bias")
             else f"start ({parts.label})")
    for target in map(float, args.targets.split(",")):
        def compute(target=target) -> tuple[dict, dict]:
            result = search_allocation(model, parts, target, calibration, held_out,
                                       generations=args.generations, offspring=args.offspring, seed=0)
            metrics = {"search": result.summary()}
            evaluations = {}
            for name, composition in ((start, parts), ("searched", result.composition)):
                pruned = copy.deepcopy(model)
                if name == "searched":
                    outcome = prune(pruned, composition, target, calibration=calibration)
                else:
                    outcome = prune(pruned, composition, target_params=target, calibration=calibration)
                evaluations[name] = {d: perplexity(pruned, tokenizer, d, split, 128, 64) for d, split in SPLITS.items()}
                metrics[name] = {"params_after": outcome.params_after, "params_before": outcome.params_before,
                                 **{d: {k: r[k] for k in ("perplexity", "ci95", "windows")}
                                    for d, r in evaluations[name].items()}}
            metrics["paired_searched_vs_start"] = {
                d: paired_perplexity(evaluations["searched"][d], evaluations[start][d]) for d in SPLITS}
            return metrics, {"search_seconds": result.seconds}

        config = {"study": "allocation_search", "model": "embedded", "target_params": target,
                  "parts": parts.describe(), "calibration": {"dataset": "wikitext2", "nsamples": 512,
                                                                  "seqlen": 128, "seed": 0},
                  "held_out": {"dataset": "wikitext2", "split": "train", "nsamples": 16, "seqlen": 128, "seed": 2},
                  "search": {"generations": args.generations, "offspring": args.offspring, "channel_step": 32,
                             "mutations": 2, "seed": 0},
                  "evaluation": {"seqlen": 128, "max_windows": 64, "splits": SPLITS}}
        record = run_once("allocation_search", config, compute)
        m = record["metrics"]
        print(f"target {target}: KL {m['search']['start_kl']:.4f} -> {m['search']['kl']:.4f} in "
              f"{m['search']['evaluations']} evaluations, {m['search']['seconds']:.0f} s")
        for name in (start, "searched"):
            print(f"  {name}: params {m[name]['params_after']:,}; " + "; ".join(
                f"{d} {m[name][d]['perplexity']:.2f} [{m[name][d]['ci95'][0]:.2f}, {m[name][d]['ci95'][1]:.2f}]"
                for d in SPLITS))
        for d, paired in m["paired_searched_vs_start"].items():
            print(f"  paired {d}: {paired}")


if __name__ == "__main__":
    main()
