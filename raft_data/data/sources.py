"""Candidates from files: completions for the round's prompts imported from jsonl or parquet files, e.g. human
reference answers or another model's outputs. They land in the same `samples/` shards as the policy's K samples,
each row with its `source`, so scoring and selection rank all candidates of a prompt together.

Configured as `generate.extra_sources`, a list of:
    {name: reference, path: refs.parquet, completion_column: text, match: prompt_id, strip_prompt: true}
`match: prompt_id` looks rows up by id (`key_column`, default `prompt_id`); `match: prompt` by exact prompt text
(`key_column`, default `prompt`). Rows for prompts outside the round are ignored; a prompt may have any number.

Run as:
    raft-data sources --config pipelines/imdb_positive.yaml --round 0 \\
        'generate.extra_sources=[{name: reference, path: assets/movie_reviews.parquet, completion_column: text,
        key_column: snippet_id, strip_prompt: true}]'     # count the matches, nothing is written
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raft_data.data.readers import read_jsonl, read_parquet
from raft_data.errors import DataError
from raft_data.storage import file_sha256


@dataclass
class Source:
    spec: dict[str, Any]  # the checked generate.extra_sources entry
    completions: dict[str, list[str]]  # key (prompt_id or prompt text) -> completions in file order


def file_hash(path: str) -> str:
    """The content hash of a source file, part of the generate config hash: a changed file is a new config."""
    try:
        return file_sha256(Path(path))[:16]
    except FileNotFoundError:
        raise DataError(f"extra source file {path} does not exist (generate.extra_sources)") from None


def load_source(spec: dict[str, Any]) -> Source:
    """Read one source file into key -> completions; a bad row is an error naming the file, row and column."""
    path = Path(spec["path"])
    if not path.is_file():
        raise DataError(f"extra source file {path} does not exist (generate.extra_sources name={spec['name']!r})")
    key_col, comp_col = spec["key_column"], spec["completion_column"]
    columns = list(dict.fromkeys([key_col, comp_col]))
    reader = read_parquet if path.suffix == ".parquet" else read_jsonl
    data = reader(path, columns)
    completions: dict[str, list[str]] = {}
    for i, (key, text) in enumerate(zip(data[key_col], data[comp_col], strict=True)):
        if key is None:
            raise DataError(f"{path}: row {i} column {key_col!r} is empty")
        if not isinstance(text, str):
            raise DataError(f"{path}: row {i} column {comp_col!r} is {text!r}, not text")
        completions.setdefault(str(key) if spec["match"] == "prompt_id" else key, []).append(text)
    if not completions:
        raise DataError(f"{path}: no rows (generate.extra_sources name={spec['name']!r})")
    return Source(spec, completions)


def candidates(source: Source, prompt_id: str, prompt: str) -> list[str]:
    """The source's completions for one prompt, prompt prefix removed when `strip_prompt` says so."""
    key = prompt_id if source.spec["match"] == "prompt_id" else prompt
    found = source.completions.get(key, [])
    if source.spec["max_per_prompt"] is not None:
        found = found[: source.spec["max_per_prompt"]]
    if not source.spec["strip_prompt"]:
        return found
    out = []
    for text in found:
        if not text.startswith(prompt):
            raise DataError(
                f"{source.spec['path']}: the {source.spec['completion_column']!r} of prompt_id={prompt_id!r} does not "
                f"start with its prompt {prompt[:40]!r}, so strip_prompt cannot remove it"
            )
        out.append(text[len(prompt) :])
    return out
