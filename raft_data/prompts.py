"""Prompt sources: read a jsonl / parquet / csv file (or a `datasets` id), give each prompt a stable id, keep a
held-out split aside, and draw each round's b prompts with a seed that differs per round.

Run as:
    python -m raft_data.prompts pipelines/imdb_positive.yaml --round 0   # print the round's prompts
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raft_data import schemas
from raft_data.config import PromptsConfig


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the field and the value."""


def _read_jsonl(path: Path, columns: list[str]) -> dict[str, list]:
    out: dict[str, list] = {c: [] for c in columns}
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise DataError(f"{path}: line {line_no} is not valid UTF-8 text") from None
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {line_no} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {line_no} is not a JSON object")
            for c in columns:
                if c not in row:
                    raise DataError(f"{path}: line {line_no} has no field {c!r} (fields: {', '.join(row)})")
                out[c].append(row[c])
    return out


def _read_csv(path: Path, columns: list[str]) -> dict[str, list]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(reader.fieldnames or [])})")
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: byte {e.start} is not valid UTF-8 text") from None
    return {c: [r[c] for r in rows] for c in columns}


def _read_parquet(path: Path, columns: list[str]) -> dict[str, list]:
    names = pq.read_schema(path).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)})")
    return pq.read_table(path, columns=columns).to_pydict()


def _read_datasets(name: str, split: str, columns: list[str]) -> dict[str, list]:
    import datasets  # only for hub ids; file sources never touch the network

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # the hub, a missing id, no network: all the same to the user
        raise DataError(f"prompts.path={name!r} is not a file, and loading it as a datasets id failed: {e}") from None
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"{name}: no column {missing[0]!r} (columns: {', '.join(ds.column_names)})")
    return {c: ds[c] for c in columns}


READERS = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}


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
    """All prompts of the source as (prompt_id, prompt), in source order, deduplicated by prompt_id."""
    path = Path(cfg.path)
    columns = [cfg.prompt_column] + ([cfg.id_column] if cfg.id_column else [])
    if path.suffix in READERS:
        if not path.is_file():
            raise DataError(f"prompts file {path} does not exist (prompts.path)")
        data = READERS[path.suffix](path, columns)
    elif path.exists():
        raise DataError(f"prompts file {path} has an unknown type {path.suffix!r}: use .jsonl, .parquet or .csv")
    else:
        data = _read_datasets(cfg.path, cfg.split, columns)

    ids: list[str] = []
    prompts: list[str] = []
    seen: dict[str, str] = {}
    for i, text in enumerate(data[cfg.prompt_column]):
        if _is_messages(text):  # a conversation: kept as JSON text, rendered by generate.chat_template
            text = json.dumps([{"role": m["role"], "content": m["content"]} for m in text], ensure_ascii=False)
        if not isinstance(text, str):
            raise DataError(f"{path}: row {i} field {cfg.prompt_column!r} is {text!r}, not text")
        if not text.strip():
            continue  # an empty prompt carries no task
        pid = str(data[cfg.id_column][i]) if cfg.id_column else hash_id(text)
        if pid in seen:
            if seen[pid] != text:
                raise DataError(f"{path}: {cfg.id_column}={pid!r} names two different prompts (row {i})")
            continue
        seen[pid] = text
        ids.append(pid)
        prompts.append(text)
    if not ids:
        raise DataError(f"{path}: no prompts in column {cfg.prompt_column!r} (the prompt set is empty)")
    return pa.table({"prompt_id": ids, "prompt": prompts}, schema=schemas.PROMPTS)


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


def draw_round_prompts(cfg: PromptsConfig, seed: int, round_idx: int) -> pa.Table:
    """The round's b prompts from the train pool, without replacement, seeded by (seed, round)."""
    train, _ = split_prompts(cfg)
    n = min(cfg.n_prompts, train.num_rows)
    rng = np.random.default_rng([seed, round_idx])
    idx = np.sort(rng.choice(train.num_rows, size=n, replace=False))
    return train.take(pa.array(idx))


def print_round_prompts(cfg, round_idx: int) -> None:
    table = draw_round_prompts(cfg.prompts, cfg.experiment.seed, round_idx)
    for pid, prompt in zip(table["prompt_id"].to_pylist(), table["prompt"].to_pylist(), strict=True):
        print(f"{pid}\t{prompt}")


def main(argv: list[str] | None = None) -> None:
    from raft_data.cli_common import run_round_tool

    run_round_tool("Print the prompts a round draws (nothing is written).", print_round_prompts, argv)


if __name__ == "__main__":
    main()
