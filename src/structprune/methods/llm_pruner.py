"""LLM-Pruner, block-wise (Ma et al., NeurIPS 2023, arXiv 2305.11627).

Spec: shared/specs/flap_wanda_sp_llm_pruner.md §4 (and §7.3-7.4 for grouped-query attention).

    X     <- 10 BookCorpus windows x 64 tokens (seed 42)
    G     <- dL/dW of the LM loss on X, for the prunable linears of the layers in range only
    F     <- (param_mix) diagonal Fisher: mean over samples of (dL_n/dW)^2, one backward per sample
    per parameter k: s_k = W_k G_k (first order), q_k = 1/2 W_k^2 F_kk (second order)
    per row / column (a channel of a coupled linear):
        vectorize: |sum_k s_k|    param_first (Element^1): sum_k |s_k|    param_mix (Element^2): sum_k |s_k - q_k|
    group score = sum over the group's members:
        KV group g: q rows of its n_rep query heads (contiguous: heads g*n_rep ... g*n_rep + n_rep - 1),
                    k and v rows of KV head g, o_proj columns of its query heads
                    (the original's GQA path credits strided query heads: a bug, not reproduced; §7.3)
        MLP channel c: gate row c, up row c, down_proj column c
    in every layer of the range (paper: 4-29 of LLaMA-7B's 32), remove n = C - int(C (1 - r)) lowest groups
    and channels; the ratio is per group (r = 0.25 ~ 20 % of all parameters of LLaMA-7B).
"""

from __future__ import annotations

import torch

from ..allocate import Plan, keep_highest, round_kept
from ..architectures import (
    adapter_for,
    attention_of,
    decoder_layers,
    head_dim,
    layer_shapes,
    mlp_of,
    queries_per_group,
)
from ..surgery import apply_plan
from . import Method, register
from .common import empty_plan

IMPORTANCES = ("param_first", "param_mix", "vectorize", "param_second", "l1", "l2", "random")


def default_layer_range(num_layers: int) -> tuple[int, int]:
    """The paper's LLaMA-7B range, layers [4, 30) of 32, scaled to the model's depth."""
    return round(4 * num_layers / 32), round(30 * num_layers / 32)


def _members(model, index: int) -> dict[str, torch.nn.Linear]:
    adapter = adapter_for(model)
    layer = decoder_layers(model)[index]
    attn, mlp = attention_of(layer, adapter), mlp_of(layer, adapter)
    members = {"q": attn.get_submodule(adapter.q), "k": attn.get_submodule(adapter.k),
               "v": attn.get_submodule(adapter.v), "o": attn.get_submodule(adapter.o),
               "up": mlp.get_submodule(adapter.up), "down": mlp.get_submodule(adapter.down)}
    if adapter.gate:  # OPT's MLP has no gate
        members["gate"] = mlp.get_submodule(adapter.gate)
    return members


def lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over all predicted tokens (LLM-Pruner: labels = inputs), computed in
    at least float32 (half-precision logits are upcast, float64 ones kept)."""
    logits = model(ids, use_cache=False).logits
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def lm_loss_gradients(model, calibration: torch.Tensor, layers: range, second_order: bool):
    """Gradients (and, if asked, the diagonal Fisher) of the LM loss for the prunable linears of `layers`
    only; every other parameter is frozen, so no gradient memory is spent on it."""
    linears = [m for i in layers for m in _members(model, i).values()]
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for m in linears:
        m.weight.requires_grad_(True)
    device = next(model.parameters()).device
    ids = calibration.to(device)
    fisher = {m: torch.zeros_like(m.weight, dtype=torch.float64) for m in linears} if second_order else None
    try:
        if second_order:
            for sample in ids:
                model.zero_grad(set_to_none=True)
                lm_loss(model, sample[None]).backward()
                for m in linears:
                    fisher[m] += m.weight.grad.double() ** 2 / ids.shape[0]
        model.zero_grad(set_to_none=True)
        lm_loss(model, ids).backward()
        grads = {m: m.weight.grad.double() for m in linears}
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in saved.items():
            p.requires_grad_(flag)
    return grads, fisher


def channel_importance(weight: torch.Tensor, grad: torch.Tensor | None, fisher: torch.Tensor | None,
                       importance: str, dim: int) -> torch.Tensor:
    """Per-channel importance of one linear: reduce over `dim` (1 for rows/outputs, 0 for columns/inputs)."""
    w = weight.detach().double()
    if importance == "l1":
        return w.abs().sum(dim)
    if importance == "l2":
        return (w ** 2).sum(dim)
    s = w * grad
    if importance == "vectorize":
        return s.sum(dim).abs()
    if importance == "param_first":
        return s.abs().sum(dim)
    q = 0.5 * w ** 2 * fisher
    if importance == "param_mix":
        return (s - q).abs().sum(dim)
    if importance == "param_second":
        return q.abs().sum(dim)
    raise ValueError(f"unknown importance {importance!r}: choose one of {', '.join(IMPORTANCES)}")


def group_scores(model, index: int, grads: dict, fisher: dict | None, importance: str):
    """(KV-group scores, MLP-channel scores) of one layer: sums over each group's coupled members."""
    m = _members(model, index)
    d, n_rep = head_dim(model.config), queries_per_group(model.config)

    def imp(name, dim):
        linear = m[name]
        return channel_importance(linear.weight, grads.get(linear) if grads else None,
                                  fisher.get(linear) if fisher else None, importance, dim)

    query_rows = imp("q", 1) + imp("o", 0)  # q rows and o_proj columns share the query-head index
    kv_rows = imp("k", 1) + imp("v", 1)
    groups = query_rows.view(-1, n_rep * d).sum(1) + kv_rows.view(-1, d).sum(1)  # contiguous query heads
    channels = imp("up", 1) + imp("down", 0) + (imp("gate", 1) if "gate" in m else 0)
    return groups, channels


