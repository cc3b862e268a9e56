"""Prompt sources: read a jsonl / parquet / csv file (or a `datasets` id), give each prompt a stable id, keep a
held-out split aside, and draw each round's b prompts with a seed that differs per round.

Run as:
    raft-data prompts --config pipelines/imdb_positive.yaml --round 0   # print the round's prompts
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from raft_data.config import Config, PromptsConfig
from raft_data.data.readers import read_columns
from raft_data.errors import DataError, shown
from raft_data.storage import schemas


def hash_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _is_messages(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )


def read_prompt_source(cfg: PromptsConfig) -> pa.Table:
    """All prompts of the source as (prompt_id, prompt, answer, level), in source order, deduplicated by prompt_id.
    `answer` and `level` are null unless prompts.answer_column / level_column name them. A prompt id given twice must
    come with the same prompt, answer and level both times."""
    path = Path(cfg.path)
    extra = [c for c in (cfg.id_column, cfg.answer_column, cfg.level_column) if c]
    columns = list(dict.fromkeys([cfg.prompt_column, *extra]))
    data = read_columns(cfg.path, columns, cfg.split)

    ids: list[str] = []
    prompts: list[str] = []
    answers: list[str | None] = []
    levels: list[str | None] = []
    first: dict[str, tuple[int, str, str | None, str | None]] = {}  # prompt_id -> (row, prompt, answer, level)
    for i, text in enumerate(data[cfg.prompt_column]):
        if _is_messages(text):  # a conversation: kept as JSON text, rendered by generate.chat_template
            text = json.dumps([{"role": m["role"], "content": m["content"]} for m in text], ensure_ascii=False)
        if not isinstance(text, str):
            raise DataError(f"{path}: row {i} field {cfg.prompt_column!r} is {shown(text)}, not text")
        if not text.strip():
            continue  # an empty prompt carries no task
        pid = _prompt_id(data, cfg.id_column, i, path) if cfg.id_column else hash_id(text)
        answer = _text_cell(data, cfg.answer_column, i, path, required=True)
        level = _text_cell(data, cfg.level_column, i, path, required=False)
        if pid in first:
            row, *before = first[pid]
            for what, old, new in zip(("prompt", "answer", "level"), before, (text, answer, level), strict=True):
                if old != new:
                    name = f"{cfg.id_column}={pid!r}" if cfg.id_column else f"the prompt {text[:40]!r}"
                    raise DataError(
                        f"{path}: {name} is given twice (rows {row} and {i}) with two different {what}s: "
                        f"{shown(old, 60)} and {shown(new, 60)}"
                    )
            continue
        first[pid] = (i, text, answer, level)
        if cfg.levels and level not in cfg.levels:
            continue
        ids.append(pid)
        prompts.append(text)
        answers.append(answer)
        levels.append(level)
    if not ids:
        only = f" of levels {cfg.levels}" if cfg.levels else ""
        raise DataError(f"{path}: no prompts{only} in column {cfg.prompt_column!r} (the prompt set is empty)")
    return pa.table({"prompt_id": ids, "prompt": prompts, "answer": answers, "level": levels}, schema=schemas.PROMPTS)


def _prompt_id(data: dict[str, list], column: str, i: int, path: Path) -> str:
    """Row i's id: text or an integer, not empty."""
    value = data[column][i]
    ok = (isinstance(value, str) and bool(value.strip())) or (isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise DataError(f"{path}: row {i} field {column!r} is {shown(value)}: a prompt id is text or an integer")
    return str(value)


def _text_cell(data: dict[str, list], column: str | None, i: int, path: Path, required: bool) -> str | None:
    """Row i of an answer or level column as text: text, or a number written as it reads (12, 0.5); empty is
    missing. true/false, lists and objects are not answers."""
    if column is None:
        return None
    value = data[column][i]
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DataError(f"{path}: row {i} field {column!r} is {shown(value)}: every prompt needs an answer")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{path}: row {i} field {column!r} is {shown(value)}: expected text or a number")
    if isinstance(value, int) and value.bit_length() > 1000:
        raise DataError(f"{path}: row {i} field {column!r} is {shown(value)}: a number of at most 300 digits")
    return str(value).strip()


def is_heldout(prompt_ids: list[str], fraction: float) -> np.ndarray:
    """Held-out membership from the id alone, so the split never changes when the source grows or is reordered."""
    buckets = np.array([int(hashlib.sha256(("heldout:" + p).encode()).hexdigest()[:8], 16) for p in prompt_ids])
    return buckets < fraction * 2**32


def split_prompts(cfg: PromptsConfig) -> tuple[pa.Table, pa.Table]:
    """(train pool, held-out set) of the whole source."""
    table = read_prompt_source(cfg)
    held = is_heldout(table.column("prompt_id").to_pylist(), cfg.heldout_fraction)
    train, heldout = table.filter(pa.array(~held)), table.filter(pa.array(held))
    if train.num_rows == 0:
        raise DataError(
            f"{cfg.path}: all {table.num_rows} prompts fall in the held-out split (prompts.heldout_fraction)"
        )
    return train, heldout


def draw_round_prompts(cfg: PromptsConfig, seed: int, round_idx: int, levels: list[str] | None = None) -> pa.Table:
    """The round's b prompts from the train pool (of `levels` only, when given), without replacement, seeded by
    (seed, round)."""
    train, _ = split_prompts(cfg)
    if levels is not None:
        train = train.filter(pa.array([lv in levels for lv in train["level"].to_pylist()]))
    n = min(cfg.n_prompts, train.num_rows)
    rng = np.random.default_rng([seed, round_idx])
    idx = np.sort(rng.choice(train.num_rows, size=n, replace=False))
    return train.take(pa.array(idx))


def reference_texts(cfg: Config) -> dict[str, object]:
    """The `eval.reference_column` of the prompts source (human reference text, e.g. the whole review), by
    prompt_id; the caller checks that the column is set."""
    column = cfg.eval.reference_column
    key = cfg.prompts.id_column or cfg.prompts.prompt_column
    data = read_columns(cfg.prompts.path, list(dict.fromkeys([key, column])), cfg.prompts.split)
    ids = [str(v) if cfg.prompts.id_column else hash_id(v) for v in data[key]]
    return dict(zip(ids, data[column], strict=True))


def eval_prompts(cfg: Config) -> pa.Table:
    """The first eval.n_prompts held-out prompts in source order (the held-out split is chosen by id hash, so this
    is a fixed, unordered subset), with a `reference` column when eval.reference_column is set."""
    _, heldout = split_prompts(cfg.prompts)
    if heldout.num_rows == 0:
        raise DataError(
            f"{cfg.prompts.path}: no held-out prompts to evaluate on; set prompts.heldout_fraction > 0 "
            f"(now {cfg.prompts.heldout_fraction})"
        )
    table = heldout.slice(0, min(cfg.eval.n_prompts, heldout.num_rows))
    column = cfg.eval.reference_column
    if column is None:
        return table
    by_id = reference_texts(cfg)
    refs = []
    for pid in table["prompt_id"].to_pylist():
        ref = by_id.get(pid)
        if not isinstance(ref, str) or not ref.strip():
            raise DataError(f"{cfg.prompts.path}: eval.reference_column={column!r} is {ref!r} for prompt_id={pid}")
        refs.append(ref)
    return table.append_column("reference", pa.array(refs, pa.string()))
