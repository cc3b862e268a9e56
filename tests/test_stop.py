"""`generate.stop`: stop strings end samples in the transformers backend, the stop string is kept, and a sample that
ended on one is not truncated (so SFT gives it the end-of-sequence token). On the tiny model, whose random
vocabulary makes "e" a frequent character."""

from __future__ import annotations

import dataclasses

import pytest

from raft_data.backends.transformers import transformers_backend
from raft_data.config import Config, config_from_dict
from raft_data.errors import ConfigError

from .conftest import REVIEW_OPENINGS

STOP = ["e", "!"]


def first_stop_end(text: str) -> int | None:
    ends = [text.find(s) + len(s) for s in STOP if s in text]
    return min(ends) if ends else None


def test_stop_strings_cut_each_sample_after_its_first_stop(tiny_config: Config) -> None:
    """Alone in its batch, a stopped sample is the free sample cut right after its first stop string: the same
    random draws up to there, then nothing more."""
    cfg = dataclasses.replace(tiny_config.generate, n_samples=1, batch_size=1, max_new_tokens=8)
    free = transformers_backend(tiny_config.model.name_or_path, tiny_config.model, cfg)
    stopped = transformers_backend(
        tiny_config.model.name_or_path, tiny_config.model, dataclasses.replace(cfg, stop=STOP)
    )
    n_stopped = 0
    for i, prompt in enumerate(REVIEW_OPENINGS):
        [[f]] = free([prompt], 100 + i)
        [[s]] = stopped([prompt], 100 + i)
        end = first_stop_end(f.text)
        if end is None:
            assert s == f
            continue
        n_stopped += 1
        assert s.text == f.text[:end] and not s.truncated
        assert 1 <= s.n_tokens <= f.n_tokens
    assert n_stopped >= len(REVIEW_OPENINGS) // 2


def test_batched_samples_end_at_a_stop_eos_or_the_length_limit(tiny_config: Config) -> None:
    cfg = dataclasses.replace(tiny_config.generate, n_samples=3, batch_size=4, max_new_tokens=8, stop=STOP)
    out = transformers_backend(tiny_config.model.name_or_path, tiny_config.model, cfg)(REVIEW_OPENINGS, 7)
    samples = [c for row in out for c in row]
    assert len(samples) == len(REVIEW_OPENINGS) * 3
    for c in samples:
        end = first_stop_end(c.text)
        assert end is None or end == len(c.text)  # nothing after the first stop string
        if c.truncated:  # cut by max_new_tokens: it used all of them and met no stop string
            assert end is None and c.n_tokens == cfg.max_new_tokens
        assert 1 <= c.n_tokens <= cfg.max_new_tokens
    ended_on_stop = [c for c in samples if first_stop_end(c.text) is not None]
    assert len(ended_on_stop) >= len(samples) // 2 and not any(c.truncated for c in ended_on_stop)


def test_a_sample_ended_on_a_stop_string_is_trained_without_eos(tiny_config: Config) -> None:
    """The sampler, not the model, ended it: SFT trains the tokens the model sampled and no end-of-sequence token,
    and the log-probabilities (KL, the rank key) score no end-of-sequence token after it either."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from raft_data.models.logprobs import completion_token_ids, ended_on_eos
    from raft_sft.train import mark_eos, tokenize_examples

    cfg = dataclasses.replace(tiny_config.generate, n_samples=2, max_new_tokens=8, stop=STOP)
    out = transformers_backend(tiny_config.model.name_or_path, tiny_config.model, cfg)(REVIEW_OPENINGS[:4], 3)
    rows = [
        {"prompt": p, "completion": c.text, "truncated": c.truncated}
        for p, comps in zip(REVIEW_OPENINGS, out, strict=False)
        for c in comps
        if first_stop_end(c.text) is not None
    ]
    assert rows
    tokenizer = AutoTokenizer.from_pretrained(tiny_config.model.name_or_path)
    eos = tokenizer.eos_token_id
    encoded = tokenize_examples(mark_eos(Dataset.from_list(rows), STOP), tokenizer)
    assert not any(ids[-1] == eos for ids in encoded["input_ids"])
    # the same rows read without the stop list (they would have ended by themselves): trained with EOS
    encoded = tokenize_examples(mark_eos(Dataset.from_list(rows), []), tokenizer)
    assert all(ids[-1] == eos for ids in encoded["input_ids"])
    ended = [ended_on_eos(r["completion"], r["truncated"], STOP) for r in rows]
    seqs, _ = completion_token_ids(tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows], ended)
    assert not any(s[-1] == eos for s in seqs)


def test_ended_on_eos_reads_the_stop_strings() -> None:
    from raft_data.models.logprobs import ended_on_eos

    stop = [". ", "!"]
    assert ended_on_eos("a fine film", truncated=False, stop=stop)  # no stop string at its end: the model ended it
    assert not ended_on_eos("a fine film. ", truncated=False, stop=stop)
    assert not ended_on_eos("what a film!", truncated=False, stop=stop)
    assert not ended_on_eos("a fine film", truncated=True, stop=stop)
    assert ended_on_eos("a fine film. ", truncated=False, stop=[])


@pytest.mark.parametrize("stop", [[""], "e", [". ", 3]])
def test_bad_stop_strings_name_the_field(stop: object) -> None:
    data = {"model": {"name_or_path": "m"}, "prompts": {"path": "p.jsonl"}, "generate": {"stop": stop}}
    with pytest.raises(ConfigError, match=r"generate\.stop="):
        config_from_dict(data)
