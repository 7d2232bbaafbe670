"""llama.cpp speed of the 20 % and 50 % models of FLAP, Wanda-sp and LLM-Pruner with their MLP channel counts
rounded to a multiple of k, against the MACs ideal (notebook 05 times these models unrounded).

Default profile: embedded SmolLM2-135M, each method's own calibration, CPU float32 pruning and the profile's
perplexity protocol; the same engine protocol as notebook 05 (batch 1, 512 prompt tokens, 128 new tokens,
2 threads, median of 3 after a warm-up, f32 and q8_0 files). The dense engine records are notebook 05's, timed
on another day; the dense model is timed again here in each weight type, without a record, and the table also
gives each speedup against that fresh dense time (the right baseline for the models first timed in this run).
Writes pruning and engine_speed records under results/runs/ (a rerun resumes) and prints the table that
docs/reproduction.md quotes.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="flap,wanda_sp,llm_pruner")
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--round-to", default="32", help="comma-separated multiples k")
    parser.add_argument("--dtypes", default="f32,q8_0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from structprune import report
    from structprune.experiments import engine_speed_run, macs_of, pruning_run, rebuild
    from structprune.llamacpp import model_engine_speed
    from structprune.profiles import profile_settings

    settings = profile_settings("default")
    dtypes = args.dtypes.split(",")
    records = {"Dense": pruning_run(settings, "dense", 0.0)}
    for method in args.methods.split(","):
        for ratio in map(float, args.ratios.split(",")):
            for k in [1, *map(int, args.round_to.split(","))]:
                record = pruning_run(settings, method, ratio, {"round_to": k} if k != 1 else None)
                records[f"{report.method_label(record)} {ratio:.0%} round_to {k}"] = record
    runs = {(name, dtype): engine_speed_run(record, dtype, args.threads, args.repeats)
            for name, record in records.items() for dtype in dtypes}
    config = runs[("Dense", dtypes[0])]["config"]
    macs = {name: macs_of(record, config["prompt_tokens"], config["new_tokens"]) for name, record in records.items()}
    table = report.engine_rows(records, runs, macs, {}).drop(columns=["PyTorch prefill x"])

    model, tokenizer = rebuild(records["Dense"])
    drift = {}
    for dtype in dtypes:  # the dense model timed now, against its record
        now = model_engine_speed(model, tokenizer, dtype, config["prompt_tokens"], config["new_tokens"],
                                 args.threads, args.repeats)
        then = runs[("Dense", dtype)]["metrics"]["engine_speed"]
        drift[dtype] = {kind: now[f"{kind}_tokens_per_second"] / then[f"{kind}_tokens_per_second"]
                        for kind in ("prefill", "decode")}
        print(f"dense {dtype} timed now / in its record: prefill {drift[dtype]['prefill']:.3f}, "
              f"decode {drift[dtype]['decode']:.3f}")
    for kind in ("prefill", "decode"):
        table[f"{kind} of ideal, dense re-timed"] = [
            row[f"{kind} of ideal"] / drift[row.gguf][kind] for _, row in table.iterrows()]
    print(runs[("Dense", dtypes[0])]["metrics"]["engine_speed"]["protocol"])
    print(table.to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