def _removed_params(shapes, layers: range, ratio: float) -> int:
    return sum((s.kv_groups - int(s.kv_groups * (1 - ratio))) * s.group_params
               + (s.channels - int(s.channels * (1 - ratio))) * s.channel_params for i, s in enumerate(shapes)
               if i in layers)


def ratio_for_target(model, layers: range, target_params: float) -> float:
    """The per-group ratio whose removal is closest to `target_params` x all parameters of the model."""
    from ..architectures import count_parameters

    shapes, goal = layer_shapes(model), target_params * count_parameters(model)
    candidates = [r / 1000 for r in range(1000)]
    return min(candidates, key=lambda r: (abs(_removed_params(shapes, layers, r) - goal), r))


def llm_pruner(model, ratio: float, calibration: torch.Tensor, importance: str = "param_first",
               layer_start: int | None = None, layer_end: int | None = None, target_params: float | None = None,
               round_to: int = 1, seed: int = 42) -> Plan:
    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}: choose one of {', '.join(IMPORTANCES)}")
    num_layers = len(decoder_layers(model))
    start, end = default_layer_range(num_layers)
    layers = range(start if layer_start is None else layer_start, end if layer_end is None else layer_end)
    if not (0 <= layers.start < layers.stop <= num_layers):
        raise ValueError(f"layer range [{layers.start}, {layers.stop}) is not inside the model's {num_layers} layers")
    if target_params is not None:
        if not 0 <= target_params < 1:
            raise ValueError(f"target_params must be a fraction in [0, 1) of all parameters, got {target_params}")
        ratio = ratio_for_target(model, layers, target_params)
    needs_gradients = importance not in ("l1", "l2", "random")
    if needs_gradients and calibration is None:
        raise ValueError("LLM-Pruner's Taylor importance needs calibration data")
    grads, fisher = lm_loss_gradients(model, calibration, layers, importance in ("param_mix", "param_second")) \
        if needs_gradients else (None, None)
    generator = torch.Generator().manual_seed(seed)
    plan = empty_plan(model, "llm_pruner", ratio, {
        "importance": importance, "layer_start": layers.start, "layer_end": layers.stop,
        "target_params": target_params, "per_group_ratio": ratio, "round_to": round_to, "seed": seed})
    for index in layers:
        if importance == "random":
            shape = layer_shapes(model)[index]
            groups = torch.rand(shape.kv_groups, generator=generator, dtype=torch.float64)
            channels = torch.rand(shape.channels, generator=generator, dtype=torch.float64)
        else:
            groups, channels = group_scores(model, index, grads, fisher, importance)
        plan.kept_groups[index] = keep_highest(groups, int(groups.numel() * (1 - ratio)))
        plan.kept_channels[index] = round_kept(keep_highest(channels, int(channels.numel() * (1 - ratio))),
                                               channels, round_to)
    apply_plan(model, plan)
    return plan


register(Method(
    name="llm_pruner",
    label="LLM-Pruner",
    recipe=llm_pruner,
    defaults={"importance": "param_first", "layer_start": None, "layer_end": None, "target_params": None,
              "round_to": 1, "seed": 42},
    calibration=("bookcorpus", 10, 64),
    summary="block-wise Taylor importance of coupled groups, uniform per-group ratio inside a layer range",
    source="Ma et al., NeurIPS 2023 (arXiv 2305.11627); horseee/LLM-Pruner @128a07d",
    option_help={"importance": "param_first | param_mix | vectorize | param_second | l1 | l2 | random",
                 "layer_start": "first pruned layer (default: 4/32 of the depth)",
                 "layer_end": "end of the pruned range, exclusive (default: 30/32 of the depth)",
                 "target_params": "ask for a whole-model parameter fraction instead of the per-group ratio",
                 "round_to": "keep MLP channel counts a multiple of k", "seed": "seed of the random importance"},
))
