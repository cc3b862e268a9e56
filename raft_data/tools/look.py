"""Look-only tools that write nothing: the resolved config, the prompts a round draws, the candidates each extra
source has for them, the texts the model is conditioned on, and one log-probability or reward-model score.

Run as:
    raft-data config  --config pipelines/imdb_positive.yaml generate.n_samples=8
    raft-data prompts --config pipelines/imdb_positive.yaml --round 0
    raft-data chat    --config pipelines/imdb_positive.yaml --round 0 generate.chat_template=true
    raft-data logprob --model assets/smollm2-135m-instruct "The film is" " a delight"
    raft-data reward  --model assets/reward-minilm "The film is" " a delight from start to end"
"""

from __future__ import annotations

from raft_data.config import Config, ModelConfig
from raft_data.data.chat import context_limit, format_prompts
from raft_data.data.prompts import draw_round_prompts
from raft_data.data.sources import candidates, load_source
from raft_data.models.loading import load_tokenizer
from raft_data.stages.generate import curriculum_levels
from raft_data.storage import policy_for_round


def round_prompt_lines(cfg: Config, round_idx: int) -> list[str]:
    """`prompt_id<TAB>prompt` of each prompt the round draws."""
    table = draw_round_prompts(cfg.prompts, cfg.experiment.seed, round_idx, curriculum_levels(cfg, round_idx))
    return [f"{pid}\t{p}" for pid, p in zip(table["prompt_id"].to_pylist(), table["prompt"].to_pylist(), strict=True)]


def candidate_count_lines(cfg: Config, round_idx: int) -> list[str]:
    """For each extra source, how many candidates it has for how many of the round's prompts."""
    prompts = draw_round_prompts(cfg.prompts, cfg.experiment.seed, round_idx)
    ids, texts = prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist()
    lines = []
    for spec in cfg.generate.extra_sources:
        source = load_source(spec)
        found = [len(candidates(source, pid, text)) for pid, text in zip(ids, texts, strict=True)]
        lines.append(f"{spec['name']}: {sum(found)} candidates for {sum(n > 0 for n in found)} of {len(ids)} prompts")
    return lines


def formatted_prompt_lines(cfg: Config, round_idx: int) -> list[str]:
    """The round's prompts as the model sees them (chat template, length rule), then the long-prompt report."""
    model_path, _ = policy_for_round(cfg, round_idx)
    prompts = draw_round_prompts(cfg.prompts, cfg.experiment.seed, round_idx)
    tokenizer = load_tokenizer(model_path, cfg.model)
    ids = prompts["prompt_id"].to_pylist()
    out = format_prompts(
        ids, prompts["prompt"].to_pylist(), tokenizer, cfg.generate, context_limit(model_path, cfg.generate)
    )
    return [f"{pid}\t{text!r}" for pid, text in zip(ids, out.texts, strict=True)] + [
        str(out.report(cfg.generate.long_prompts))
    ]


def one_logprob(model: str, prompt: str, completion: str) -> float:
    """log p(completion | prompt) under a model folder, the completion ending with end-of-sequence."""
    from raft_data.models.logprobs import load_logprob_fn

    return load_logprob_fn(model, ModelConfig(name_or_path=model))([prompt], [completion], [True])[0]


def one_reward(model: str, prompt: str, completion: str, label: str | None, chat_template: bool) -> float:
    """A sequence-classification reward model's score of one prompt and completion."""
    from raft_data.rewards.hf import hf_reward

    index = int(label) if label is not None and label.isdigit() else label
    return hf_reward(model, label=index, chat_template=chat_template)([prompt], [completion])[0]
