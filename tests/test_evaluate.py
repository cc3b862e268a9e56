"""Eval metrics on known inputs: distinct-n, MSTTR, log-probabilities and perplexity against a hand computation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from raft_data.models.logprobs import perplexity, sequence_logprobs
from raft_data.rounds import should_stop
from raft_data.stages.evaluate import by_prompt, distinct_n, format_metrics, jackknife_se, msttr


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


def test_jackknife_se_over_prompts() -> None:
    groups = by_prompt(["a", "b", "a", "c", "b", "c"], [1.0, 4.0, 3.0, 0.0, 2.0, 2.0])
    assert groups == [[1.0, 3.0], [4.0, 2.0], [0.0, 2.0]]
    # groups of equal size: the jackknife s.e. of the mean is the plain s.e. of the group means (2, 3, 1)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert jackknife_se(groups, mean) == pytest.approx(math.sqrt(1.0 / 3))
    # the same texts under every prompt: leaving one prompt out changes nothing
    same = [["a good film", "a bad film"]] * 4
    assert jackknife_se(same, lambda t: distinct_n(t, 2)) == pytest.approx(0.0)
    assert jackknife_se([[1.0, 2.0]], mean) is None


def test_round_line_gives_standard_errors_where_measured() -> None:
    line = format_metrics({"reward_sampled": 0.5312, "reward_sampled_se": 0.0401, "ppl_ratio": 1.16, "kl": None})
    assert line == "held-out reward 0.531 ± 0.040 | ppl ratio 1.16"
    assert format_metrics({"reward_sampled": 0.5}) == "held-out reward 0.500"  # an older manifest


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


def _hand_entropy(model, ids: list[int], start: int) -> float:
    """One sequence, no padding: sum over t >= start of the entropy of p(. | tokens_<t), in nats."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    total = 0.0
    for t in range(max(start, 1), len(ids)):
        logp = torch.log_softmax(logits[t - 1], dim=-1)
        total += -(logp.exp() * logp).sum().item()
    return total


def test_sequence_logprobs_entropy_from_the_same_pass(tiny) -> None:
    tokenizer, model = tiny
    seqs = [tokenizer(t)["input_ids"] for t in ["A fine film.", "It was a long and very dull evening at the movies."]]
    starts = [2, 4]
    sums, counts, entropies = sequence_logprobs(model, seqs, starts, 2, tokenizer.pad_token_id, entropy=True)
    plain_sums, plain_counts = sequence_logprobs(model, seqs, starts, 1, tokenizer.pad_token_id)
    assert sums == pytest.approx(plain_sums, abs=1e-4) and counts == plain_counts
    for e, c, ids, start in zip(entropies, counts, seqs, starts, strict=True):
        assert e == pytest.approx(_hand_entropy(model, ids, start), rel=1e-4)
        assert 0 < e / c <= math.log(len(tokenizer)) + 1e-6  # a per-token entropy is at most log(vocabulary)


# ---------------------------------------------------------------------------------------------------------------------
# measure(): one load per model, the base perplexity read from the baseline, against a plain computation


@pytest.fixture(scope="module")
def other_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with every weight moved by seeded noise: a stand-in for a fine-tuned round."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    path = tmp_path_factory.mktemp("tiny-llama-moved")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def row_sampled_alone(tokenizer, model, cfg):
    """The one-pass eval sampler's sampled rows of one prompt, generated without any other row in the batch."""
    import torch

    from raft_data.backends.transformers import _completion, row_sampler, row_seed, stop_token_ids

    tokenizer.padding_side = "left"
    stops = stop_token_ids(tokenizer, model)

    @torch.inference_mode()
    def sample(prompt: str, seed: int, index: int) -> list:
        enc = tokenizer([prompt] * cfg.n_samples, return_tensors="pt")
        seeds = [row_seed(seed, index, j + 1) for j in range(cfg.n_samples)]
        seqs = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=cfg.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(stops),
            logits_processor=row_sampler([False] * cfg.n_samples, seeds, cfg),
        )
        return [_completion(tokenizer, ids, stops) for ids in seqs[:, enc["input_ids"].shape[1] :].tolist()]

    return sample


