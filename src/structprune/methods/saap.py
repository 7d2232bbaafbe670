"""SAAP-style: adaptive pruning with structural importance awareness (Zheng, Ren et al., arXiv 2412.15127).

Spec: shared/specs/saap_cfsp_fasp.md §3. No code and no equations were available: the pipeline is SAAP's
(LLM-Pruner's groups and Taylor importances, uncertainty-weighted fusion, adaptive layer choice by an
importance fluctuation indicator, group fine-tuning), every formula below is the spec's reconstruction [INF],
and each choice is an option. Hence "SAAP-style".

    groups: LLM-Pruner's KV groups and MLP channels, every layer a candidate                       (§3.2)
    for each calibration mini-batch b: LM-loss gradients ->
        I_vec^b(G) = sum over members |sum_k W_k dL/dW_k|,  I_elem^b(G) = sum_k |W_k dL/dW_k|        (§3.3)
    I_vec, I_elem = means over batches
    fusion per scope (default: per layer and module type), Kendall et al.'s homoscedastic uncertainty:
        I(G) = I_vec(G) / (2 s1^2) + I_elem(G) / (2 s2^2),  s_k^2 = mean over the scope of I_k         (§3.4)
        ("closed" form; "learned": a few Adam steps on log s_k^2 of the same objective, which converge to it)
    module importance M_l = mean over the layer's groups of I (variances fitted per type across layers), per
    type, each type over its mean; fluctuation F_l = coefficient of variation over batches of M_l^b    (§3.5)
    candidate layers: all but the `excluded` most fluctuating ones (default: as many as LLM-Pruner's fixed
    range leaves out); chosen layers: the fewest least-important candidates whose per-group ratio stays within
    `max_layer_ratio`; the parameter target is LLM-Pruner's at the same ratio (its default layer range), so
    both are compared at equal size
    in each chosen layer: remove the lowest-I KV groups (uniform count) and MLP channels (distributed so the
    removed parameters match the target within one channel)
Recovery (group fine-tuning, QA-LoRA-style) lives in `structprune.recovery`.
"""

from __future__ import annotations

import math

import torch

from ..allocate import Plan, keep_highest
from ..architectures import decoder_layers, layer_shapes
from ..surgery import apply_plan
from . import Method, register
from .common import empty_plan
from .llm_pruner import _removed_params, default_layer_range, group_scores, lm_loss_gradients

FUSIONS = ("closed", "learned")
SCOPES = ("layer_type", "type", "global")


