"""What was lost and what was gained: perplexity (and, in later issues, zero-shot accuracy and speed).

Perplexity follows the pruning papers' protocol (FLAP `lib/eval.py`, LLM-Pruner `evaluator/ppl.py`):
the evaluation text is tokenised once, cut into non-overlapping windows of `seqlen` tokens (the
remainder dropped), each window scored on its seqlen - 1 next-token predictions, and
PPL = exp(mean token NLL). FLAP and LLM-Pruner use seqlen 128; Wanda/SparseGPT use 2048.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .data import evaluation_text


def model_context_length(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


@torch.no_grad()
def perplexity_of_ids(model, ids: torch.Tensor, seqlen: int, max_windows: int | None = None,
                      batch_size: int = 8) -> dict:
    """Perplexity of a 1-D tensor of token ids over non-overlapping windows of `seqlen` tokens."""
    context = model_context_length(model)
    if context is not None and seqlen > context:
        raise ValueError(f"seqlen {seqlen} is longer than the model's context ({context} tokens): use seqlen <= {context}")
    windows = ids.numel() // seqlen
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows < 1:
        raise ValueError(f"the evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    device = next(model.parameters()).device
    chunks = ids[: windows * seqlen].view(windows, seqlen)
    total_nll, total_tokens = 0.0, 0
    start = time.perf_counter()
    for first in range(0, windows, batch_size):
        batch = chunks[first:first + batch_size].to(device)
        logits = model(batch, use_cache=False).logits.float()
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum")
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
    mean_nll = total_nll / total_tokens
    return {
        "perplexity": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "windows": windows,
        "tokens": total_tokens,
        "seqlen": seqlen,
        "seconds": time.perf_counter() - start,
    }


def perplexity(model, tokenizer, dataset: str = "wikitext2", split: str = "test", seqlen: int = 128,
               max_windows: int | None = None, batch_size: int = 8, data_path=None) -> dict:
    """Perplexity on a dataset's evaluation split; the result carries its protocol."""
    text = evaluation_text(dataset, split, data_path)
    ids = torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)
    result = perplexity_of_ids(model, ids, seqlen, max_windows, batch_size)
    result.update({
        "dataset": dataset, "split": split, "max_windows": max_windows, "text_tokens": ids.numel(),
        "protocol": f"non-overlapping {seqlen}-token windows, first {result['windows']} of {ids.numel() // seqlen}",
    })
    return result
