"""Why FASP-style restoration raises the embedded model's perplexity at 10-20 % (notebook 04), measured.

Embedded SmolLM2-135M, default profile's FASP calibration (WikiText-2 train, 32 x 256 tokens, seed 0); held-out
tokens: another 32 x 256 sample of WikiText-2 train (seed 1).

1. Layer level (one-shot: the dense model's inputs, so every variant cuts the same columns): for each decoder
   layer, the relative output error ||W X - V X_S||^2 / ||W X||^2 of o_proj and down_proj, computed exactly
   from Gram matrices, on the calibration tokens and on the held-out tokens, for no restoration and for least
   squares with damping 0 / 0.01 / 0.1 pulled toward zero (ridge) or toward the kept weights, and with four
   times the calibration tokens. Mean over the 30 layers.
2. End to end: FASP-style (sequential) pruned with each variant; WikiText-2 test and C4 validation perplexity on the first
   64 windows of 128 tokens (notebook 04's protocol), with 95 % intervals.
Writes results/runs/fasp_restoration/<hash>.json (each end-to-end run is its own record, so a rerun resumes).
"""

from __future__ import annotations

import copy

import torch

RATIOS = (0.1, 0.2)
SPLITS = {"wikitext2": "test", "c4": "validation"}  # the C4 sample is validation text
VARIANTS = {  # name -> (restore options, calibration samples, sequential)
    "no restoration": (None, 32, True),
    "least squares, damping 0.01 toward zero (FASP-style default)": ({"damping": 0.01, "damping_toward": "zero"}, 32, True),
    "least squares, damping 0.1 toward the kept weights": ({"damping": 0.1, "damping_toward": "kept"}, 32, True),
    "least squares, damping 0.01 toward the kept weights": ({"damping": 0.01, "damping_toward": "kept"}, 32, True),
    "least squares, damping 0.1 toward zero": ({"damping": 0.1, "damping_toward": "zero"}, 32, True),
    "least squares, damping 1 toward the kept weights": ({"damping": 1.0, "damping_toward": "kept"}, 32, True),
    "least squares, damping 0.01 toward zero, 4 x calibration": ({"damping": 0.01, "damping_toward": "zero"}, 128, True),
    "least squares, damping 0.01 toward zero, one-shot (dense inputs)": ({"damping": 0.01, "damping_toward": "zero"}, 32,
                                                                        False),
}


def fasp_style(restore: dict | None, sequential: bool):
    from structprune import compose

    if restore is None:
        return compose(score="wanda", allocation="uniform", compensation="none", attention_unit="value_channel",
                       sequential=sequential)
    return compose(score="wanda", allocation="uniform", compensation="least_squares", attention_unit="value_channel",
                   sequential=sequential, **restore)


def relative_error(weight: torch.Tensor, restored: torch.Tensor, kept: torch.Tensor, gram: torch.Tensor) -> float:
    """||W X - V X_S||^2 / ||W X||^2 = tr(D G D^T) / tr(W G W^T), D = W with V subtracted on the kept columns."""
    difference = weight.clone()
    difference[:, kept] -= restored
    return (torch.einsum("ij,jk,ik->", difference, gram, difference)
            / torch.einsum("ij,jk,ik->", weight, gram, weight)).item()


