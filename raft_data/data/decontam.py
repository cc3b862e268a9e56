"""Evaluation text for the select stage's `contaminated` guard: the experiment's own held-out prompts (and their
`eval.reference_column` text) and the files of `decontam.eval_files`, as one table of (source, text).

Run as:
    raft-data select --config pipelines/imdb_positive.yaml --round 0 decontam.drop_contaminated=true
    raft-data select --round 0 decontam.drop_contaminated=true 'decontam.eval_files=[my_benchmark.jsonl]'
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from raft_data.config import Config
from raft_data.data.prompts import file_references, reference_texts, split_prompts
from raft_data.data.readers import MAX_FIELD_CHARS, read_columns, text_lines
from raft_data.errors import DataError, shown

EVAL_TEXTS = pa.schema([("source", pa.string()), ("text", pa.string())])


def read_text_lines(path: Path) -> list[str]:
    """Every non-empty line of a UTF-8 text file, one evaluation text each."""
    return [line[:MAX_FIELD_CHARS] for _, line in text_lines(path, "decontam.eval_files") if line]


def read_eval_file(path: str, column: str) -> list[str]:
    """The texts of one `decontam.eval_files` entry: a .txt file's lines, or a column of a .jsonl, .parquet or
    .csv file. Never a `datasets` id: decontamination reads only local files."""
    file = Path(path)
    try:
        is_file = file.is_file()
    except OSError as e:
        raise DataError(f"file {shown(path)} cannot be read (decontam.eval_files): {e.strerror}") from None
    if not is_file:
        raise DataError(f"file {file} does not exist (decontam.eval_files)")
    if file.suffix == ".txt":
        return read_text_lines(file)
    if file.suffix not in (".jsonl", ".json", ".parquet", ".csv"):
        raise DataError(
            f"file {file} has an unknown type {file.suffix!r} (decontam.eval_files): "
            "use .jsonl, .parquet, .csv or .txt"
        )
    values = read_columns(path, [column], field="decontam.eval_files")[column]
    for i, value in enumerate(values):
        if value is not None and not isinstance(value, str):
            raise DataError(f"{file}: row {i} field {column!r} is {shown(value)}, not text (decontam.eval_column)")
    return [v for v in values if v]


def eval_texts(cfg: Config) -> pa.Table:
    """Every evaluation text the `contaminated` guard checks against, with where it came from."""
    sources: list[str] = []
    texts: list[str] = []
    if cfg.decontam.heldout and cfg.prompts.heldout_fraction > 0:
        _, heldout = split_prompts(cfg.prompts)
        prompts = heldout["prompt"].to_pylist()
        sources += ["heldout prompts"] * len(prompts)
        texts += prompts
        if cfg.eval.reference_file is not None:
            refs = file_references(cfg, min(cfg.eval.n_prompts, heldout.num_rows))
            sources += [f"eval.reference_file {cfg.eval.reference_file}"] * len(refs)
            texts += refs
        elif cfg.eval.reference_column is not None and heldout.num_rows:
            by_id = reference_texts(cfg)
            refs = [by_id.get(pid) for pid in heldout["prompt_id"].to_pylist()]
            refs = [r for r in refs if isinstance(r, str) and r.strip()]
            sources += [f"heldout {cfg.eval.reference_column}"] * len(refs)
            texts += refs
    for path in cfg.decontam.eval_files:
        found = read_eval_file(path, cfg.decontam.eval_column)
        sources += [path] * len(found)
        texts += found
    return pa.table({"source": sources, "text": texts}, schema=EVAL_TEXTS)


def eval_sources(cfg: Config) -> list[str]:
    """What the guard checks against, by name, for the manifest and the dataset card."""
    names = []
    if cfg.decontam.heldout and cfg.prompts.heldout_fraction > 0:
        names.append("heldout prompts")
        if cfg.eval.reference_file is not None:
            names.append(f"eval.reference_file {cfg.eval.reference_file}")
        elif cfg.eval.reference_column is not None:
            names.append(f"heldout {cfg.eval.reference_column}")
    return names + list(cfg.decontam.eval_files)


def guard_texts(cfg: Config) -> pa.Table | None:
    """The evaluation texts when the `contaminated` guard is on (else None: nothing is read)."""
    return eval_texts(cfg) if cfg.decontam.drop_contaminated else None
