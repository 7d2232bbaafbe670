"""CFSP: coarse-to-fine activation-based structured pruning (Wang et al., COLING 2025, arXiv 2409.13199).

Spec: shared/specs/saap_cfsp_fasp.md §1 (read in the official code, wyxscir/CFSP: `prune_cfsp`,
`block_metrics.py`). Only FFN intermediate channels are removed; attention is untouched.

    one pass of the *dense* model over the calibration tokens (WikiText-2, 128 x 1024)       (§1.3)
    coarse, per block l:  I_l = sum over tokens t of arccos(cos(h_in,t, h_out,t)) / pi     (§1.4)
                          keep_l = sigmoid keep ratios of the I_l, mean exactly 1 - r  (allocate.cfsp_keep_ratios)
    fine, per channel j:  a_j = ||X_j||_2 of the down_proj input                          (§1.5)
        fine_metric "activation" (default, the released code): score_j = a_j. The code's
            three_w_one_wa formula mean_i[U_ij / sum_i U_ij + |W_u^T|_ij / sum_i ... + ...] a_j with
            U = |W_d| a reduces to (3/d) a_j, because each normalised column sums to 1
            (`code_score_reference` is that literal formula, tested against this fast path).
        fine_metric "relative" (the paper's Eq. 8 intent; normalisation axes inferred, so "-style"):
            F_j = sum_i |W_d[i,j]| a_j / (sum_j' |W_d[i,j']| sum_j' a_j') + sum_k |W_u[j,k]| / sum_j' |W_u[j',k]|
                  + the same for W_g
    block l keeps its top cfsp_kept_count(m, keep_l, round_to) channels (round_to 128 = `--cuda_friendly`)
No weight update and no bias compensation (the code's `compress`, not `compress_bias`).
"""

from __future__ import annotations

import torch

from ..allocate import Plan, cfsp_keep_ratios, cfsp_kept_count, keep_highest
from ..architectures import adapter_for, decoder_layers, mlp_of
from ..stats import collect_statistics, statistics_key
from ..surgery import apply_plan
from . import Method, register
from .common import empty_plan, output_linears

BLOCK_METRICS = ("angular", "cosine", "mse", "mae")
FINE_METRICS = ("activation", "relative")


def block_distance(inputs: torch.Tensor, outputs: torch.Tensor, metric: str = "angular") -> torch.Tensor:
    """Per-token distance between a block's input and output hidden states [..., hidden], in float64.

    angular: arccos(cos) / pi in [0, 1] (a zero vector's NaN cosine counts as 0.5, as the code);
    cosine: 1 - cos; mse / mae: mean squared / absolute difference over the hidden axis.
    """
    x, y = inputs.detach().double(), outputs.detach().double()
    if metric in ("angular", "cosine"):
        cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
        if metric == "cosine":
            return torch.nan_to_num(1 - cos, nan=1.0)
        return torch.nan_to_num(torch.arccos(cos.clamp(-1, 1)) / torch.pi, nan=0.5)
    if metric == "mse":
        return (x - y).pow(2).mean(-1)
    if metric == "mae":
        return (x - y).abs().mean(-1)
    raise ValueError(f"unknown CFSP block metric {metric!r}: choose one of {', '.join(BLOCK_METRICS)}")


def code_score_reference(down: torch.Tensor, up: torch.Tensor, gate: torch.Tensor | None,
                         activation: torch.Tensor) -> torch.Tensor:
    """The released code's `three_w_one_wa` score, literally (b = c = 1), in float64.

    down [d, m], up/gate [m, d], activation a [m]. Every normalisation runs over the hidden axis for a
    fixed channel j, so the bracket is 3/d for every channel and the score is (3/d) a_j.
    """
    a = activation.double()
    u = down.double().abs() * a  # U_ij = |W_d[i, j]| a_j
    terms = u / u.sum(0)
    for weight in (up, gate):
        if weight is not None:
            w = weight.double().abs().T  # [d, m]
            terms = terms + w / w.sum(0)
    return terms.mean(0) * a


def relative_score(down: torch.Tensor, up: torch.Tensor, gate: torch.Tensor | None,
                   activation: torch.Tensor) -> torch.Tensor:
    """The paper-intent variant [INF, §1.5]: weights normalised across channels, so they do not cancel."""
    a = activation.double()
    d = down.double().abs()
    score = (d / d.sum(1, keepdim=True)).sum(0) * a / a.sum()
    for weight in (up, gate):
        if weight is not None:
            w = weight.double().abs()  # [m, d]
            score = score + (w / w.sum(0, keepdim=True)).sum(1)
    return score


