"""Unit scores: how important each prunable unit of a decoder layer is.

One signature for every score (`docs/methods.md` gives each one's equation and paper):

    score(model, index, evidence, **options) -> LayerScores

`evidence` (`evidence.Evidence`) holds what the calibration passes measured: per-layer input
statistics of o_proj and down_proj, LM-loss gradients, per-batch Taylor importances. A score reads only
the layer `index` (so a sequential pass can score one layer at a time), and names what it reads in
`Score.needs`, so the passes collect exactly that.

A `LayerScores` holds one score per KV group and one per MLP channel, and, for the scores that are
sums over o_proj input columns, the per-column scores themselves (FLAP's adaptive structures standardise
columns before grouping; FASP's value-channel units regroup them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .architectures import (
    adapter_for,
    attention_of,
    decoder_layers,
    head_dim,
    layer_shapes,
    mlp_of,
    queries_per_group,
)
from .parts import Part


@dataclass
class LayerScores:
    groups: torch.Tensor  # [KV groups]
    channels: torch.Tensor  # [MLP channels]
    columns: torch.Tensor | None = None  # [o_proj input columns]: groups = sums of each group's columns


@dataclass(frozen=True)
class Score(Part):
    """A unit score (`parts.Part`); gives_columns: it also scores o_proj's input columns (`LayerScores.columns`),
    which FLAP's adaptive structures standardise and the value-channel and query-head units regroup."""

    gives_columns: bool = False


# --- the linears a score reads ------------------------------------------------------------------------------

def o_proj(model, index: int) -> torch.nn.Linear:
    adapter = adapter_for(model)
    return attention_of(decoder_layers(model)[index], adapter).get_submodule(adapter.o)


def down_proj(model, index: int) -> torch.nn.Linear:
    adapter = adapter_for(model)
    return mlp_of(decoder_layers(model)[index], adapter).get_submodule(adapter.down)


def output_linears(model) -> tuple[str, str]:
    """Module paths, inside a decoder layer, of o_proj and down_proj (whose inputs the scores read)."""
    adapter = adapter_for(model)
    return adapter.path(adapter.attention, adapter.o), adapter.path(adapter.mlp, adapter.down)


def group_width(config) -> int:
    """o_proj input columns per KV group: n_rep query heads of head_dim columns."""
    return queries_per_group(config) * head_dim(config)


def group_sum(column_scores: torch.Tensor, width: int) -> torch.Tensor:
    """Sum column scores over each KV group's `width` o_proj columns."""
    return column_scores.view(-1, width).sum(1)


def _from_columns(model, columns: torch.Tensor, channels: torch.Tensor) -> LayerScores:
    return LayerScores(group_sum(columns, group_width(model.config)), channels, columns)


def _column_score(model, index: int, evidence, column: Callable) -> LayerScores:
    """A score defined on input columns of o_proj and down_proj, from the layer's statistics."""
    o_name, down_name = output_linears(model)
    stats = evidence.stats[index]
    return _from_columns(model, column(o_proj(model, index).weight, stats[o_name]),
                         column(down_proj(model, index).weight, stats[down_name]))


# --- magnitude, Wanda, fluctuation (FLAP) --------------------------------------------------------------------

def magnitude(model, index: int, evidence=None) -> LayerScores:
    """||W_:,j||_2 of o_proj / down_proj columns (FLAP's mag-sp baseline)."""
    def norm(linear):
        return linear.weight.detach().to(torch.float64).norm(dim=0)

    return _from_columns(model, norm(o_proj(model, index)), norm(down_proj(model, index)))


def wanda_column(weight: torch.Tensor, stats) -> torch.Tensor:
    """s_j = ||X_j|| * mean_i |W_ij| (Wanda's |W_ij| ||X_j|| averaged over column j; FLAP's WIFN)."""
    return stats.norm * weight.detach().to(torch.float64).abs().mean(0).to(stats.norm.device)


def wanda(model, index: int, evidence) -> LayerScores:
    return _column_score(model, index, evidence, wanda_column)


def ifv(model, index: int, evidence) -> LayerScores:
    """Input feature variance Var(X_j) (FLAP's IFV: the fluctuation metric without the weight)."""
    return _column_score(model, index, evidence, lambda weight, stats: stats.variance)


def wifv_column(weight: torch.Tensor, stats) -> torch.Tensor:
    """Var(X_j) * ||W_:,j||^2: FLAP's fluctuation metric (WIFV)."""
    return stats.variance * weight.detach().to(torch.float64).pow(2).sum(0).to(stats.variance.device)


def wifv(model, index: int, evidence) -> LayerScores:
    return _column_score(model, index, evidence, wifv_column)


# --- activation norm (CFSP's fine step) ----------------------------------------------------------------------

def activation(model, index: int, evidence) -> LayerScores:
    """a_j = ||X_j||_2 over all calibration tokens (CFSP's fine score as its code computes it: the weight terms
    of the code's formula cancel, see `cfsp_code_score_reference`)."""
    return _column_score(model, index, evidence, lambda weight, stats: stats.sumsq.sqrt())


