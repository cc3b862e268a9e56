"""Reading columns of a data file: jsonl, csv or parquet, or a `datasets` id (the only path that may use the
network). A file is read as what it says it is or refused: a bad row is a DataError that names the file, the line
and the field, and a damaged, mis-quoted or oversized file is refused before it takes much memory or stack. A
UTF-8 byte-order mark at the start of a text file is dropped.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raft_data.errors import DataError, shown

# Limits on what one row may hold. A prompt is a few KiB; these refuse only broken or hostile files.
MAX_LINE_BYTES = 16 << 20  # one JSONL line
MAX_FIELD_CHARS = 1 << 20  # one cell: its text, or all the text in a list or object cell
MAX_DEPTH = 32  # lists and objects inside each other in one JSONL line or cell

JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
BRACKETS = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """How deep lists and objects nest in JSON text (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0
    depth = deepest = 0
    for bracket in BRACKETS.findall(JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def check_cell(value: Any, where: str) -> Any:
    """A cell as read, or a DataError naming `where` (file, row, field): text of at most MAX_FIELD_CHARS characters
    that is valid Unicode, finite numbers, and lists and objects of those at most MAX_DEPTH deep."""
    chars = 0
    todo = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, str):
            chars += len(item)
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(f"{where} holds text that is not valid Unicode (a lone surrogate)") from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise DataError(f"{where} is {item!r}, not a finite number")
        elif isinstance(item, (list, tuple, dict)):
            if depth >= MAX_DEPTH:
                raise DataError(f"{where} nests lists or objects more than {MAX_DEPTH} deep")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            todo.extend((child, depth + 1) for child in children)
        if chars > MAX_FIELD_CHARS:
            raise DataError(f"{where} holds more than {MAX_FIELD_CHARS:,} characters, the limit of one field")
    return value


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key[:100]!r} is written twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def text_lines(path: Path, setting: str = "") -> Iterator[tuple[int, str]]:
    """(line number, line without surrounding white space) of a UTF-8 text file, read line by line within the
    limit of one line; `setting` names the setting that pointed at the file, in the errors."""
    where = f" ({setting})" if setting else ""
    with open(path, "rb") as f:
        line_no = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            line_no += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise DataError(
                    f"{path}: line {line_no} is longer than {MAX_LINE_BYTES:,} bytes, the limit of one line{where}"
                )
            try:
                yield line_no, raw.decode("utf-8-sig" if line_no == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                raise DataError(f"{path}: line {line_no} is not valid UTF-8 text{where}") from None


def read_jsonl(path: Path, columns: list[str]) -> dict[str, list]:
    out: dict[str, list] = {c: [] for c in columns}
    for line_no, line in text_lines(path):
        if not line:
            continue
        if json_depth(line) > MAX_DEPTH:
            raise DataError(f"{path}: line {line_no} nests lists or objects more than {MAX_DEPTH} deep")
        try:
            row = json.loads(line, object_pairs_hook=_object_without_duplicates, parse_constant=_no_constant)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {line_no} is not valid JSON ({e.msg})") from None
        except ValueError as e:  # a key twice, NaN, an integer of more than 4300 digits
            raise DataError(f"{path}: line {line_no} is not valid JSON ({str(e).splitlines()[0][:200]})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {line_no} is not a JSON object")
        for c in columns:
            if c not in row:
                fields = ", ".join(k[:40] for k in list(row)[:20])
                raise DataError(f"{path}: line {line_no} has no field {c!r} (fields: {fields})")
            out[c].append(check_cell(row[c], f"{path}: line {line_no} field {c!r}"))
    return out


def read_csv(path: Path, columns: list[str]) -> dict[str, list]:
    """A CSV file with a header row, read strictly: a quote out of place, a row with more or fewer fields than the
    header, or a field over the limit is an error naming the line, never read as something else."""
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_FIELD_CHARS)
    line = 0
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, strict=True)
            header = next(reader, None)
            line = reader.line_num  # the last line of the last record read: errors name the line after it
            if header is None:
                raise DataError(f"{path} is empty: expected a header row that names the columns")
            twice = sorted({name for name in header if header.count(name) > 1})
            if twice:
                raise DataError(f"{path}: the header names column {twice[0][:100]!r} twice")
            missing = [c for c in columns if c not in header]
            if missing:
                names = ", ".join(h[:40] for h in header[:20])
                raise DataError(f"{path}: no column {missing[0]!r} (columns: {names})")
            index = [header.index(c) for c in columns]
            out: dict[str, list] = {c: [] for c in columns}
            for row in reader:
                start, line = line + 1, reader.line_num
                if not row:  # a blank line
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: line {start} has {len(row)} fields, the header {len(header)} (a quote or a "
                        "separator out of place?)"
                    )
                for c, i in zip(columns, index, strict=True):
                    out[c].append(check_cell(row[i], f"{path}: line {start} field {c!r}"))
    except csv.Error as e:
        if "field larger than field limit" in str(e):
            raise DataError(
                f"{path}: line {line + 1} has a field longer than {MAX_FIELD_CHARS:,} characters, the limit of one "
                "field (or a quote that is never closed)"
            ) from None
        raise DataError(f"{path}: line {line + 1} is not valid CSV ({e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: byte {e.start} is not valid UTF-8 text") from None
    finally:
        csv.field_size_limit(limit)
    return out


def _type_depth(t: pa.DataType) -> int:
    """How deep lists and structs nest in an Arrow type (0 for a plain value)."""
    deepest, todo = 0, [(t, 0)]
    while todo:
        t, depth = todo.pop()
        deepest = max(deepest, depth)
        todo.extend((t.field(i).type, depth + 1) for i in range(t.num_fields))
    return deepest


def read_parquet(path: Path, columns: list[str]) -> dict[str, list]:
    try:
        schema = pq.read_schema(path)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(schema.names)})")
        for c in columns:
            if _type_depth(schema.field(c).type) > MAX_DEPTH:
                raise DataError(f"{path}: column {c!r} nests lists or structs more than {MAX_DEPTH} deep")
        data = pq.read_table(path, columns=columns).to_pydict()
    except (pa.ArrowException, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"{path} is not a readable Parquet file ({first})") from None
    for c, values in data.items():
        for i, value in enumerate(values):
            check_cell(value, f"{path}: row {i} field {c!r}")
    return data


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
    try:
        if file.suffix in READERS:
            if not file.is_file():
                raise DataError(f"file {file} does not exist ({field})")
            return READERS[file.suffix](file, columns)
        exists = file.exists()
    except OSError as e:
        raise DataError(f"file {shown(path)} cannot be read ({field}): {e.strerror}") from None
    if exists:
        raise DataError(f"file {file} has an unknown type {file.suffix!r} ({field}): use .jsonl, .parquet or .csv")
    return read_datasets(path, split, columns)
