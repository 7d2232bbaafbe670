"""Evidence: what the calibration passes measure for the parts to read (input statistics of o_proj and down_proj,
Gram matrices, block distances, per-batch Taylor importances), and the passes that measure it on the dense
model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from .architectures import decoder_layers
from .scores import group_scores, output_linears
from .stats import ChannelStats, block_distance, collect_statistics, lm_loss_gradients, statistics_key


@dataclass
class Evidence:
    """What the calibration passes measured, for the scores and allocations to read."""

    stats: dict[int, dict[str, ChannelStats]] = field(default_factory=dict)  # per layer: o_proj / down_proj inputs
    gradients: dict | None = None  # {linear: dL/dW}
    fisher: dict | None = None
    batch_taylor: list | None = None  # per batch: {criterion: (group scores per layer, channel scores per layer)}
    block_importance: torch.Tensor | None = None  # per layer: sum over tokens of the block distance
    tokens: int = 0  # calibration tokens
    shapes: list | None = None
    cache: dict = field(default_factory=dict)  # whole-model quantities a score computes once



def batch_taylor(model, calibration: torch.Tensor, batches: int) -> list[dict]:
    """Vector-wise and element-wise Taylor importances of every layer, per calibration mini-batch."""
    everything = range(len(decoder_layers(model)))
    per_batch = []
    for chunk in calibration.chunk(min(batches, calibration.shape[0])):
        grads, _ = lm_loss_gradients(model, chunk, everything, second_order=False)
        per_batch.append({kind: tuple(zip(*[group_scores(model, i, grads, None, kind) for i in everything], strict=True))
                          for kind in ("vectorize", "param_first")})
    return per_batch



# The dense pass with block distances of a CPU model (plain statistics are cached by collect_statistics):
# a sweep over ratios and variants pays for it once.
_BLOCK_PASSES: dict[str, tuple[list, torch.Tensor]] = {}



def dense_pass(model, calibration: torch.Tensor, gram: bool, batch_size: int, block_metric: str | None = None,
               on_layer=None, resident=None) -> tuple[list[dict[str, ChannelStats]], torch.Tensor | None]:
    """One pass of the dense model: o_proj / down_proj input statistics of every layer, and, with a block
    metric, each block's summed input-output distance (on_layer, resident: see `collect_statistics`)."""
    targets = output_linears(model)
    streamed = {"on_layer": on_layer, "resident": resident}
    if block_metric is None:
        return collect_statistics(model, calibration, targets, gram=gram, batch_size=batch_size, **streamed), None
    key = statistics_key(model, calibration, (*targets, f"block:{block_metric}"), gram, batch_size)
    if key in _BLOCK_PASSES:
        stats, importance = _BLOCK_PASSES[key]
        return copy.deepcopy(stats), importance.clone()
    importance = torch.zeros(len(decoder_layers(model)), dtype=torch.float64)

    def add_block_distance(index: int, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        importance[index] = sum(block_distance(x, y, block_metric).sum().item()
                                for x, y in zip(inputs, outputs, strict=True))

    stats = collect_statistics(model, calibration, targets, on_block=add_block_distance, gram=gram,
                               batch_size=batch_size, **streamed)
    if key is not None:
        _BLOCK_PASSES.clear()  # one entry: the pass of the model being swept
        _BLOCK_PASSES[key] = (copy.deepcopy(stats), importance.clone())
    return stats, importance