def fuse_closed(vector: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
    """I = I_vec / (2 s1^2) + I_elem / (2 s2^2) with s_k^2 = mean(I_k) over the scope (the minimiser of
    Kendall's objective; spec §3.4). A criterion that is zero over the whole scope carries no term."""
    fused = torch.zeros_like(element, dtype=torch.float64)
    for scores in (vector, element):
        scale = scores.double().mean()
        if scale > 0:
            fused = fused + scores.double() / (2 * scale)
    return fused


def fit_log_variances(vector: torch.Tensor, element: torch.Tensor, steps: int = 600, lr: float = 1.0) -> torch.Tensor:
    """The learned form: minimise sum_G [e^{-s1} I_vec(G) / 2 + e^{-s2} I_elem(G) / 2] + G (s1 + s2) / 2 over
    s_k = log s_k^2 with Adam, from s = log of the geometric mean of each criterion (far below the optimum for
    heavy-tailed scores: Adam moves about lr per step, so the rate starts at 1 and drops tenfold twice).
    Returns (s1, s2)."""
    scores = torch.stack([vector.double(), element.double()])  # [2, G]
    start = torch.log(scores.clamp_min(1e-300)).mean(1)
    log_var = start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([log_var], lr=lr)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=steps // 3, gamma=0.1)  # settle at the end
    count = scores.shape[1]
    scale = scores.mean(1).clamp_min(1e-300).detach()
    for _ in range(steps):
        optimiser.zero_grad()
        # divided by G and by the criterion's scale: the same minimiser, well-conditioned steps
        objective = ((torch.exp(-log_var) * scores.sum(1) / 2 + count * log_var / 2) / count
                     - torch.log(scale) / 2).sum()
        objective.backward()
        optimiser.step()
        schedule.step()
    return log_var.detach()


def fuse_learned(vector: torch.Tensor, element: torch.Tensor, steps: int = 600) -> torch.Tensor:
    if not (vector.double().mean() > 0 and element.double().mean() > 0):
        return fuse_closed(vector, element)  # a zero criterion has no finite variance to learn
    s1, s2 = fit_log_variances(vector, element, steps)
    return vector.double() * torch.exp(-s1) / 2 + element.double() * torch.exp(-s2) / 2


def fuse(vector: tuple[list[torch.Tensor], list[torch.Tensor]], element: tuple[list[torch.Tensor], list[torch.Tensor]],
         scope: str, fusion: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Fused (KV-group, MLP-channel) scores per layer from per-layer (groups, channels) score lists of both
    criteria; the variances are fitted per layer and type, per type, or over everything (`scope`)."""
    combine = fuse_closed if fusion == "closed" else fuse_learned
    if scope == "layer_type":
        return tuple([combine(v, e) for v, e in zip(vector[t], element[t], strict=True)] for t in (0, 1))
    if scope == "type":
        return tuple(list(combine(torch.cat(vector[t]), torch.cat(element[t])).split([v.numel() for v in vector[t]]))
                     for t in (0, 1))
    sizes = [v.numel() for v in vector[0]] + [v.numel() for v in vector[1]]
    fused = list(combine(torch.cat(vector[0] + vector[1]), torch.cat(element[0] + element[1])).split(sizes))
    return fused[:len(vector[0])], fused[len(vector[0]):]


def fluctuation(batch_means: torch.Tensor) -> torch.Tensor:
    """Importance fluctuation indicator per layer: coefficient of variation of M_l over calibration batches
    (batch_means: [batches, layers]); 0 with a single batch."""
    if batch_means.shape[0] < 2:
        return torch.zeros(batch_means.shape[1], dtype=torch.float64)
    mean = batch_means.mean(0)
    return batch_means.std(0) / mean.clamp_min(1e-300)


def layer_importance(group_fused: list[torch.Tensor], channel_fused: list[torch.Tensor]) -> torch.Tensor:
    """M_l: mean fused score of the layer's groups and of its channels, each type over its mean across layers."""
    groups = torch.tensor([g.mean().item() if g.numel() else 0.0 for g in group_fused], dtype=torch.float64)
    channels = torch.tensor([c.mean().item() if c.numel() else 0.0 for c in channel_fused], dtype=torch.float64)
    return groups / groups.mean().clamp_min(1e-300) + channels / channels.mean().clamp_min(1e-300)


def choose_layers(importance: torch.Tensor, fluctuating: torch.Tensor, excluded: int, layer_params: list[int],
                  target: float, max_layer_ratio: float) -> list[int]:
    """The fewest least-important candidate layers (the `excluded` most fluctuating are not candidates) that
    can give `target` parameters with a per-layer fraction of at most `max_layer_ratio`; all candidates if
    even they cannot."""
    order_f = torch.sort(fluctuating, descending=True, stable=True).indices.tolist()
    candidates = sorted(set(range(len(importance))) - set(order_f[:excluded]), key=lambda i: (importance[i].item(), i))
    chosen: list[int] = []
    for layer in candidates:
        chosen.append(layer)
        if sum(layer_params[i] for i in chosen) * max_layer_ratio >= target:
            break
    return sorted(chosen)


def allocate_removals(group_fused: list[torch.Tensor], channel_fused: list[torch.Tensor], chosen: list[int],
                      shapes, target: float) -> tuple[list[list[int]], list[list[int]]]:
    """Kept units: in the chosen layers, the same fraction of KV groups, rounded down, then MLP channels spread
    evenly (extra ones to the least important layers first) so the removed parameters are within one channel
    of `target`."""
    kept_groups = [list(range(s.kv_groups)) for s in shapes]
    kept_channels = [list(range(s.channels)) for s in shapes]
    if not chosen or target <= 0:
        return kept_groups, kept_channels
    chosen_params = sum(shapes[i].params for i in chosen)
    fraction = min(target / chosen_params, 1.0)
    removed = 0
    for i in chosen:
        drop = math.floor(fraction * shapes[i].kv_groups)
        kept_groups[i] = keep_highest(group_fused[i], shapes[i].kv_groups - drop)
        removed += drop * shapes[i].group_params
    channel_params = shapes[chosen[0]].channel_params
    to_remove = min(max(round((target - removed) / channel_params), 0), sum(shapes[i].channels - 1 for i in chosen))
    base, extra = divmod(to_remove, len(chosen))
    counts = {i: base + (rank < extra) for rank, i in enumerate(chosen)}
    overflow = sum(max(c - (shapes[i].channels - 1), 0) for i, c in counts.items())
    counts = {i: min(c, shapes[i].channels - 1) for i, c in counts.items()}
    for i in chosen:  # channels a full layer could not take go to the others
        room = shapes[i].channels - 1 - counts[i]
        take = min(room, overflow)
        counts[i] += take
        overflow -= take
    for i in chosen:
        kept_channels[i] = keep_highest(channel_fused[i], shapes[i].channels - counts[i])
    return kept_groups, kept_channels


def saap(model, ratio: float, calibration: torch.Tensor, fusion: str = "closed", scope: str = "layer_type",
         batches: int = 5, excluded: int | None = None, max_layer_ratio: float | None = None) -> Plan:
    if fusion not in FUSIONS:
        raise ValueError(f"unknown SAAP fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
    if scope not in SCOPES:
        raise ValueError(f"unknown SAAP scope {scope!r}: choose one of {', '.join(SCOPES)}")
    if calibration is None:
        raise ValueError("SAAP's Taylor importances need calibration data")
    num_layers = len(decoder_layers(model))
    shapes = layer_shapes(model)
    start, end = default_layer_range(num_layers)
    excluded = num_layers - (end - start) if excluded is None else excluded
    max_layer_ratio = min(1.5 * ratio, 0.9) if max_layer_ratio is None else max_layer_ratio
    target = _removed_params(shapes, range(start, end), ratio)  # LLM-Pruner's size at the same ratio
    everything = range(num_layers)
    per_batch = []  # per batch, per criterion: ([group scores per layer], [channel scores per layer])
    for chunk in calibration.chunk(min(batches, calibration.shape[0])):
        grads, _ = lm_loss_gradients(model, chunk, everything, second_order=False)
        per_batch.append({kind: tuple(zip(*[group_scores(model, i, grads, None, kind) for i in everything], strict=True))
                          for kind in ("vectorize", "param_first")})
    mean = {kind: tuple([torch.stack([b[kind][t][i] for b in per_batch]).mean(0) for i in everything] for t in (0, 1))
            for kind in ("vectorize", "param_first")}
    group_fused, channel_fused = fuse(mean["vectorize"], mean["param_first"], scope, fusion)
    # Layers are compared with variances fitted per module type over all layers: fitted per layer, every
    # layer's mean fused score would be the same constant (1 in the closed form) and rank nothing.
    importance = layer_importance(*fuse(mean["vectorize"], mean["param_first"], "type", fusion))
    batch_importance = torch.stack([layer_importance(*fuse(b["vectorize"], b["param_first"], "type", "closed"))
                                    for b in per_batch])
    fluctuating = fluctuation(batch_importance)
    chosen = choose_layers(importance, fluctuating, excluded, [s.params for s in shapes], target, max_layer_ratio) \
        if ratio > 0 else []
    plan = empty_plan(model, "saap", ratio, {"fusion": fusion, "scope": scope, "batches": len(per_batch),
                                             "excluded": excluded, "max_layer_ratio": max_layer_ratio})
    plan.kept_groups, plan.kept_channels = allocate_removals(group_fused, channel_fused, chosen, shapes, target)
    plan.extras = {"layer_importance": importance.tolist(), "fluctuation": fluctuating.tolist(),
                   "chosen_layers": chosen, "target_params_removed": target}
    apply_plan(model, plan)
    return plan


def _label(options: dict) -> str:
    return "SAAP-style" if options.get("fusion", "closed") == "closed" else "SAAP-style (learned sigma)"


register(Method(
    name="saap",
    label="SAAP-style",
    recipe=saap,
    defaults={"fusion": "closed", "scope": "layer_type", "batches": 5, "excluded": None, "max_layer_ratio": None},
    calibration=("bookcorpus", 10, 64),
    summary="LLM-Pruner groups; vector- and element-wise Taylor importance fused by homoscedastic uncertainty; "
            "layers chosen by importance ranking and fluctuation, at LLM-Pruner's size for the same ratio",
    source="Zheng, Ren et al., arXiv 2412.15127 (no code or equations available; spec saap_cfsp_fasp.md §3)",
    option_help={"fusion": "closed (s_k^2 = mean I_k) | learned (Adam on log s_k^2)",
                 "scope": "layer_type (per layer and module type) | type | global: where s_k^2 is fitted",
                 "batches": "calibration mini-batches for the gradients and the fluctuation indicator",
                 "excluded": "most fluctuating layers never pruned (default: as many as LLM-Pruner's range leaves out)",
                 "max_layer_ratio": "largest fraction of a chosen layer's weights removed (default 1.5 r, at most 0.9)"},
    label_of=_label,
))
