"""The method registry and `prune`, the public entry point.

Each method is a short recipe in its own file that reads like its paper's algorithm box. A recipe has
the signature `recipe(model, ratio, calibration, **options) -> Plan`: it prunes the model in place
(so sequential methods can re-run pruned layers) and returns the plan it applied.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..allocate import Plan, check_ratio
from ..architectures import adapter_for, count_parameters


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # how outputs name the method ("-style" where the spec says the original is not confirmed)
    recipe: Callable[..., Plan]
    defaults: dict  # every option and its paper default
    calibration: tuple[str | None, int, int]  # the paper's (dataset, nsamples, seqlen); dataset None = no data
    summary: str
    source: str = ""
    option_help: dict = field(default_factory=dict)
    # False when the method also changes kept weights (FASP's restoration): its plan alone does not
    # rebuild the pruned model, so experiments re-run the (deterministic) pruning instead.
    plan_rebuilds_model: bool = True
    label_of: Callable[[dict], str] | None = None  # the label of a variant chosen by options

    def label_for(self, options: dict) -> str:
        """How outputs name this method run with `options` (e.g. "Wanda-sp (FFN, global)")."""
        return self.label_of(options) if self.label_of else self.label


def ffn_variant_label(base: str, options: dict) -> str:
    """`base`, marked when options restrict it to FFN channels or a global threshold (CFSP's baselines)."""
    marks = [m for m, on in (("FFN", options.get("attention") is False),
                             ("global", options.get("allocation") == "global")) if on]
    return f"{base} ({', '.join(marks)})" if marks else base


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: available methods are {', '.join(sorted(METHODS))}")
    return METHODS[name]


def resolve_options(method: Method, options: dict) -> dict:
    """The method's defaults updated by `options`; unknown options fail, listing the valid ones."""
    unknown = sorted(set(options) - set(method.defaults))
    if unknown:
        valid = ", ".join(f"{k} (default {v!r})" for k, v in method.defaults.items()) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for method {method.name!r}; valid options: {valid}")
    return {**method.defaults, **options}


@dataclass
class PruneResult:
    model: torch.nn.Module
    plan: Plan
    method: str
    label: str
    ratio: float
    options: dict
    calibration: dict
    seconds: float
    params_before: int
    params_after: int
    peak_memory: dict = field(default_factory=dict)  # CUDA max allocated, or the process's peak RSS on CPU

    def summary(self) -> dict:
        return {"method": self.method, "label": self.label, "ratio": self.ratio, "options": self.options,
                "calibration": self.calibration, "seconds": self.seconds, "params_before": self.params_before,
                "params_after": self.params_after, "peak_memory": self.peak_memory, "plan": self.plan.summary()}


def check_finite_weights(model) -> None:
    """Refuse weights with NaN or Inf: every score computed from them would be meaningless."""
    bad = [name for name, param in model.named_parameters() if not torch.isfinite(param).all()]
    if bad:
        raise FloatingPointError(f"NaN or Inf in the weights of {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}: "
                                 "the checkpoint is damaged or was loaded in a dtype that overflows; reload it "
                                 "(in float32) before pruning")


def prune(model, method: str, ratio: float, calibration: torch.Tensor | str | None = None, tokenizer=None,
          nsamples: int | None = None, seqlen: int | None = None, seed: int = 0, data_path=None,
          **options) -> PruneResult:
    """Prune `model` in place with a registered method and return the result (plan, timings, parameters).

    calibration: a [samples, tokens] tensor of token ids, or a dataset name (wikitext2, ptb, c4,
    bookcorpus) read with `tokenizer`; default: the method's paper calibration set. nsamples/seqlen
    default to the paper's. Options not given take the method's paper defaults (`structprune methods`).
    """
    spec = get_method(method)
    ratio = check_ratio(ratio)
    if "seed" in spec.defaults:  # methods that draw random numbers follow the run's seed
        options.setdefault("seed", seed)
    options = resolve_options(spec, options)
    adapter_for(model)  # unsupported architecture: fail before any work
    check_finite_weights(model)
    dataset, paper_nsamples, paper_seqlen = spec.calibration
    info: dict = {"dataset": None}
    if isinstance(calibration, torch.Tensor):
        ids = calibration
        info = {"dataset": "tensor", "nsamples": ids.shape[0], "seqlen": ids.shape[1]}
    elif dataset is None and calibration is None:
        ids = None
    else:
        from ..data import calibration_batches, calibration_split

        dataset = calibration or dataset
        if tokenizer is None:
            raise ValueError(f"method {method!r} calibrates on {dataset!r}: pass tokenizer= (or a tensor of token ids)")
        nsamples, seqlen = nsamples or paper_nsamples, seqlen or paper_seqlen
        ids = calibration_batches(tokenizer, dataset, nsamples, seqlen, seed, data_path)
        info = {"dataset": dataset, "split": calibration_split(dataset, data_path), "nsamples": nsamples,
                "seqlen": seqlen, "seed": seed}
    if ids is not None:
        info["token_sha256"] = hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest()[:16]
    params_before = count_parameters(model)
    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    torch.manual_seed(seed)
    plan = spec.recipe(model, ratio, ids, **options)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if ratio > 0 and plan.params_removed == 0:
        shapes = sorted({(len(g), len(c)) for g, c in zip(plan.kept_groups, plan.kept_channels, strict=True)})
        raise ValueError(f"{method} at ratio {ratio} removes no unit of this model (layers keep (KV groups, "
                         f"channels) = {shapes}): the model is too small for this ratio, since whole units are "
                         "removed; ask for a larger ratio")
    if cuda:
        peak = {"cuda_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20}
    else:
        import resource

        peak = {"process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return PruneResult(model=model, plan=plan, method=method, label=spec.label_for(options), ratio=ratio, options=options,
                       calibration=info, seconds=seconds, params_before=params_before,
                       params_after=count_parameters(model), peak_memory=peak)


# Register the recipes (each file calls `register`).
from . import cfsp, fasp, flap, llm_pruner, magnitude, random_sp, saap, wanda_sp  # noqa: E402,F401