def cfsp_code_score_reference(down: torch.Tensor, up: torch.Tensor, gate: torch.Tensor | None,
                              activation: torch.Tensor) -> torch.Tensor:
    """CFSP's released `three_w_one_wa` score, literally (b = c = 1), in float64.

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


def relative_channel_score(down: torch.Tensor, up: torch.Tensor, gate: torch.Tensor | None,
                           activation: torch.Tensor) -> torch.Tensor:
    """CFSP Eq. 8 read with weights normalised across channels, so they do not cancel (inferred axes):
    F_j = sum_i |W_d[i,j]| a_j / (sum_j' |W_d[i,j']| sum_j' a_j') + sum_k |W_u[j,k]| / sum_j' |W_u[j',k]| + W_g's."""
    a = activation.double()
    d = down.double().abs()
    score = (d / d.sum(1, keepdim=True)).sum(0) * a / a.sum()
    for weight in (up, gate):
        if weight is not None:
            w = weight.double().abs()  # [m, d]
            score = score + (w / w.sum(0, keepdim=True)).sum(1)
    return score


def activation_relative(model, index: int, evidence) -> LayerScores:
    """MLP channels by `relative_channel_score`; KV groups by activation norm."""
    adapter = adapter_for(model)
    mlp = mlp_of(decoder_layers(model)[index], adapter)
    norms = activation(model, index, evidence)
    gate = mlp.get_submodule(adapter.gate).weight if adapter.gate else None
    channels = relative_channel_score(mlp.get_submodule(adapter.down).weight, mlp.get_submodule(adapter.up).weight,
                                      gate, norms.channels)
    return LayerScores(norms.groups, channels, norms.columns)


# --- Taylor importance of coupled groups (LLM-Pruner) --------------------------------------------------------

TAYLOR_IMPORTANCES = ("param_first", "param_mix", "vectorize", "param_second", "l1", "l2")


def coupled_members(model, index: int) -> dict[str, torch.nn.Linear]:
    """The linears whose rows / columns make up a layer's KV groups and MLP channels."""
    adapter = adapter_for(model)
    layer = decoder_layers(model)[index]
    attn, mlp = attention_of(layer, adapter), mlp_of(layer, adapter)
    members = {"q": attn.get_submodule(adapter.q), "k": attn.get_submodule(adapter.k),
               "v": attn.get_submodule(adapter.v), "o": attn.get_submodule(adapter.o),
               "up": mlp.get_submodule(adapter.up), "down": mlp.get_submodule(adapter.down)}
    if adapter.gate:  # OPT's MLP has no gate
        members["gate"] = mlp.get_submodule(adapter.gate)
    return members


def channel_importance(weight: torch.Tensor, grad: torch.Tensor | None, fisher: torch.Tensor | None,
                       importance: str, dim: int) -> torch.Tensor:
    """Per-channel importance of one linear, reduced over `dim` (1: rows/outputs, 0: columns/inputs).

    s_k = W_k dL/dW_k, q_k = 1/2 W_k^2 F_kk (LLM-Pruner's first- and second-order Taylor terms): vectorize |sum_k s_k|; param_first
    sum_k |s_k|; param_mix sum_k |s_k - q_k|; param_second sum_k |q_k|; l1 / l2 of the weights."""
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
    raise ValueError(f"unknown importance {importance!r}: choose one of {', '.join(TAYLOR_IMPORTANCES)}")


def group_scores(model, index: int, grads: dict | None, fisher: dict | None, importance: str):
    """(KV-group scores, MLP-channel scores) of one layer: sums over each group's coupled members.

    KV group g: q rows of its n_rep query heads (contiguous), k and v rows of KV head g, o_proj columns of
    its query heads; MLP channel c: gate row c, up row c, down_proj column c."""
    m = coupled_members(model, index)
    d, n_rep = head_dim(model.config), queries_per_group(model.config)

    def imp(name, dim):
        linear = m[name]
        return channel_importance(linear.weight, grads.get(linear) if grads else None,
                                  fisher.get(linear) if fisher else None, importance, dim)

    query_rows = imp("q", 1) + imp("o", 0)  # q rows and o_proj columns share the query-head index
    kv_rows = imp("k", 1) + imp("v", 1)
    groups = query_rows.view(-1, n_rep * d).sum(1) + kv_rows.view(-1, d).sum(1)
    channels = imp("up", 1) + imp("down", 0) + (imp("gate", 1) if "gate" in m else 0)
    return groups, channels


def taylor(model, index: int, evidence, importance: str = "param_first") -> LayerScores:
    if importance not in TAYLOR_IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}: choose one of {', '.join(TAYLOR_IMPORTANCES)}")
    groups, channels = group_scores(model, index, evidence.gradients, evidence.fisher, importance)
    return LayerScores(groups, channels)


def taylor_needs(options: dict) -> frozenset[str]:
    importance = options.get("importance", "param_first")
    if importance in ("l1", "l2"):
        return frozenset()
    return frozenset({"gradients", "fisher"} if importance in ("param_mix", "param_second") else {"gradients"})


# --- random ---------------------------------------------------------------------------------------------------

