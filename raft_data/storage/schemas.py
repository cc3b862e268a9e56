"""Every Parquet artifact's schema, in one place. Tables are cast to these before writing; nothing is inferred."""

from __future__ import annotations

import pyarrow as pa

PROMPTS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),  # stable across rounds, derived from the source
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=True),  # the gold answer (prompts.answer_column), if any
        pa.field("level", pa.string(), nullable=True),  # the difficulty level (prompts.level_column), if any
        pa.field("task", pa.string(), nullable=True),  # the task (prompts.task_column) that picks its verifier, if any
    ]
)

SAMPLES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),  # 0..K-1 within the prompt
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("completion", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),  # generated tokens, the end-of-sequence token included
        pa.field("truncated", pa.bool_(), nullable=False),  # stopped by max_new_tokens, not by end-of-sequence or stop
        pa.field("source", pa.string(), nullable=False),  # where the candidate came from, e.g. "policy"
        pa.field("generator", pa.string(), nullable=False),  # backend and model that produced it
        pa.field("seed", pa.int64(), nullable=False),  # the shard's sampling seed
        pa.field("round", pa.int32(), nullable=False),
        pa.field("answer", pa.string(), nullable=True),  # the prompt's gold answer, if the source has one
        pa.field("level", pa.string(), nullable=True),  # the prompt's difficulty level, if the source has one
        pa.field("task", pa.string(), nullable=True),  # the prompt's task (prompts.task_column), if the source has one
        # why the backend produced no sample for this row after its retries (null: the row is a sample); such rows
        # are never scored, selected or trained on, and `--retry-failed` redoes only them
        pa.field("error", pa.string(), nullable=True),
        # which pass of the stage made the row: 0 the first, 1, 2, ... each `--top-up` after it (its settings are in
        # the manifest's `passes`); shards written before this column hold no such column and are all pass 0
        pa.field("pass", pa.int32(), nullable=True),
    ]
)


def scores_schema(components: list[str], extracted: bool = False) -> pa.Schema:
    """`reward` is what selection ranks by; each reward component keeps its own column; with a checker of answers,
    `extracted` holds the answer found in the completion (null: none found). A row whose sample failed, or whose
    reward raised on it, has null rewards and says why in `error`: it is never selected."""
    fields = [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("reward", pa.float64(), nullable=True),
    ]
    fields += [pa.field(name, pa.float64(), nullable=True) for name in components if name != "reward"]
    if extracted:
        fields.append(pa.field("extracted", pa.string(), nullable=True))
    fields.append(pa.field("error", pa.string(), nullable=True))
    return pa.schema(fields)


SELECTED = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("completion", pa.string(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
    ]
)

# One row per completion the eval stage generated on held-out prompts: greedy (sample_idx 0) and sampled.
EVAL_COMPLETIONS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # greedy | sampled
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("completion", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),  # score.reward
        pa.field("second_reward", pa.float64(), nullable=True),  # eval.second_reward, null when not configured
        pa.field("logp", pa.float64(), nullable=True),  # log p_model(completion | prompt), sampled rows only
        pa.field("ref_logp", pa.float64(), nullable=True),  # log p_base(completion | prompt), sampled rows only
        pa.field("n_scored", pa.int32(), nullable=True),  # completion tokens whose log-probability was taken (sampled)
        pa.field("entropy_sum", pa.float64(), nullable=True),  # the model's next-token entropy summed over them
        # the prompt's held-out reference text (eval.reference_column), on its greedy row: log-likelihood under the
        # model and tokens predicted, from which the eval's perplexity is summed
        pa.field("reference_logp", pa.float64(), nullable=True),
        pa.field("reference_tokens", pa.int32(), nullable=True),
    ]
)

MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

# `selected/` with select.format=messages: the prompt as the user turn, the completion as the assistant turn.
SELECTED_MESSAGES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("messages", pa.list_(MESSAGE), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
    ]
)

# `selected/` with select.format=pairs: one preference pair per prompt, the form TRL's DPO trainer reads
# (prompt, chosen, rejected), with where each side came from.
PAIRS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field("chosen_reward", pa.float64(), nullable=False),
        pa.field("rejected_reward", pa.float64(), nullable=False),
        pa.field("chosen_sample_idx", pa.int32(), nullable=False),
        pa.field("rejected_sample_idx", pa.int32(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
    ]
)

# `raft-data heldout`: one row per sampled completion of a model on held-out prompts.
HELDOUT_COMPLETIONS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("completion", pa.string(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
    ]
)

# `selected/replay.parquet` (rounds.replay_fraction > 0): human reference text of training-split prompts, added to the
# round's SFT data beside the selected samples.
REPLAY = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("completion", pa.string(), nullable=False),  # the reference text after the prompt
        pa.field("truncated", pa.bool_(), nullable=False),  # always false: the text ended by itself
        pa.field("source", pa.string(), nullable=False),  # "replay"
        pa.field("round", pa.int32(), nullable=False),
    ]
)
