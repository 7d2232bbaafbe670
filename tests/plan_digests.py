"""Digests of the plans every method makes on the tiny models: kept units, compensation biases and the
pruned weights (restorations included). `python -m tests.plan_digests` rewrites tests/data/plan_digests.json;
test_plan_digests checks that the current code reproduces it bit for bit."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch

DIGESTS = Path(__file__).parent / "data" / "plan_digests.json"

# (model, method, ratio, options): every method at its defaults, plus the variants the notebooks run.
CASES = [
    *[("llama", m, r, {}) for m in ("flap", "wanda_sp", "llm_pruner", "magnitude", "random", "cfsp", "fasp", "saap")
      for r in (0.3, 0.5)],
    *[("llama", "flap", 0.5, {"structure": s}) for s in ("UL-UM", "UL-MM", "AL-MM")],
    *[("llama", "flap", 0.5, {"metric": m}) for m in ("IFV", "WIFN")],
    ("llama", "flap", 0.5, {"bias_compensation": False}),
    ("llama", "flap", 0.3, {"attention": False}),
    ("llama", "flap", 0.3, {"round_to": 8}),
    ("llama", "wanda_sp", 0.3, {"allocation": "global", "attention": False}),
    ("llama", "wanda_sp", 0.3, {"allocation": "global"}),
    ("llama", "wanda_sp", 0.3, {"round_to": 32}),
    ("llama", "magnitude", 0.3, {"attention": False}),
    ("llama", "llm_pruner", 0.3, {"importance": "param_mix"}),
    ("llama", "llm_pruner", 0.3, {"importance": "vectorize", "layer_start": 0, "layer_end": 3}),
    ("llama", "llm_pruner", 0.3, {"importance": "l2", "round_to": 8}),
    ("llama", "llm_pruner", 0.0, {"target_params": 0.2}),
    ("llama", "cfsp", 0.3, {"fine_metric": "relative"}),
    ("llama", "cfsp", 0.3, {"round_to": 8, "importance_tokens": 131072}),
    ("llama", "fasp", 0.3, {"restore": False}),
    ("llama", "fasp", 0.3, {"sequential": False}),
    ("llama", "fasp", 0.3, {"attention": False, "round_to": 8}),
    ("llama", "saap", 0.3, {"fusion": "learned"}),
    ("llama", "saap", 0.3, {"scope": "type"}),
    *[("opt", m, 0.3, {}) for m in ("flap", "wanda_sp", "fasp", "llm_pruner")],
]


def case_name(case) -> str:
    family, method, ratio, options = case
    return f"{family}/{method}/{ratio}/" + ",".join(f"{k}={v}" for k, v in sorted(options.items()))


def _sha(value) -> str:
    return hashlib.sha256(value).hexdigest()[:16]


def digest(case) -> dict:
    from structprune import prune
    from structprune.data import random_calibration
    from structprune.models import tiny_llama, tiny_opt

    family, method, ratio, options = case
    model = tiny_llama() if family == "llama" else tiny_opt()
    calibration = random_calibration(256, nsamples=12, seqlen=24, seed=1)
    if "target_params" in options:  # LLM-Pruner's own option (prune's target_params is the general one)
        from structprune.methods import METHODS, resolve_options

        spec = METHODS[method]
        result = prune(copy.deepcopy(model), spec.composition(**resolve_options(spec, options)), ratio,
                       calibration=calibration)
    else:
        result = prune(copy.deepcopy(model), method, ratio, calibration=calibration, **options)
    plan = result.plan
    units = json.dumps([plan.kept_groups, plan.kept_channels, plan.kept_values], sort_keys=True).encode()
    biases = json.dumps([plan.o_bias, plan.down_bias]).encode()
    state = hashlib.sha256()
    for key, tensor in sorted(result.model.state_dict().items()):
        state.update(key.encode())
        state.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"kept": kept_counts(plan), "units": _sha(units), "biases": _sha(biases),
            "weights": state.hexdigest()[:16], "params_after": result.params_after}


def kept_counts(plan) -> dict[str, list]:
    """Readable beside the hashes: per layer, how many KV groups and MLP channels (and value channels or query
    heads, per KV group) were kept."""
    def count(per_layer):
        return [None if units is None else len(units) if not units or isinstance(units[0], int)
                else [len(u) for u in units] for units in per_layer]

    counts = {"groups": count(plan.kept_groups), "channels": count(plan.kept_channels)}
    for kind in ("values", "heads"):  # value-channel and query-head units, where the plan has them
        if getattr(plan, f"kept_{kind}", None):
            counts[kind] = count(getattr(plan, f"kept_{kind}"))
    return counts


def main() -> None:
    digests = {case_name(case): digest(case) for case in CASES}
    DIGESTS.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    print(f"{len(digests)} digests -> {DIGESTS}")


if __name__ == "__main__":
    main()