def layer_errors(model, tokenizer, ratio: float) -> dict:
    from structprune import calibration_batches, prune
    from structprune.architectures import queries_per_group
    from structprune.compensate import restore_columns
    from structprune.scores import down_proj, o_proj, output_linears
    from structprune.stats import collect_statistics
    from structprune.surgery import value_columns

    ids = {n: calibration_batches(tokenizer, "wikitext2", n, 256, seed=0) for n in (32, 128)}
    held_out = calibration_batches(tokenizer, "wikitext2", 32, 256, seed=1)
    grams = {name: collect_statistics(model, tokens, output_linears(model), gram=True)
             for name, tokens in (("calibration", ids[32]), ("calibration x4", ids[128]), ("held-out", held_out))}
    plan = prune(copy.deepcopy(model), fasp_style(None, False), ratio, calibration=ids[32]).plan
    n_rep, o_name, down_name = queries_per_group(model.config), *output_linears(model)
    cases = {"no restoration": None}
    for damping in (0.0, 0.01, 0.1):
        for toward in ("zero", "kept"):
            if damping or toward == "zero":
                cases[f"damping {damping} toward {toward}"] = ("calibration", damping, toward)
    cases["damping 0.01 toward zero, 4 x calibration"] = ("calibration x4", 0.01, "zero")
    errors = {case: {"calibration": {"o_proj": 0.0, "down_proj": 0.0}, "held-out": {"o_proj": 0.0, "down_proj": 0.0}}
              for case in cases}
    layers = len(plan.kept_channels)
    for index in range(layers):
        dv = o_proj(model, index).in_features // (n_rep * len(plan.kept_values[index]))
        for linear, name, kept in ((o_proj(model, index), o_name, value_columns(plan.kept_values[index], n_rep, dv)),
                                   (down_proj(model, index), down_name, torch.tensor(plan.kept_channels[index]))):
            weight = linear.weight.detach().double()
            key = name.split(".")[-1]
            for case, how in cases.items():
                restored = weight[:, kept] if how is None else restore_columns(
                    weight, grams[how[0]][index][name].gram, kept, how[1], toward=how[2])
                for tokens in ("calibration", "held-out"):
                    errors[case][tokens][key] += relative_error(weight, restored, kept,
                                                                grams[tokens][index][name].gram) / layers
    return errors


def main() -> None:
    from structprune import calibration_batches, load_model, perplexity, prune
    from structprune.records import run_once, write_record

    model, tokenizer = load_model("embedded")
    dense = {d: perplexity(model, tokenizer, d, SPLITS[d], 128, 64) for d in SPLITS}
    results = {"dense": {d: {"perplexity": r["perplexity"], "ci95": r["ci95"]} for d, r in dense.items()}}
    for ratio in RATIOS:
        results[f"layer_errors_{ratio}"] = layer_errors(model, tokenizer, ratio)
        for name, (restore, nsamples, sequential) in VARIANTS.items():
            def compute(restore=restore, nsamples=nsamples, sequential=sequential, ratio=ratio) -> tuple[dict, dict]:
                pruned = copy.deepcopy(model)
                ids = calibration_batches(tokenizer, "wikitext2", nsamples, 256, seed=0)
                result = prune(pruned, fasp_style(restore, sequential), ratio, calibration=ids)
                metrics = {"params_after": result.params_after}
                for dataset in ("wikitext2", "c4"):
                    r = perplexity(pruned, tokenizer, dataset, SPLITS[dataset], 128, 64)
                    metrics[dataset] = {"perplexity": r["perplexity"], "ci95": r["ci95"], "window_nll": r["window_nll"]}
                return metrics, {"prune_seconds": result.seconds}

            config = {"study": "fasp_restoration", "model": "embedded", "ratio": ratio, "variant": name,
                      "calibration": {"dataset": "wikitext2", "nsamples": nsamples, "seqlen": 256, "seed": 0},
                      "evaluation": {"seqlen": 128, "max_windows": 64}}
            record = run_once("fasp_restoration_run", config, compute)
            results[f"{name} @ {ratio}"] = {d: {k: v for k, v in record["metrics"][d].items() if k != "window_nll"}
                                            for d in ("wikitext2", "c4")}
            print(f"{ratio} {name}: WikiText-2 {record['metrics']['wikitext2']['perplexity']:.2f}, "
                  f"C4 {record['metrics']['c4']['perplexity']:.2f}")
        for case, by_tokens in results[f"layer_errors_{ratio}"].items():
            print(f"{ratio} layer error, {case}: " + "; ".join(
                f"{tokens} o {e['o_proj']:.4f} down {e['down_proj']:.4f}" for tokens, e in by_tokens.items()))
    config = {"study": "fasp_restoration", "model": "embedded", "ratios": list(RATIOS), "variants": list(VARIANTS),
              "held_out": "wikitext2 train, 32 x 256, seed 1", "evaluation": "first 64 windows of 128 tokens"}
    print(f"record: {write_record('fasp_restoration', config, results)}")


if __name__ == "__main__":
    main()
