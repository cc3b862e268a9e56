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
    """All prompts of the source as (prompt_id, prompt, answer, level, task), in source order, deduplicated by
    prompt_id. `answer`, `level` and `task` are null unless prompts.answer_column / level_column / task_column name
    them. A prompt id given twice must come with the same prompt, answer, level and task both times."""
    return read_prompt_splits(cfg)[0]


def read_prompt_splits(cfg: PromptsConfig) -> tuple[pa.Table, list[str] | None]:
    """`read_prompt_source`'s table and each row's split (train | heldout) from prompts.split_column, or None when
    that is not set."""
    path = Path(cfg.path)
    extra = [c for c in (cfg.id_column, cfg.answer_column, cfg.level_column, cfg.split_column, cfg.task_column) if c]
    columns = list(dict.fromkeys([cfg.prompt_column, *extra]))
    data = read_columns(cfg.path, columns, cfg.split)

    ids: list[str] = []
    prompts: list[str] = []
    answers: list[str | None] = []
    levels: list[str | None] = []
    splits: list[str] = []
    tasks: list[str | None] = []
    first: dict[str, tuple] = {}  # prompt_id -> (row, prompt, answer, level, split, task)
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
        split = _split_cell(data, cfg.split_column, i, path)
        task = _text_cell(data, cfg.task_column, i, path, required=True, need="a task")
        if pid in first:
            row, *before = first[pid]
            for what, old, new in zip(
                ("prompt", "answer", "level", "split", "task"), before, (text, answer, level, split, task), strict=True
            ):
                if old != new:
                    name = f"{cfg.id_column}={pid!r}" if cfg.id_column else f"the prompt {text[:40]!r}"
                    raise DataError(
                        f"{path}: {name} is given twice (rows {row} and {i}) with two different {what}s: "
                        f"{shown(old, 60)} and {shown(new, 60)}"
                    )
            continue
        first[pid] = (i, text, answer, level, split, task)
        if cfg.levels and level not in cfg.levels:
            continue
        ids.append(pid)
        prompts.append(text)
        answers.append(answer)
        levels.append(level)
        splits.append(split)
        tasks.append(task)
    if not ids:
        only = f" of levels {cfg.levels}" if cfg.levels else ""
        raise DataError(f"{path}: no prompts{only} in column {cfg.prompt_column!r} (the prompt set is empty)")
    columns = {"prompt_id": ids, "prompt": prompts, "answer": answers, "level": levels, "task": tasks}
    table = pa.table(columns, schema=schemas.PROMPTS)
    return table, (splits if cfg.split_column else None)


SPLITS = ("train", "heldout")


def _split_cell(data: dict[str, list], column: str | None, i: int, path: Path) -> str | None:
    if column is None:
        return None
    value = data[column][i]
    if value not in SPLITS:
        raise DataError(f"{path}: row {i} field {column!r} is {shown(value)}: a split is train or heldout")
    return value


