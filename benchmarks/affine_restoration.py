"""Closed-form reconstruction beyond FASP's least squares: the kept columns and a bias refitted together
(`compensate.affine_least_squares`), against each method's own compensation, at matched parameter counts.

Embedded SmolLM2-135M; exactly 20 % and 40 % of the model's parameters removed (`target_params`); two families of
parts, each with the default profile's calibration of its method:
- FLAP's (WIFV score, AL-AM allocation; one-shot on the dense model's inputs; 512 x 128 WikiText-2 calibration
  tokens, seed 0: the validation split offline, `data.calibration_split`),
  compensated by FLAP's mean bias, by FASP's least squares (damping 0.01 toward zero), or by the affine refit
  (damping 0.01 toward the kept weights);
- FASP-style's (Wanda score, uniform rule, value channels; sequential; 32 x 256 WikiText-2 calibration tokens, seed 0), with its
  least squares or the affine refit.
Evaluation, never on calibration tokens: WikiText-2 test and C4 validation, first 64 windows of 128 tokens, 95 %
intervals, and a paired ratio of each variant to its method's own compensation on the same windows.
Writes results/runs/affine_restoration/<hash>.json per run (a rerun resumes) and prints the table that
docs/reproduction.md quotes.
"""

from __future__ import annotations

import copy

TARGETS = (0.2, 0.4)
SPLITS = {"wikitext2": "test", "c4": "validation"}
FAMILIES = {  # name -> (parts, calibration (samples, seqlen), {variant: compensation and its options})
    "FLAP's parts": (dict(score="wifv", allocation="flap"), (512, 128), {
        "mean bias (FLAP)": dict(compensation="mean_bias"),
        "least squares (FASP's)": dict(compensation="least_squares"),
        "affine least squares": dict(compensation="affine_least_squares")}),
    "FASP-style parts": (dict(score="wanda", allocation="uniform", attention_unit="value_channel", sequential=True),
                         (32, 256), {
        "least squares (FASP's)": dict(compensation="least_squares"),
        "affine least squares": dict(compensation="affine_least_squares")}),
}


def main() -> None:
    from structprune import calibration_batches, compose, load_model, perplexity, prune
    from structprune.data import calibration_split
    from structprune.evaluate import paired_perplexity
    from structprune.records import run_once

    model, tokenizer = load_model("embedded")
    rows = []
    for family, (parts, (nsamples, seqlen), variants) in FAMILIES.items():
        ids = calibration_batches(tokenizer, "wikitext2", nsamples, seqlen, seed=0)
        for target in TARGETS:
            reference = None
            for variant, compensation in variants.items():
                composition = compose(**parts, **compensation)

                def compute(composition=composition, target=target, ids=ids) -> tuple[dict, dict]:
                    pruned = copy.deepcopy(model)
                    result = prune(pruned, composition, target_params=target, calibration=ids)
                    metrics = {"params_before": result.params_before, "params_after": result.params_after}
                    for dataset, split in SPLITS.items():
                        r = perplexity(pruned, tokenizer, dataset, split, 128, 64)
                        metrics[dataset] = {k: r[k] for k in ("perplexity", "ci95", "windows", "window_nll", "seqlen")}
                    return metrics, {"prune_seconds": result.seconds}

                config = {"study": "affine_restoration", "model": "embedded", "target_params": target,
                          "parts": composition.describe(),
                          "calibration": {"dataset": "wikitext2", "split": calibration_split("wikitext2"), "nsamples": nsamples,
                                          "seqlen": seqlen, "seed": 0},
                          "evaluation": {"seqlen": 128, "max_windows": 64, "splits": SPLITS}}
                record = run_once("affine_restoration", config, compute)
                metrics = record["metrics"]
                reference = reference or metrics
                row = [family, f"{target:.0%}", variant, f"{metrics['params_after']:,}"]
                for dataset in SPLITS:
                    ppl = metrics[dataset]
                    paired = paired_perplexity(ppl, reference[dataset])
                    row += [f"{ppl['perplexity']:.2f} [{ppl['ci95'][0]:.2f}, {ppl['ci95'][1]:.2f}]",
                            "–" if metrics is reference else
                            f"{paired['ratio']:.3f} [{paired['ci95'][0]:.3f}, {paired['ci95'][1]:.3f}]"]
                rows.append(row)
                print(" | ".join(row), flush=True)
    print("\n| parts | removed | compensation | parameters | WikiText-2 | paired vs first | C4 | paired vs first |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
