"""Fidelity to the official FLAP / Wanda-sp code: the same protocol with this project's implementations.

The official code knows no grouped-query attention, so it ran on a multi-head copy of the embedded
SmolLM2-135M (each KV head repeated for its three query heads: the same function, 147.7 M parameters):
- FLAP: WIFV, AL-AM, bias compensation, 1024 x 128 calibration windows (seed 0) of WikiText-2 joined with
  spaces (offline: the validation split); Wanda-sp: 128 x 128 windows of the local C4 sample (seed 0);
- evaluation: the first 512 windows of 128 tokens of the WikiText-2 test split, joined with blank lines.
The official figures (fp32 on this CPU, patched only for head_dim 64, rope_theta, the layer count and the
CPU) are typed below with their source; this script computes ours beside them and writes one record to
results/runs/fidelity/. About 25 min on the 2-core CPU (FLAP's calibration pass is paid once for both ratios).
"""

from __future__ import annotations

import argparse
import copy
import time

OFFICIAL = {  # (method, ratio) -> (perplexity, parameters after, prune seconds), from the official code's run
    ("flap", 0.2): (89.32, 123_919_488, 2578.0),
    ("flap", 0.5): (825.76, 88_103_808, None),
    ("wanda_sp", 0.2): (139.21, 127_482_048, None),
}
OFFICIAL_DENSE = 56.41
CALIBRATION = {"flap": ("wikitext2", 1024, 128), "wanda_sp": ("c4", 128, 128)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=512, help="evaluation windows (the protocol: 512)")
    args = parser.parse_args()

    from structprune import calibration_batches, load_model, perplexity, prune
    from structprune.architectures import count_parameters
    from structprune.models import repeat_kv_heads
    from structprune.records import write_record

    gqa, tokenizer = load_model("embedded")
    model = repeat_kv_heads(gqa)
    del gqa
    dense = perplexity(model, tokenizer, "wikitext2", "test", 128, args.windows)
    rows = [{"method": "dense", "ratio": 0.0, "perplexity": dense["perplexity"], "ci95": dense["ci95"],
             "params_after": count_parameters(model), "official_perplexity": OFFICIAL_DENSE}]
    print(f"dense: {dense['perplexity']:.2f} (official {OFFICIAL_DENSE}), {count_parameters(model):,} parameters")
    for (method, ratio), (official_ppl, official_params, official_seconds) in OFFICIAL.items():
        dataset, nsamples, seqlen = CALIBRATION[method]
        ids = calibration_batches(tokenizer, dataset, nsamples, seqlen, seed=0)
        pruned = copy.deepcopy(model)
        start = time.perf_counter()
        result = prune(pruned, method, ratio, calibration=ids)
        seconds = time.perf_counter() - start
        ppl = perplexity(pruned, tokenizer, "wikitext2", "test", 128, args.windows)
        rows.append({"method": method, "ratio": ratio, "perplexity": ppl["perplexity"], "ci95": ppl["ci95"],
                     "params_after": result.params_after, "prune_seconds": seconds,
                     "official_perplexity": official_ppl, "official_params_after": official_params,
                     "official_prune_seconds": official_seconds,
                     "perplexity_gap": ppl["perplexity"] / official_ppl - 1,
                     "params_gap": result.params_after - official_params})
        print(f"{method} {ratio:.0%}: {ppl['perplexity']:.2f} (official {official_ppl}; "
              f"{ppl['perplexity'] / official_ppl - 1:+.1%}), {result.params_after:,} parameters (official "
              f"{official_params:,}; {result.params_after - official_params:+,}), pruned in {seconds:.0f} s"
              + (f" (official {official_seconds:.0f} s)" if official_seconds else ""))
        del pruned
    config = {"benchmark": "fidelity_official", "model": "embedded, multi-head copy", "eval": ["wikitext2", "test",
              128, args.windows], "calibration": {m: list(c) for m, c in CALIBRATION.items()}, "seed": 0}
    print(f"record: {write_record('fidelity', config, {'rows': rows})}")


if __name__ == "__main__":
    main()