def _plain_metrics(cfg, model_path: Path, base_path: Path, prompts: list[str], refs: list[str]) -> dict:
    """The metrics the slow, obvious way: a fresh backend (its own load) per generation pass, fresh loads of the
    model and the base model, one sequence at a time without padding, the base perplexity recomputed."""
    import dataclasses

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raft_data.backends import BACKENDS
    from raft_data.stages.evaluate import eval_seed

    max_new = cfg.eval.max_new_tokens or cfg.generate.max_new_tokens
    sample_cfg = dataclasses.replace(cfg.generate, n_samples=cfg.eval.n_samples, max_new_tokens=max_new)
    seed, size = eval_seed(cfg.experiment.seed), sample_cfg.batch_size
    # greedy: a backend of its own, a pass of its own (as before the one-pass sampler); sampled: the one-pass
    # sampler's rows, one prompt at a time and without the greedy rows beside them
    greedy_cfg = dataclasses.replace(sample_cfg, n_samples=1, temperature=0.0)
    greedy = BACKENDS["transformers"](str(model_path), cfg.model, greedy_cfg)
    out = {
        "greedy": [
            c for lo in range(0, len(prompts), size) for cs in greedy(prompts[lo : lo + size], seed + lo) for c in cs
        ]
    }
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    sampler = row_sampled_alone(tokenizer, AutoModelForCausalLM.from_pretrained(model_path).eval(), sample_cfg)
    out["sampled"] = [c for i, p in enumerate(prompts) for c in sampler(p, seed, i)]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    base = AutoModelForCausalLM.from_pretrained(base_path).eval()
    pairs = [(prompts[i // cfg.eval.n_samples], c) for i, c in enumerate(out["sampled"])]  # K per prompt, in order
    logp, ref_logp, entropy, n_tokens = [], [], 0.0, 0
    for prompt, c in pairs:
        p_ids = tokenizer(prompt)["input_ids"]
        eos = [] if c.truncated else [tokenizer.eos_token_id]
        c_ids = tokenizer(c.text, add_special_tokens=False)["input_ids"] + eos
        lp, n = _hand_logprob(model, p_ids + c_ids, len(p_ids))
        logp.append(lp)
        ref_logp.append(_hand_logprob(base, p_ids + c_ids, len(p_ids))[0])
        entropy += _hand_entropy(model, p_ids + c_ids, len(p_ids))
        n_tokens += n

    def ppl(m) -> float:
        scored = [_hand_logprob(m, tokenizer(t)["input_ids"], 1) for t in refs]
        return math.exp(-sum(s for s, _ in scored) / sum(n for _, n in scored))

    sampled_texts = [c.text for c in out["sampled"]]
    return {
        "completions": {k: [c.text for c in v] for k, v in out.items()},
        "perplexity": ppl(model),
        "ppl_ratio": ppl(model) / ppl(base),
        "kl": sum(a - b for a, b in zip(logp, ref_logp, strict=True)) / len(logp),
        "kl_per_token": sum(a - b for a, b in zip(logp, ref_logp, strict=True)) / n_tokens,
        "entropy": entropy / n_tokens,
        "distinct_2": distinct_n(sampled_texts, 2),
        "mean_tokens": sum(c.n_tokens for c in out["sampled"]) / len(out["sampled"]),
        "truncation_rate": sum(c.truncated for c in out["sampled"]) / len(out["sampled"]),
    }


def test_measure_matches_a_plain_computation(tmp_path: Path, tiny_model_dir: Path, other_model_dir: Path) -> None:
    import pyarrow as pa

    from raft_data.stages.evaluate import measure

    from .conftest import REVIEW_OPENINGS, make_config

    prompts = REVIEW_OPENINGS[:5]
    refs = [f"{p} a film I will remember for a long time." for p in prompts]
    table_in = pa.table({"prompt_id": [f"p{i}" for i in range(5)], "prompt": prompts, "reference": refs})
    cfg = make_config(
        tmp_path,
        tiny_model_dir,
        tmp_path / "unused.jsonl",
        generate={"batch_size": 2, "max_new_tokens": 6},
        eval={"n_prompts": 5, "n_samples": 2, "batch_size": 3},
    )
    _, base_m = measure(cfg, str(tiny_model_dir), True, table_in)
    table, m = measure(cfg, str(other_model_dir), False, table_in)
    _, cached_m = measure(cfg, str(other_model_dir), False, table_in, base_perplexity=base_m["perplexity"])
    want = _plain_metrics(cfg, other_model_dir, tiny_model_dir, prompts, refs)

    rows = table.to_pylist()
    for kind in ("greedy", "sampled"):  # one pass samples exactly what a pass per kind and per prompt does
        assert [r["completion"] for r in rows if r["kind"] == kind] == want["completions"][kind]
    for key in ("perplexity", "ppl_ratio", "kl", "kl_per_token", "entropy", "distinct_2", "mean_tokens"):
        # float32 sums of tens of tokens, batched and padded against one at a time: equal to about 1e-5
        assert m[key] == pytest.approx(want[key], rel=1e-4, abs=1e-4), key
        assert cached_m[key] == pytest.approx(m[key], rel=1e-6), key  # the baseline's perplexity, not recomputed
    assert m["truncation_rate"] == pytest.approx(want["truncation_rate"])
    assert m["kl"] != 0 and base_m["kl"] == 0.0 and base_m["kl_per_token"] == 0.0 and base_m["ppl_ratio"] == 1.0
    assert base_m["entropy"] > 0


def test_cached_base_perplexity_only_for_the_same_texts_and_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    import dataclasses

    import pyarrow as pa

    from raft_data import storage
    from raft_data.stages.evaluate import cached_base_perplexity, reference_digest

    from .conftest import make_config

    cfg = make_config(tmp_path, tiny_model_dir, tmp_path / "unused.jsonl")
    prompts = pa.table({"prompt_id": ["a"], "prompt": ["The film"], "reference": ["The film is a delight."]})
    assert cached_base_perplexity(cfg, prompts) is None  # no baseline yet
    manifest = {
        "metrics": {"perplexity": 123.0},
        "reference_digest": reference_digest(cfg, ["The film is a delight."]),
    }
    storage.write_json(manifest, storage.baseline_dir(cfg) / "manifest.json")
    assert cached_base_perplexity(cfg, prompts) == 123.0
    other_texts = prompts.set_column(2, "reference", pa.array(["Another review."]))
    assert cached_base_perplexity(cfg, other_texts) is None
    other_dtype = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="bfloat16"))
    assert cached_base_perplexity(other_dtype, prompts) is None
    assert cached_base_perplexity(cfg, prompts.drop_columns(["reference"])) is None


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 2, 1.0), (1.0, 0, 0.7)]
)
def test_row_sampler_draws_from_the_configured_distribution(temperature: float, top_k: int, top_p: float) -> None:
    """The one-pass eval sampler's Gumbel-max draws follow softmax(logits / T) cut by top-k and top-p; greedy rows
    take the argmax."""
    import dataclasses

    import torch

    from raft_data.backends.transformers import row_sampler
    from raft_data.config import GenerateConfig

    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0])
    probs = torch.softmax(logits / temperature, -1)
    if top_k:
        probs[top_k:] = 0
    if top_p < 1.0:  # keep the fewest most likely tokens whose mass reaches top_p
        keep = (torch.cumsum(probs, 0) - probs) < top_p
        probs = probs * keep
    probs = probs / probs.sum()
    cfg = dataclasses.replace(GenerateConfig(), temperature=temperature, top_k=top_k, top_p=top_p)
    n = 4000
    greedy = [i % 10 == 0 for i in range(n)]
    processor = row_sampler(greedy, list(range(n)), cfg)
    scores = processor(torch.zeros((n, 1), dtype=torch.long), logits.repeat(n, 1))
    choice = scores.argmax(-1)
    assert bool((scores.isinf().sum(-1) == 4).all())  # one token left per row
    assert set(choice[torch.tensor(greedy)].tolist()) == {0}
    drawn = choice[~torch.tensor(greedy)]
    freq = torch.bincount(drawn, minlength=5).float() / len(drawn)
    assert torch.allclose(freq, probs, atol=0.03), (freq, probs)
    again = row_sampler(greedy, list(range(n)), cfg)(torch.zeros((n, 1), dtype=torch.long), logits.repeat(n, 1))
    assert torch.equal(again, scores)  # the rows' seeds, not the call, decide


