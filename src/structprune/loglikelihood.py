"""Multiple-choice log-likelihoods with one forward pass per context (the zero-shot evaluation's inner loop).

lm-eval's Hugging Face model scores every (context, continuation) request as its own sequence, so a question
with four answers runs its context four times, and it takes the full-vocabulary log-softmax at every
position. Here the continuations of one context are packed behind a single copy of it, as branches of a tree:
each branch token sees the context and the earlier tokens of its own branch, and takes the position it would
have in its own sequence (a 4D attention mask and explicit position ids), so every scored logit is the one the
separate sequence would give, up to float rounding. Logits are computed only where a continuation token is
scored. Tested against lm-eval's own loop (`tests/evaluation/test_zero_shot.py`).

A request is (context token ids, continuation token ids), as lm-eval tokenises them; the answer is lm-eval's
(sum of the continuation's log-probabilities, whether every continuation token is the greedy choice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .progress import progress


@dataclass
class PackedRow:
    """One context and the continuations that share it, as a single sequence."""

    tokens: list[int]
    positions: list[int]
    branch: list[int]  # per token: -1 for the context, else the index of its branch
    # per request: its index in the request list, the positions whose logits predict its continuation tokens,
    # and those tokens
    scored: list[tuple[int, list[int], list[int]]] = field(default_factory=list)


def pack_requests(requests: list[tuple[list[int], list[int]]]) -> list[PackedRow]:
    """Group requests by context and pack each group into one row (see the module docstring)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (context, continuation) in enumerate(requests):
        if not context or not continuation:
            raise ValueError("every request needs a non-empty context and continuation (lm-eval gives an empty "
                             "context the model's prefix token)")
        groups.setdefault(tuple(context), []).append(index)
    rows = []
    for context, members in groups.items():
        n = len(context)
        row = PackedRow(tokens=list(context), positions=list(range(n)), branch=[-1] * n)
        for branch, index in enumerate(members):
            continuation = requests[index][1]
            start = len(row.tokens)
            # the branch feeds every continuation token but the last; the first is predicted from the context's end
            row.tokens += continuation[:-1]
            row.positions += range(n, n + len(continuation) - 1)
            row.branch += [branch] * (len(continuation) - 1)
            row.scored.append((index, [n - 1, *range(start, start + len(continuation) - 1)], list(continuation)))
        rows.append(row)
    return rows


def tree_mask(rows: list[PackedRow], length: int, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
    """Additive [batch, 1, length, length] mask: a token sees the earlier context tokens and the earlier tokens
    of its own branch (within `window` positions, for sliding-window layers); padding sees only itself (a fully
    masked row would give NaN)."""
    allowed = torch.zeros(len(rows), length, length, dtype=torch.bool)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for b, row in enumerate(rows):
        n = len(row.tokens)
        branch, position = torch.tensor(row.branch), torch.tensor(row.positions)
        same = (branch[:, None] == branch[None, :]) | (branch[None, :] == -1)
        allowed[b, :n, :n] = same & causal[:n, :n]
        if window is not None:
            allowed[b, :n, :n] &= (position[:, None] - position[None, :]) < window
        allowed[b, n:, n:] = torch.eye(length - n, dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def attention_masks(model, rows: list[PackedRow], length: int, dtype: torch.dtype):
    """The mask(s) a forward of these rows takes. Where a sliding window binds (a position at or beyond it),
    windowed layers get their own mask: per layer type where the config names types (Gemma 3), else one
    windowed mask for every layer (Mistral)."""
    full = tree_mask(rows, length, dtype)
    window = getattr(model.config, "sliding_window", None)
    if not window or max(max(row.positions) for row in rows) < window:
        return full
    sliding = tree_mask(rows, length, dtype, window)
    if getattr(model.config, "layer_types", None):
        return {"full_attention": full, "sliding_attention": sliding}
    return sliding


def batches(rows: list[PackedRow], batch_tokens: int) -> list[list[PackedRow]]:
    """Rows longest first, in batches whose padded size stays within `batch_tokens` (one row at least)."""
    ordered = sorted(rows, key=lambda r: -len(r.tokens))
    out: list[list[PackedRow]] = []
    for row in ordered:
        if out and len(out[-1][0].tokens) * (len(out[-1]) + 1) <= batch_tokens:
            out[-1].append(row)
        else:
            out.append([row])
    return out


@torch.no_grad()
def score_requests(model, requests: list[tuple[list[int], list[int]]], batch_tokens: int = 1024,
                   pad_token_id: int = 0) -> list[tuple[float, bool]]:
    """(log-likelihood of the continuation, whether it is the greedy continuation) for every request, in order."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    answers: list[tuple[float, bool] | None] = [None] * len(requests)
    chunks = batches(pack_requests(requests), batch_tokens)
    for chunk in progress(chunks, "zero-shot requests (packed by context)", unit="batch"):
        length = len(chunk[0].tokens)
        ids = torch.full((len(chunk), length), pad_token_id, dtype=torch.long)
        positions = torch.zeros((len(chunk), length), dtype=torch.long)
        for b, row in enumerate(chunk):
            ids[b, :len(row.tokens)] = torch.tensor(row.tokens)
            positions[b, :len(row.tokens)] = torch.tensor(row.positions)
            positions[b, len(row.tokens):] = torch.arange(len(row.positions), length)
        # logits only at the positions some row scores, not over the whole vocabulary at every position
        keep = sorted({p for row in chunk for _, scored, _ in row.scored for p in scored})
        column = {p: i for i, p in enumerate(keep)}
        masks = attention_masks(model, chunk, length, dtype)
        masks = {k: m.to(device) for k, m in masks.items()} if isinstance(masks, dict) else masks.to(device)
        logits = model(input_ids=ids.to(device), attention_mask=masks,
                       position_ids=positions.to(device), logits_to_keep=torch.tensor(keep, device=device),
                       use_cache=False).logits
        for b, row in enumerate(chunk):
            for index, scored, targets in row.scored:
                rows = logits[b, [column[p] for p in scored]].float()
                log_probs = F.log_softmax(rows, dim=-1)
                target = torch.tensor(targets, device=rows.device)
                answers[index] = (float(log_probs.gather(1, target[:, None]).sum()),
                                  bool((rows.argmax(dim=-1) == target).all()))
    return answers  # type: ignore[return-value]


def shared_context_lm(model, tokenizer, batch_size: int = 8, batch_tokens: int = 1024):
    """lm-eval's HFLM for an in-memory model, with its log-likelihood loop replaced by `score_requests`
    (its tokenisation, truncation checks and everything else unchanged)."""
    from lm_eval.models.huggingface import HFLM

    class SharedContextHFLM(HFLM):
        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            pairs = [(list(context), list(continuation)) for _, context, continuation in requests]
            if any(len(c) + len(t) > self.max_length + 1 for c, t in pairs):
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)  # lm-eval truncates
            answers = score_requests(self.model, pairs, batch_tokens,
                                     pad_token_id=self.tokenizer.pad_token_id or 0)
            for (request, _, _), answer in zip(requests, answers, strict=True):
                if request is not None:
                    self.cache_hook.add_partial("loglikelihood", request, answer)
            return answers

    return SharedContextHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