# The dense pass (block importance and down_proj input norms) of a CPU model, keyed by a hash of its weights and
# the calibration ids: a sweep over ratios and variants pays for it once, as FLAP's statistics cache.
_PASSES: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}


def dense_pass(model, calibration: torch.Tensor, block_metric: str, batch_size: int) -> tuple[torch.Tensor, list]:
    """(I_l per block, ||X_j||_2 of every block's down_proj input) from one pass of the dense model."""
    _, down_name = output_linears(model)
    key = statistics_key(model, calibration, (down_name, f"cfsp:{block_metric}"), False, batch_size)
    if key in _PASSES:
        importance, norms = _PASSES[key]
        return importance.clone(), [n.clone() for n in norms]
    importance = torch.zeros(len(decoder_layers(model)), dtype=torch.float64)

    def add_block_importance(index: int, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        importance[index] = sum(block_distance(x, y, block_metric).sum().item()
                                for x, y in zip(inputs, outputs, strict=True))

    stats = collect_statistics(model, calibration, (down_name,), on_block=add_block_importance,
                               batch_size=batch_size)
    norms = [s[down_name].sumsq.sqrt() for s in stats]
    if key is not None:
        _PASSES.clear()  # one entry: the pass of the model being swept
        _PASSES[key] = (importance.clone(), [n.clone() for n in norms])
    return importance, norms


def cfsp(model, ratio: float, calibration: torch.Tensor, a: float = 1.0, fine_metric: str = "activation",
         block_metric: str = "angular", round_to: int = 1, importance_tokens: int | None = None,
         batch_size: int = 8) -> Plan:
    if calibration is None:
        raise ValueError("CFSP needs calibration data (block importance and channel activations)")
    if fine_metric not in FINE_METRICS:
        raise ValueError(f"unknown CFSP fine_metric {fine_metric!r}: choose one of {', '.join(FINE_METRICS)}")
    if block_metric not in BLOCK_METRICS:
        raise ValueError(f"unknown CFSP block_metric {block_metric!r}: choose one of {', '.join(BLOCK_METRICS)}")
    adapter = adapter_for(model)
    layers = decoder_layers(model)
    importance, norms = dense_pass(model, calibration, block_metric, batch_size)
    tokens = calibration.numel()
    if importance_tokens:  # the code's 1e4 constant is tied to its 131,072 tokens: rescale the sum
        importance = importance / tokens * importance_tokens
    keep_ratios = cfsp_keep_ratios(importance, ratio, a)
    plan = empty_plan(model, "cfsp", ratio, {"a": a, "fine_metric": fine_metric, "block_metric": block_metric,
                                             "round_to": round_to, "importance_tokens": importance_tokens})
    for index, layer in enumerate(layers):
        mlp = mlp_of(layer, adapter)
        down, up = mlp.get_submodule(adapter.down).weight, mlp.get_submodule(adapter.up).weight
        gate = mlp.get_submodule(adapter.gate).weight if adapter.gate else None
        activation = norms[index]
        scores = activation if fine_metric == "activation" else relative_score(down, up, gate, activation)
        plan.kept_channels[index] = keep_highest(scores, cfsp_kept_count(down.shape[1], float(keep_ratios[index]),
                                                                         round_to))
    plan.extras = {"block_importance": importance.tolist(), "keep_ratios": keep_ratios.tolist(),
                   "calibration_tokens": tokens}
    apply_plan(model, plan)
    return plan


def _label(options: dict) -> str:
    return "CFSP" if options.get("fine_metric", "activation") == "activation" else "CFSP-style (relative score)"


register(Method(
    name="cfsp",
    label="CFSP",
    recipe=cfsp,
    defaults={"a": 1.0, "fine_metric": "activation", "block_metric": "angular", "round_to": 1,
              "importance_tokens": None, "batch_size": 8},
    calibration=("wikitext2", 128, 1024),
    summary="FFN channels only: sigmoid per-block budgets from angular block importance, channels by "
            "activation norm (the released code)",
    source="Wang et al., COLING 2025 (arXiv 2409.13199); wyxscir/CFSP lib/prune.py::prune_cfsp",
    option_help={"a": "sigmoid sharpness of the block allocation (code default 1)",
                 "fine_metric": "activation (released code: channels by ||X_j||) | relative (paper Eq. 8 "
                                "intent, inferred normalisation)",
                 "block_metric": "angular | cosine | mse | mae (block input vs output)",
                 "round_to": "keep each block's channel count a multiple of k (code: 128, --cuda_friendly)",
                 "importance_tokens": "rescale block importance sums to this many tokens (the code's 1e4 "
                                      "constant assumes 131,072); None: the raw sum, as the code",
                 "batch_size": "calibration batch"},
    label_of=_label,
))