def test_measure_with_an_engine_backend_runs_a_pass_per_kind(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backends other than transformers (vLLM, a server) sample in their own engine: one pass of greedy and one of
    sampled completions, each from the backend, and the model is loaded only for the log-probabilities after."""
    import dataclasses

    import pyarrow as pa

    from raft_data.backends import BACKENDS
    from raft_data.stages.evaluate import eval_seed, measure

    from .conftest import REVIEW_OPENINGS, make_config

    calls: list[tuple[int, float]] = []

    def engine(model_path, model_cfg, gen_cfg):  # stands in for an engine: the transformers backend, counted
        calls.append((gen_cfg.n_samples, gen_cfg.temperature))
        return BACKENDS["transformers"](model_path, model_cfg, gen_cfg)

    prompts = REVIEW_OPENINGS[:3]
    table_in = pa.table(
        {"prompt_id": ["a", "b", "c"], "prompt": prompts, "reference": [f"{p} fine." for p in prompts]}
    )
    cfg = make_config(
        tmp_path,
        tiny_model_dir,
        tmp_path / "unused.jsonl",
        generate={"backend": "openai", "api_base": "http://127.0.0.1:1/v1", "batch_size": 2, "max_new_tokens": 5},
        eval={"n_prompts": 3, "n_samples": 2},
    )
    monkeypatch.setitem(BACKENDS, "openai", engine)
    table, metrics = measure(cfg, str(tiny_model_dir), True, table_in)
    assert calls == [(1, 0.0), (2, cfg.generate.temperature)]
    seed = eval_seed(cfg.experiment.seed)
    sample_cfg = dataclasses.replace(cfg.generate, backend="transformers", n_samples=2, max_new_tokens=5)
    direct = BACKENDS["transformers"](str(tiny_model_dir), cfg.model, sample_cfg)
    want = [c.text for lo in (0, 2) for cs in direct(prompts[lo : lo + 2], seed + lo) for c in cs]
    assert [r["completion"] for r in table.to_pylist() if r["kind"] == "sampled"] == want
    assert table.num_rows == 3 * 3 and metrics["kl"] == 0.0 and metrics["perplexity"] > 0
