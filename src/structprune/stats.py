"""Calibration statistics, decoder layer by decoder layer (the Wanda/FLAP loop).

1. Capture the inputs of the first decoder layer once (a pre-hook stores them and stops the forward).
2. For each layer: hook the linears whose inputs a method needs, run the layer on all calibration
   batches, accumulate streaming statistics, and hand the layer's outputs to the next layer.
   One-shot mode (FLAP): the hooked pass's outputs are the next inputs, so all statistics come from the
   dense model. Sequential mode (Wanda-sp, FASP): a callback prunes the layer, which is then re-run so the
   next layer sees the pruned layer's outputs.
Only one decoder layer's activations are resident (and, streamed, one layer's weights: `resident`). Works on CPU,
CUDA and accelerate device maps.

Besides the input statistics: block distances (a block's input against its output, CFSP's block importance)
through `on_block`, and LM-loss gradients of the prunable linears (Taylor scores) through `lm_loss_gradients`.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from .architectures import adapter_for, decoder_layers
from .progress import progress
from .scores import coupled_members


class ChannelStats:
    """Per-input-channel statistics of one linear over all calibration tokens, in float64.

    mean and variance by Welford/Chan's parallel update (exact, numerically stable), and the sum of
    squares (Wanda's ||X_j||^2). `sequences` counts calibration sequences, `count` tokens.
    """

    def __init__(self, channels: int, device=None):
        self.count = 0
        self.sequences = 0
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(channels, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(channels, dtype=torch.float64, device=device)
        self.gram: torch.Tensor | None = None  # X^T X, only when asked for (least-squares methods)

    def update(self, x: torch.Tensor) -> None:
        """Add a batch of inputs [batch, tokens, channels]."""
        self.sequences += x.shape[0] if x.dim() > 2 else 1
        flat = x.reshape(-1, x.shape[-1]).to(torch.float64)
        n = flat.shape[0]
        batch_mean = flat.mean(0)
        centred = flat - batch_mean
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += (centred * centred).sum(0) + delta * delta * (self.count * n / total)
        self.sumsq += (flat * flat).sum(0)
        if self.gram is not None:
            self.gram += flat.T @ flat
        self.count = total

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased token-level variance of each channel."""
        return self.m2 / max(self.count - 1, 1)

    @property
    def norm(self) -> torch.Tensor:
        """Wanda's ||X_j||: sqrt of the mean over sequences of the per-sequence sum of squares."""
        return torch.sqrt(self.sumsq / max(self.sequences, 1))

    def check_finite(self, where: str) -> None:
        if not (torch.isfinite(self.mean).all() and torch.isfinite(self.m2).all()):
            raise FloatingPointError(
                f"NaN or Inf in the calibration statistics of {where}: the model produces non-finite "
                "activations on the calibration data (check the weights, or load in float32)"
            )


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf in `tensor`: its minimum and maximum are finite (min/max propagate NaN), several times
    faster than isfinite over every element in half precision on a CPU."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor.detach())
    return bool(torch.isfinite(low) and torch.isfinite(high))


class _Captured(Exception):
    pass


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _device_of(module: nn.Module) -> torch.device:
    for param in module.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")


@torch.no_grad()
def capture_layer_inputs(model, calibration: torch.Tensor, batch_size: int = 8) -> list[tuple[torch.Tensor, dict]]:
    """The first decoder layer's inputs for each calibration batch: (hidden states, keyword arguments).

    All keyword arguments are kept (position embeddings, masks, positions), whatever the transformers
    version passes to a decoder layer.
    """
    layers = decoder_layers(model)
    captured: list[tuple[torch.Tensor, dict]] = []

    def grab(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, kwargs))
        raise _Captured

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    device = _device_of(model.get_input_embeddings())
    try:
        for batch in calibration.split(batch_size):
            try:
                model(batch.to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


def _run_layer(layer: nn.Module, inputs: list[tuple[torch.Tensor, dict]]) -> list[torch.Tensor]:
    device = _device_of(layer)
    outputs = []
    for hidden, kwargs in inputs:
        out = layer(hidden.to(device), **_to_device(kwargs, device))
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


# One-shot statistics of a dense CPU model, keyed by a hash of every weight and of the calibration ids:
# a sweep over ratios or structures (FLAP's ablations) pays for the calibration pass once.
_CACHE: OrderedDict[str, list[dict[str, ChannelStats]]] = OrderedDict()
_CACHE_SIZE = 4


def statistics_key(model, calibration: torch.Tensor, targets: Sequence[str], gram: bool, batch_size: int) -> str | None:
    """A hash of every weight, the calibration ids and what is collected (None for non-CPU models)."""
    params = list(model.parameters())
    if any(p.device.type != "cpu" for p in params):
        return None  # hashing GPU weights would cost a copy of the model
    digest = hashlib.sha256(repr((type(model).__name__, tuple(targets), gram, batch_size)).encode())
    for p in params:
        digest.update(repr((p.dtype, tuple(p.shape))).encode())
        digest.update(p.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(calibration.cpu().numpy().tobytes())
    return digest.hexdigest()


def clear_statistics_cache() -> None:
    _CACHE.clear()


@torch.no_grad()
def collect_statistics(
    model,
    calibration: torch.Tensor,
    targets: Sequence[str],
    prune_layer: Callable[[int, dict[str, ChannelStats]], None] | None = None,
    on_block: Callable[[int, list[torch.Tensor], list[torch.Tensor]], None] | None = None,
    gram: bool = False,
    batch_size: int = 8,
    on_layer: Callable[[int, dict[str, ChannelStats]], None] | None = None,
    resident: Callable[[int], AbstractContextManager] | None = None,
) -> list[dict[str, ChannelStats]]:
    """Input statistics of the named linears (`targets`, module paths inside a decoder layer such as
    `self_attn.o_proj`) of every decoder layer, from one pass over the calibration batches.

    prune_layer(index, stats): sequential mode; called after a layer's statistics, the layer is then
    re-run so the next layer sees the pruned outputs. on_block(index, inputs, outputs): block
    input/output hook (hidden states before and after the layer). gram: also accumulate X^T X.
    on_layer(index, stats): called last for each layer, while its weights are still in memory (streamed
    scoring). resident(index): a context manager that holds layer `index`'s weights for its iteration
    (`streaming.LayerStream.layer`: read from the checkpoint on entry, written and/or freed on exit).
    One-shot results of CPU models are cached (same weights, ids and targets give the same statistics).
    """
    if calibration.dim() != 2 or calibration.shape[0] < 1:
        raise ValueError(f"calibration must be a [samples, tokens] tensor of token ids, got {tuple(calibration.shape)}")
    adapter_for(model)  # fails clearly on an unsupported architecture
    key = None
    if prune_layer is None and on_block is None and on_layer is None and resident is None:
        key = statistics_key(model, calibration, targets, gram, batch_size)
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return copy.deepcopy(_CACHE[key])
    inputs = capture_layer_inputs(model, calibration, batch_size)
    all_stats: list[dict[str, ChannelStats]] = []
    layers = decoder_layers(model)
    mode = "sequential" if prune_layer is not None else "one-shot"
    for index in progress(range(len(layers)), f"calibration ({mode}, {calibration.shape[0]} x "
                          f"{calibration.shape[1]} tokens)", unit="layer"):
        with resident(index) if resident is not None else nullcontext():
            inputs, stats = _layer_statistics(model, index, inputs, targets, prune_layer, on_block, on_layer, gram)
        all_stats.append(stats)
    if key is not None:
        _CACHE[key] = copy.deepcopy(all_stats)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return all_stats


def _layer_statistics(model, index: int, inputs: list, targets: Sequence[str], prune_layer, on_block, on_layer,
                      gram: bool) -> tuple[list, dict[str, ChannelStats]]:
    """One layer of `collect_statistics`: its statistics (and callbacks); the next layer's inputs."""
    layer = decoder_layers(model)[index]
    stats: dict[str, ChannelStats] = {}
    handles = []
    for name in targets:
        try:
            module = layer.get_submodule(name)
        except AttributeError:
            continue  # e.g. an attention block that has lost every head
        if module.in_features == 0:
            continue
        stats[name] = ChannelStats(module.in_features, device=_device_of(module))
        if gram:
            stats[name].gram = torch.zeros(module.in_features, module.in_features, dtype=torch.float64,
                                           device=_device_of(module))
        handles.append(module.register_forward_hook(
            lambda mod, args, out, s=stats[name]: s.update(args[0])))
    try:
        outputs = _run_layer(layer, inputs)
    finally:
        for handle in handles:
            handle.remove()
    for name, s in stats.items():
        s.check_finite(f"layer {index} {name}")
    if prune_layer is not None:
        prune_layer(index, stats)
        layer = decoder_layers(model)[index]
        outputs = _run_layer(layer, inputs)
    if on_block is not None:
        on_block(index, [h for h, _ in inputs], outputs)
    if on_layer is not None:
        on_layer(index, stats)
    return [(out, kwargs) for out, (_, kwargs) in zip(outputs, inputs, strict=True)], stats


def block_distance(inputs: torch.Tensor, outputs: torch.Tensor, metric: str = "angular") -> torch.Tensor:
    """Per-token distance between a block's input and output hidden states [..., hidden], in float64.

    angular: arccos(cos) / pi in [0, 1] (a zero vector's NaN cosine counts as 0.5, as CFSP's code);
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
    raise ValueError(f"unknown block metric {metric!r}: choose one of {', '.join(BLOCK_METRICS)}")


BLOCK_METRICS = ("angular", "cosine", "mse", "mae")


def lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over all predicted tokens (labels = inputs), computed in at least
    float32 (half-precision logits are upcast, float64 ones kept)."""
    logits = model(ids, use_cache=False).logits
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def lm_loss_gradients(model, calibration: torch.Tensor, layers: Sequence[int], second_order: bool,
                      batch_size: int = 16):
    """Gradients (and, if asked, the diagonal Fisher: the mean over samples of (dL_n/dW)^2, one backward per
    sample) of the LM loss for the prunable linears of `layers` only; every other parameter is frozen, so no
    gradient memory is spent on it. Returns ({linear: dL/dW}, {linear: Fisher diagonal} or None)."""
    linears = [m for i in layers for m in coupled_members(model, i).values()]
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
        # The mean loss over all samples, accumulated in mini-batches (every sample has the same length): one
        # pass over 512 x 128 tokens would hold 13 GB of logits. Up to `batch_size` samples it is one pass.
        for chunk in ids.split(batch_size):
            (lm_loss(model, chunk) * (chunk.shape[0] / ids.shape[0])).backward()
        grads = {m: m.weight.grad.double() for m in linears}
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in saved.items():
            p.requires_grad_(flag)
    return grads, fisher
