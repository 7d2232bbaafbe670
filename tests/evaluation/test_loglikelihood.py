"""The zero-shot inner loop (`structprune.loglikelihood`): continuations packed behind one copy of their context
score exactly what separate sequences score. Checked against a literal reference (each request alone, float64
log-softmax over every position) on several families and on pruned models, and against lm-eval's own loop."""

import copy

import pytest
import torch

from structprune import compose, prune
from structprune.loglikelihood import pack_requests, score_requests, shared_context_lm
from structprune.models import load_model, tiny_llama, tiny_opt

from ..pipeline.test_pruning import _tiny_family


def reference(model, requests):
    """Each request as its own sequence: sum of the continuation's float64 log-probabilities, and greedy match."""
    answers = []
    with torch.no_grad():
        for context, continuation in requests:
            ids = torch.tensor([context + continuation[:-1]])
            log_probs = torch.log_softmax(model(ids).logits[0].double(), -1)[len(context) - 1:]
            target = torch.tensor(continuation)
            answers.append((log_probs.gather(1, target[:, None]).sum().item(),
                            bool((log_probs.argmax(-1) == target).all())))
    return answers


def greedy(model, context, steps):
    ids = list(context)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(context):]


def requests_for(model, vocab, seed=0):
    """Questions with 1-4 answers of 1-6 tokens sharing a context of 3-20 tokens, repeated answers, a context
    that is another's prefix, and greedy answers (the greedy flag must then be True)."""
    generator = torch.Generator().manual_seed(seed)

    def draw(low, high):
        return torch.randint(3, vocab, (int(torch.randint(low, high, (1,), generator=generator)),),
                             generator=generator).tolist()

    requests = []
    for _ in range(7):
        context = draw(3, 21)
        answers = [draw(1, 7) for _ in range(int(torch.randint(1, 5, (1,), generator=generator)))]
        answers.append(greedy(model, context, 3))
        requests += [(context, answer) for answer in answers]
    requests.append((requests[0][0], requests[0][1]))  # the same request twice
    requests.append((requests[0][0][:-1], requests[0][0][-1:] + requests[0][1]))  # a prefix of a context
    return requests


def check(model, vocab, batch_tokens=64):
    requests = requests_for(model, vocab)
    fast, slow = score_requests(model, requests, batch_tokens), reference(model, requests)
    for (lp, is_greedy), (lp_ref, greedy_ref) in zip(fast, slow, strict=True):
        assert lp == pytest.approx(lp_ref, abs=1e-4)
        assert is_greedy == greedy_ref
    assert sum(g for _, g in slow) >= 7  # the greedy answers were recognised


def test_packing_shares_each_context_once():
    rows = pack_requests([([1, 2, 3], [4, 5]), ([1, 2, 3], [6]), ([7], [8, 9, 10])])
    assert len(rows) == 2
    row = rows[0]
    assert row.tokens == [1, 2, 3, 4] and row.positions == [0, 1, 2, 3] and row.branch == [-1, -1, -1, 0]
    assert row.scored == [(0, [2, 3], [4, 5]), (1, [2], [6])]
    assert rows[1].tokens == [7, 8, 9] and rows[1].scored == [(2, [0, 1, 2], [8, 9, 10])]
    with pytest.raises(ValueError, match="non-empty context"):
        pack_requests([([], [1])])


@pytest.mark.parametrize("family", ["llama", "opt", "qwen3", "gemma3"])
def test_packed_scores_equal_separate_sequences(family):
    model = {"llama": lambda: tiny_llama(), "opt": lambda: tiny_opt()}.get(family, lambda: _tiny_family(family))()
    check(model.eval(), model.config.vocab_size)


@pytest.mark.parametrize("composition", [
    "flap",  # narrower layers with compensation biases
    compose(score="wanda", allocation="uniform", compensation="least_squares", attention_unit="value_channel"),
    compose(score="wanda", attention_unit="query_head"),
])
def test_packed_scores_equal_separate_sequences_on_pruned_models(composition, calibration):
    model = tiny_llama(num_heads=8, num_kv_heads=2)
    prune(model, composition, 0.5, calibration=calibration)
    check(model.eval(), 256)


def test_layer_without_attention(calibration):
    from structprune.surgery import finalize_pruned, prune_layer

    model = tiny_llama()
    prune_layer(model, 1, [], list(range(96)), o_bias=torch.ones(64))
    check(finalize_pruned(model).eval(), 256)


def test_lm_eval_loop_gives_the_same_answers():
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = load_model("tiny-smollm2")
    # without the last request: lm-eval's one-token logits cache keys requests by context + continuation[:-1],
    # so a request whose context is another's prefix, with the same tokens in all, gets the other's answer
    requests = [(("q", "a"), context, continuation)
                for context, continuation in requests_for(model, tokenizer.vocab_size, seed=1)[:-1]]
    ours = shared_context_lm(model, tokenizer)._loglikelihood_tokens(copy.deepcopy(requests))
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)._loglikelihood_tokens(requests)
    for (lp, is_greedy), (lp_ref, greedy_ref) in zip(ours, theirs, strict=True):
        assert lp == pytest.approx(lp_ref, abs=1e-4)
        assert is_greedy == greedy_ref