def _prompt_id(data: dict[str, list], column: str, i: int, path: Path) -> str:
    """Row i's id: text or an integer, not empty."""
    value = data[column][i]
    ok = (isinstance(value, str) and bool(value.strip())) or (isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise DataError(f"{path}: row {i} field {column!r} is {shown(value)}: a prompt id is text or an integer")
    return str(value)


def _text_cell(
    data: dict[str, list], column: str | None, i: int, path: Path, required: bool, need: str = "an answer"
) -> str | None:
    """Row i of an answer, level or task column as text: text, or a number written as it reads (12, 0.5); empty is
    missing (refused when `required`: every prompt needs `need`). true/false, lists and objects are not answers."""
    if column is None:
        return None
    value = data[column][i]
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DataError(f"{path}: row {i} field {column!r} is {shown(value)}: every prompt needs {need}")
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
    """(train pool, held-out set) of the whole source: by prompts.split_column when set, else by prompt_id hash.
    With a split column a prompt text on both sides is refused: a held-out problem must never be trained on,
    whatever its id. (The hash split of a source that repeats a text under two ids, as review openings do, may
    put it on both sides; `split_record` counts them.)"""
    table, splits = read_prompt_splits(cfg)
    if splits is not None:
        held = np.array([s == "heldout" for s in splits], dtype=bool)
    else:
        held = is_heldout(table.column("prompt_id").to_pylist(), cfg.heldout_fraction)
    train, heldout = table.filter(pa.array(~held)), table.filter(pa.array(held))
    if train.num_rows == 0:
        how = f"prompts.split_column={cfg.split_column!r}" if splits is not None else "prompts.heldout_fraction"
        raise DataError(f"{cfg.path}: all {table.num_rows} prompts fall in the held-out split ({how})")
    train_texts = dict(zip(train["prompt"].to_pylist(), train["prompt_id"].to_pylist(), strict=True))
    for pid, text in zip(heldout["prompt_id"].to_pylist(), heldout["prompt"].to_pylist(), strict=True):
        if splits is not None and text in train_texts:
            raise DataError(
                f"{cfg.path}: the prompt {shown(text, 60)} is both held out ({cfg.id_column or 'prompt_id'}={pid!r}) "
                f"and in the train pool (id {train_texts[text]!r}): held-out prompts must never be trained on"
            )
    return train, heldout


def split_record(cfg: PromptsConfig) -> dict:
    """What a manifest records of the train / held-out split: how it was made, its sizes, digests of each side's
    ids, and the overlap checked (always 0: `split_prompts` refuses any). A generated source's own record (the
    seeds it was made from, `raft-data gym`) is copied in."""
    train, heldout = split_prompts(cfg)
    train_ids, heldout_ids = train["prompt_id"].to_pylist(), heldout["prompt_id"].to_pylist()
    record: dict = {
        "by": f"column {cfg.split_column}" if cfg.split_column else f"prompt_id hash, fraction {cfg.heldout_fraction}",
        "n_train": len(train_ids),
        "n_heldout": len(heldout_ids),
        "train_levels": cfg.train_levels or None,  # the levels rounds draw from (None: all)
        "train_ids_sha256": hash_id(json.dumps(sorted(train_ids))),
        "heldout_ids_sha256": hash_id(json.dumps(sorted(heldout_ids))),
        "shared_ids": len(set(train_ids) & set(heldout_ids)),
        "shared_prompts": len(set(train["prompt"].to_pylist()) & set(heldout["prompt"].to_pylist())),
    }
    source = Path(cfg.path)
    sidecar = source.with_name(source.name + ".manifest.json")
    if sidecar.is_file():
        try:
            record["source"] = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{sidecar} cannot be read as JSON: {e}") from None
    return record


def draw_round_prompts(cfg: PromptsConfig, seed: int, round_idx: int, levels: list[str] | None = None) -> pa.Table:
    """The round's b prompts from the train pool (of prompts.train_levels, and of `levels` too when given), without
    replacement, seeded by (seed, round)."""
    train, _ = split_prompts(cfg)
    for only in (cfg.train_levels or None, levels):
        if only is not None:
            train = train.filter(pa.array([lv in only for lv in train["level"].to_pylist()], pa.bool_()))
    if train.num_rows == 0:
        raise DataError(f"{cfg.path}: no train prompts of levels {cfg.train_levels or levels} (prompts.train_levels)")
    n = min(cfg.n_prompts, train.num_rows)
    rng = np.random.default_rng([seed, round_idx])
    idx = np.sort(rng.choice(train.num_rows, size=n, replace=False))
    return train.take(pa.array(idx))


def across_levels(table: pa.Table, n: int) -> pa.Table:
    """The first n rows, taken a level at a time in turn (each level's rows in source order), so that a subset of a
    source written level by level covers every level; without levels, simply the first n rows."""
    levels = table["level"].to_pylist()
    if len(set(levels)) <= 1:
        return table.slice(0, min(n, table.num_rows))
    queues: dict = {}
    for i, lv in enumerate(levels):
        queues.setdefault(lv, []).append(i)
    order: list[int] = []
    depth = 0
    while len(order) < min(n, table.num_rows):
        for rows in queues.values():
            if depth < len(rows) and len(order) < n:
                order.append(rows[depth])
        depth += 1
    return table.take(pa.array(sorted(order), pa.int64()))


def reference_texts(cfg: Config) -> dict[str, object]:
    """The `eval.reference_column` of the prompts source (human reference text, e.g. the whole review), by
    prompt_id; the caller checks that the column is set."""
    column = cfg.eval.reference_column
    key = cfg.prompts.id_column or cfg.prompts.prompt_column
    data = read_columns(cfg.prompts.path, list(dict.fromkeys([key, column])), cfg.prompts.split)
    ids = [str(v) if cfg.prompts.id_column else hash_id(v) for v in data[key]]
    return dict(zip(ids, data[column], strict=True))


def file_references(cfg: Config, n: int) -> list[str]:
    """The first n texts of eval.reference_file's column eval.reference_column, in file order (empty ones
    skipped)."""
    path, column = cfg.eval.reference_file, cfg.eval.reference_column
    values = read_columns(path, [column], field="eval.reference_file")[column]
    texts = [v for v in values if isinstance(v, str) and v.strip()]
    if len(texts) < n:
        raise DataError(
            f"{path}: eval.reference_file has {len(texts)} texts in column {column!r}, fewer than the {n} eval prompts"
        )
    return texts[:n]


def eval_prompts(cfg: Config) -> pa.Table:
    """eval.n_prompts held-out prompts in source order, taken from each level in turn when there are levels (the
    held-out split is chosen by id hash or by prompts.split_column, so this is a fixed subset), with a `reference`
    column when eval.reference_column is set."""
    _, heldout = split_prompts(cfg.prompts)
    if heldout.num_rows == 0:
        raise DataError(
            f"{cfg.prompts.path}: no held-out prompts to evaluate on; set prompts.heldout_fraction > 0 "
            f"(now {cfg.prompts.heldout_fraction})"
        )
    table = across_levels(heldout, cfg.eval.n_prompts)
    column = cfg.eval.reference_column
    if column is None:
        return table
    if cfg.eval.reference_file is not None:
        refs = file_references(cfg, table.num_rows)
        return table.append_column("reference", pa.array(refs, pa.string()))
    by_id = reference_texts(cfg)
    refs = []
    for pid in table["prompt_id"].to_pylist():
        ref = by_id.get(pid)
        if not isinstance(ref, str) or not ref.strip():
            raise DataError(f"{cfg.prompts.path}: eval.reference_column={column!r} is {ref!r} for prompt_id={pid}")
        refs.append(ref)
    return table.append_column("reference", pa.array(refs, pa.string()))
