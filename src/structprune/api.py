"""The public entry points: `prune` a model in memory with a paper method or a composition of parts,
`prune_streamed` a checkpoint folder one layer at a time, and their result (`PruneResult`), after checking
what they are given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .allocate import check_ratio
from .architectures import adapter_for, count_parameters, window_bos_id
from .composition import COMPOSED, Composition
from .data import calibration_batches, calibration_split, token_digest
from .methods import get_method, resolve_options
from .options import SEED_LIMIT, check_option_values
from .pipeline import run
from .plan import Plan
from .records import environment
from .speed import peak_rss_mib
from .stats import all_finite
from .streaming import local_checkpoint, open_stream

# Where a composition calibrates unless told otherwise (FLAP's and LLM-Pruner's window length).
COMPOSITION_CALIBRATION = ("wikitext2", 128, 128)



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
    bad = [name for name, param in model.named_parameters()
           if param.device.type != "meta" and not all_finite(param)]  # streamed layers: checked when read
    if bad:
        raise FloatingPointError(f"NaN or Inf in the weights of {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}: "
                                 "the checkpoint is damaged or was loaded in a dtype that overflows; restore it, or "
                                 "reload it in float32")



def warn_unaligned_widths(plan: Plan, multiple: int = 8) -> list[int]:
    """Warn, loudly, when a plan for a GPU leaves MLP widths that are not multiples of `multiple`: GPU matrix
    kernels slow down sharply on such widths (LLaMA-7B-shaped on an H100: 3.4 x slower prefill than the same
    cut rounded to 8; results/runs/bench_scale). The layers it names."""
    import warnings

    odd = [i for i, kept in enumerate(plan.kept_channels) if len(kept) % multiple]
    if odd:
        warnings.warn(f"{len(odd)} of {len(plan.kept_channels)} layers keep an MLP width that is not a multiple of "
                      f"{multiple} (layers {odd[:6]}{' ...' if len(odd) > 6 else ''}): on a GPU such widths can make the "
                      f"pruned model slower than the dense one. Prune with round_to={multiple} (--option "
                      f"round_to={multiple}).", stacklevel=3)
    return odd



def method_parts(method: str | Composition, options: dict, seed: int | None) -> tuple[str, str, dict, Composition, tuple]:
    """(name, label, resolved options, composition, paper calibration) of a method name or a composition."""
    if isinstance(method, Composition):
        if options:
            raise ValueError(f"options {', '.join(sorted(options))} go into compose(...), not prune(...)")
        composition = method.check()
        return COMPOSED, composition.label, composition.describe(), composition, COMPOSITION_CALIBRATION
    spec = get_method(method)
    if seed is not None and "seed" in spec.defaults:  # methods that draw random numbers follow a given seed
        options.setdefault("seed", seed)
    options = resolve_options(spec, options)
    check_option_values(spec.composition, options, f"method {spec.name!r}")
    return spec.name, spec.label_for(options), options, spec.composition(**options), spec.calibration



def prune(model, method: str | Composition, ratio: float | None = None, calibration: torch.Tensor | str | None = None,
          tokenizer=None, nsamples: int | None = None, seqlen: int | None = None, seed: int | None = None,
          data_path=None, target_params: float | None = None, stream=None, **options) -> PruneResult:
    """Prune `model` in place with a paper method (by name) or a `compose(...)`d one; the result (plan,
    timings, parameters).

    calibration: a [samples, tokens] tensor of token ids, or a dataset name (wikitext2, ptb, c4, bookcorpus)
    read with `tokenizer`; default: the method's paper calibration set (compositions: WikiText-2, 128 x 128).
    nsamples/seqlen default to the paper's. seed: the calibration sample (default 0) and, when given, the
    seed of methods that draw random numbers (otherwise their own default). Options not given take the
    method's paper defaults (`structprune methods`).

    target_params: instead of a ratio, the fraction of the whole model's parameters to remove, met within
    one MLP channel: a search over the method's own ratio (its rule unchanged, on scores computed once) for
    the largest cut at or below it, then the shortfall as MLP channels spread evenly over the layers
    (`targets.top_up_channels`; `plan.extras` records target, top-up and achievement).

    stream: a `streaming.LayerStream` whose skeleton is `model`: prune one decoder layer resident, writing
    the cut layers to the stream's output checkpoint (`prune_streamed` does it from a checkpoint folder).
    """
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT):
        raise ValueError(f"seed must be a whole number in [0, 2**63), got {seed!r}")
    name, label, options, composition, (dataset, paper_nsamples, paper_seqlen) = method_parts(method, options, seed)
    seed = 0 if seed is None else seed
    if (ratio is None) == (target_params is None):
        raise ValueError("give a pruning ratio or target_params (the fraction of the model's parameters to remove), "
                         "one of them")
    if target_params is not None:
        if not isinstance(target_params, int | float) or isinstance(target_params, bool) or not 0 < target_params < 1:
            raise ValueError(f"target_params must be a fraction in (0, 1) of the model's parameters, got "
                             f"{target_params!r}")
        ratio = None
    else:
        ratio = check_ratio(ratio)
    adapter_for(model)  # unsupported architecture: fail before any work
    check_finite_weights(model)
    info: dict = {"dataset": None}
    if isinstance(calibration, torch.Tensor):
        ids = calibration
        info = {"dataset": "tensor", "nsamples": ids.shape[0], "seqlen": ids.shape[1]}
    elif not composition.needs_data():
        ids = None
    else:
        dataset = calibration or dataset
        if tokenizer is None:
            raise ValueError(f"method {name!r} calibrates on {dataset!r}: pass tokenizer= (or a tensor of token ids)")
        nsamples = paper_nsamples if nsamples is None else nsamples  # only an absent value means the paper's
        seqlen = paper_seqlen if seqlen is None else seqlen
        if not (isinstance(nsamples, int) and nsamples >= 1 and isinstance(seqlen, int) and seqlen >= 2):
            raise ValueError(f"calibration needs at least 1 sample of at least 2 tokens, got nsamples={nsamples!r}, "
                             f"seqlen={seqlen!r} (leave them out for the paper's {paper_nsamples} x {paper_seqlen})")
        context = getattr(model.config, "max_position_embeddings", None)
        if context and seqlen > context:
            raise ValueError(f"calibration seqlen {seqlen} is longer than the model's context ({context} tokens): "
                             f"use --seqlen {context} or less")
        ids = calibration_batches(tokenizer, dataset, nsamples, seqlen, seed, data_path, window_bos_id(model))
        info = {"dataset": dataset, "split": calibration_split(dataset, data_path), "nsamples": nsamples,
                "seqlen": seqlen, "seed": seed}
    if ids is not None:
        info["token_sha256"] = token_digest(ids)
    params_before = count_parameters(model)
    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    torch.manual_seed(seed)
    plan = run(model, ratio, ids, composition, method=name, options=options, target_params=target_params,
               stream=stream)
    if target_params is not None:
        ratio = plan.ratio
        plan.extras.update(target_params=target_params, achieved_fraction=1 - plan.params_after / plan.params_before)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if ratio > 0 and plan.params_removed == 0:
        shapes = sorted({(len(g), len(c)) for g, c in zip(plan.kept_groups, plan.kept_channels, strict=True)})
        raise ValueError(f"{label} at ratio {ratio} removes no unit of this model (layers keep (KV groups, "
                         f"channels) = {shapes}): the model is too small for this ratio, since whole units are "
                         "removed; ask for a larger ratio")
    if cuda:
        warn_unaligned_widths(plan)
        peak = {"cuda_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20}
    else:
        peak = {"process_peak_rss_mib": peak_rss_mib()}
    return PruneResult(model=model, plan=plan, method=name, label=label, ratio=ratio, options=options,
                       calibration=info, seconds=seconds, params_before=params_before,
                       params_after=count_parameters(model), peak_memory=peak)



def prune_streamed(model_dir: str, output: str, method: str | Composition, ratio: float | None = None,
                   calibration: torch.Tensor | str | None = None, nsamples: int | None = None,
                   seqlen: int | None = None, seed: int | None = None, data_path=None,
                   target_params: float | None = None, dtype: torch.dtype = torch.float32, device: str = "cpu",
                   overwrite: bool = False, provenance: dict | None = None,
                   before_commit: Callable[[PruneResult], object] | None = None, **options) -> PruneResult:
    """`prune` a local safetensors checkpoint (a folder, `embedded`, `tiny-smollm2`) that need not fit in
    memory: one decoder layer's weights resident at a time, the pruned checkpoint written layer by layer to
    `output` and renamed into place at the end (`streaming`). The same plan and weights as pruning in memory.
    The result's model is the skeleton (its decoder layers on the meta device): reload `output` to use it.
    before_commit(result) runs once the checkpoint is in place, before a checkpoint it replaces is deleted; if it
    fails, the replaced checkpoint is restored (`surgery.install_checkpoint`)."""
    from .models import local_tokenizer  # transformers: loaded when a checkpoint is streamed, not on import

    where = local_checkpoint(model_dir)
    stream = open_stream(where, dtype, device, output=output, overwrite=overwrite)
    try:
        tokenizer = local_tokenizer(where)
        result = prune(stream.model, method, ratio, calibration=calibration, tokenizer=tokenizer, nsamples=nsamples,
                       seqlen=seqlen, seed=seed, data_path=data_path, target_params=target_params, stream=stream,
                       **options)
        stream.write_rest()
        record = {"model": {"spec": model_dir, "path": str(where)}, "dtype": str(dtype), **(provenance or {}),
                  "method": result.method, "options": result.options, "calibration": result.calibration,
                  "streamed": True, "label": result.label, "params_before": result.params_before,
                  "params_after": result.params_after, "plan": result.plan.to_dict(), **environment()}
        stream.writer.finish(stream.model, tokenizer, record,
                             None if before_commit is None else lambda: before_commit(result))
    except BaseException:
        stream.writer.abort()
        raise
    return result