def random(model, index: int, evidence, seed: int = 0) -> LayerScores:
    """Uniform random scores, seeded: every layer's KV groups, then every layer's channels, drawn once."""
    key = ("random", seed)
    if key not in evidence.cache:
        generator = torch.Generator().manual_seed(seed)
        shapes = layer_shapes(model) if evidence.shapes is None else evidence.shapes
        groups = [torch.rand(s.kv_groups, generator=generator, dtype=torch.float64) for s in shapes]
        channels = [torch.rand(s.channels, generator=generator, dtype=torch.float64) for s in shapes]
        evidence.cache[key] = (groups, channels)
    groups, channels = evidence.cache[key]
    return LayerScores(groups[index], channels[index])


# --- uncertainty-weighted fusion (SAAP) ------------------------------------------------------------------------

FUSIONS = ("closed", "learned")
FUSION_SCOPES = ("layer_type", "type", "global")


def fuse_closed(vector: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
    """I = I_vec / (2 s1^2) + I_elem / (2 s2^2) with s_k^2 = mean(I_k) over the scope: the minimiser of
    Kendall et al.'s homoscedastic-uncertainty objective. A criterion that is zero over the scope adds nothing."""
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
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
    if scope not in FUSION_SCOPES:
        raise ValueError(f"unknown fusion scope {scope!r}: choose one of {', '.join(FUSION_SCOPES)}")
    combine = fuse_closed if fusion == "closed" else fuse_learned
    if scope == "layer_type":
        return tuple([combine(v, e) for v, e in zip(vector[t], element[t], strict=True)] for t in (0, 1))
    if scope == "type":
        return tuple(list(combine(torch.cat(vector[t]), torch.cat(element[t])).split([v.numel() for v in vector[t]]))
                     for t in (0, 1))
    sizes = [v.numel() for v in vector[0]] + [v.numel() for v in vector[1]]
    fused = list(combine(torch.cat(vector[0] + vector[1]), torch.cat(element[0] + element[1])).split(sizes))
    return fused[:len(vector[0])], fused[len(vector[0]):]


def mean_batch_taylor(evidence) -> dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Per criterion (vectorize, param_first): the mean over calibration batches of the per-layer
    (group scores, channel scores)."""
    per_batch = evidence.batch_taylor
    layers = range(len(per_batch[0]["vectorize"][0]))
    return {kind: tuple([torch.stack([b[kind][t][i] for b in per_batch]).mean(0) for i in layers] for t in (0, 1))
            for kind in ("vectorize", "param_first")}


def uncertainty_fusion(model, index: int, evidence, fusion: str = "closed", scope: str = "layer_type") -> LayerScores:
    """SAAP-style: vector-wise and element-wise Taylor importance (means over calibration batches) fused by
    homoscedastic uncertainty, the variances fitted per `scope`."""
    key = ("uncertainty_fusion", fusion, scope)
    if key not in evidence.cache:
        mean = mean_batch_taylor(evidence)
        evidence.cache[key] = fuse(mean["vectorize"], mean["param_first"], scope, fusion)
    groups, channels = evidence.cache[key]
    return LayerScores(groups[index], channels[index])


# --- the registry ----------------------------------------------------------------------------------------------

SCORES: dict[str, Score] = {score.name: score for score in (
    Score("magnitude", magnitude, gives_columns=True,
          summary="||W_:,j||_2 of o_proj / down_proj columns, no data"),
    Score("wanda", wanda, frozenset({"stats"}), gives_columns=True,
          summary="||X_j|| mean_i |W_ij| of o_proj / down_proj input columns (Wanda; FLAP's WIFN)"),
    Score("ifv", ifv, frozenset({"stats"}), gives_columns=True, summary="Var(X_j): input feature variance (FLAP)"),
    Score("wifv", wifv, frozenset({"stats"}), gives_columns=True,
          summary="Var(X_j) ||W_:,j||^2: FLAP's fluctuation metric"),
    Score("activation", activation, frozenset({"stats"}), gives_columns=True,
          summary="||X_j||_2 of the inputs (CFSP's fine score)"),
    Score("activation_relative", activation_relative, frozenset({"stats"}), gives_columns=True,
          summary="CFSP Eq. 8 with weights normalised across channels (inferred): MLP channels"),
    Score("taylor", taylor, taylor_needs, {"importance": " | ".join(TAYLOR_IMPORTANCES)},
          summary="LLM-Pruner's Taylor importance of coupled groups (or l1 / l2 of their weights)"),
    Score("random", random, option_help={"seed": "random seed"}, summary="uniform random, seeded"),
    Score("uncertainty_fusion", uncertainty_fusion, frozenset({"batch_taylor"}),
          {"fusion": "closed (s_k^2 = mean I_k) | learned (Adam on log s_k^2)",
           "scope": "layer_type | type | global: where s_k^2 is fitted"},
          summary="SAAP-style: vector- and element-wise Taylor importance fused by homoscedastic uncertainty"),
)}
# FLAP's name for the Wanda score.
SCORE_ALIASES = {"wifn": "wanda"}


def column_scores() -> tuple[str, ...]:
    """The scores that also score o_proj's input columns."""
    return tuple(name for name, score in SCORES.items() if score.gives_columns)
