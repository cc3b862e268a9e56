"""Reading columns of a data file: jsonl, csv or parquet, or a `datasets` id (the only path that may use the
network). A bad row is a DataError that names the file, the line and the field.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq

from raft_data.errors import DataError


def read_jsonl(path: Path, columns: list[str]) -> dict[str, list]:
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


def read_csv(path: Path, columns: list[str]) -> dict[str, list]:
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


def read_parquet(path: Path, columns: list[str]) -> dict[str, list]:
    names = pq.read_schema(path).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)})")
    return pq.read_table(path, columns=columns).to_pydict()


def read_datasets(name: str, split: str, columns: list[str]) -> dict[str, list]:
    import datasets  # only for hub ids; file sources never touch the network

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # the hub, a missing id, no network: all the same to the user
        raise DataError(f"prompts.path={name!r} is not a file, and loading it as a datasets id failed: {e}") from None
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"{name}: no column {missing[0]!r} (columns: {', '.join(ds.column_names)})")
    return {c: ds[c] for c in columns}


READERS = {".jsonl": read_jsonl, ".json": read_jsonl, ".csv": read_csv, ".parquet": read_parquet}


def read_columns(path: str, columns: list[str], split: str = "train", field: str = "prompts.path") -> dict[str, list]:
    """The named columns of a file (by its suffix), or of a `datasets` id when `path` is not a file; `field` is
    the config key that named the file, for the error messages."""
    file = Path(path)
    if file.suffix in READERS:
        if not file.is_file():
            raise DataError(f"file {file} does not exist ({field})")
        return READERS[file.suffix](file, columns)
    if file.exists():
        raise DataError(f"file {file} has an unknown type {file.suffix!r} ({field}): use .jsonl, .parquet or .csv")
    return read_datasets(path, split, columns)
