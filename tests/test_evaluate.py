"""Eval metrics on known inputs: distinct-n, MSTTR, log-probabilities and perplexity against a hand computation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from raft_data.models.logprobs import perplexity, sequence_logprobs
from raft_data.rounds import should_stop
from raft_data.stages.evaluate import distinct_n, msttr


def test_distinct_n_counts_ngrams_within_each_text() -> None:
    texts = ["the cat the cat", "The dog"]
    # words: [the, cat, the, cat], [the, dog] -> unigrams 6, distinct {the, cat, dog} = 3
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    # bigrams: (the cat) (cat the) (the cat) | (the dog): 4 in all, 3 distinct; none crosses the two texts
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["one"], 2) == 0.0
    assert distinct_n([], 1) == 0.0


def test_msttr_averages_full_segments_only() -> None:
    # 10 words: segment of 4 -> [a a b b] 2/4, [c d e f] 4/4; the last 2 words make no full segment
    texts = ["a a b b c", "d e f g h"]
    assert msttr(texts, segment=4) == pytest.approx((0.5 + 1.0) / 2)
    # fewer words than a segment: the plain type-token ratio
    assert msttr(["x x y"], segment=50) == pytest.approx(2 / 3)
    assert msttr([""], segment=4) == 0.0


def test_should_stop_after_patience_small_rises() -> None:
    assert not should_stop([0.1, 0.2, 0.3], epsilon=0.05, patience=0)
    assert not should_stop([0.1, 0.2, 0.21], epsilon=0.05, patience=2)  # only one small rise in a row
    assert should_stop([0.1, 0.2, 0.21, 0.20], epsilon=0.05, patience=2)
    assert not should_stop([0.1], epsilon=0.05, patience=1)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return tokenizer, model


def _hand_logprob(model, ids: list[int], start: int) -> tuple[float, int]:
    """One sequence at a time, no padding: sum of log p(token_t | tokens_<t) for t >= start."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    total = 0.0
    for t in range(max(start, 1), len(ids)):
        total += (logits[t - 1] - torch.logsumexp(logits[t - 1], dim=-1))[ids[t]].item()
    return total, len(ids) - max(start, 1)


def test_sequence_logprobs_match_hand_computation_with_padding(tiny) -> None:
    tokenizer, model = tiny
    seqs = [tokenizer(t)["input_ids"] for t in ["A fine film.", "It was a long and very dull evening at the movies."]]
    starts = [2, 4]
    sums, counts = sequence_logprobs(model, seqs, starts, batch_size=2, pad_id=tokenizer.pad_token_id)
    for s, c, ids, start in zip(sums, counts, seqs, starts, strict=True):
        want, n = _hand_logprob(model, ids, start)
        assert c == n
        assert s == pytest.approx(want, abs=1e-4)


def test_perplexity_of_tiny_model_matches_hand_computation(tiny) -> None:
    tokenizer, model = tiny
    texts = ["The film is a delight.", "Nothing in it works, and the ending drags on forever."]
    total, n = 0.0, 0
    for text in texts:
        lp, c = _hand_logprob(model, tokenizer(text)["input_ids"], 1)
        total, n = total + lp, n + c
    assert perplexity(model, tokenizer, texts, batch_size=2) == pytest.approx(math.exp(-total / n), rel=1e-5)
    # batch size must not change the number
    assert perplexity(model, tokenizer, texts, batch_size=1) == pytest.approx(math.exp(-total / n), rel=1e-5)
