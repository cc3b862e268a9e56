"""One prompt set of several tasks, each with its own verifier: the prompts of several experiments in one jsonl file,
with a `task` column that routes each row to its task's reward (score.tasks), per-task quotas in selection
(select.task_quota) and pass@k per task in eval, status and the report.

Each source is an experiment config; its task name is the experiment's name unless given (`name=path`). A source's
rows keep their split as that experiment makes it (its split column, or its held-out fraction by id hash), and only
its prompts.train_levels are train rows, so a mixed set never trains on what a source holds out. Each row of the
file:

    id        <task>/<the source's prompt id>       unique across tasks
    prompt    the prompt as the source's experiment reads it (its prompt_column)
    answer    the source's gold answer (what its checker reads)
    level     the source's level (difficulty band), if any
    split     train | heldout
    task      the task name

Beside it, `<file>.manifest.json` records each source: its config, prompts file and its digest, counts per split,
and the score settings of its experiment, which score.tasks of the mixed experiment repeats.

Run as:
    raft-data mix --from pipelines/arithmetic.yaml --from gym=pipelines/gym_products.yaml \
        --from code=pipelines/code_humaneval.yaml --out assets/mixed.jsonl
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from raft_data.config import ScoreConfig, load_config
from raft_data.data.prompts import across_levels, split_prompts
from raft_data.errors import ConfigError
from raft_data.storage import write_text

TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def parse_source(spec: str) -> tuple[str | None, str]:
    """`name=path` or `path`: (task name or None, config path)."""
    name, sep, path = spec.partition("=")
    if not sep:
        return None, spec
    check_task_name(spec, name)
    return name, path


def check_task_name(spec: str, name: str) -> None:
    if TASK_NAME.fullmatch(name) is None:
        raise ConfigError(f"--from={spec!r}: the task name {name!r} must be letters, digits, _ . - (a letter first)")


def source_rows(task: str, table: pa.Table, split: str, limit: int | None) -> list[dict[str, Any]]:
    """The rows of one split of a source as the mixed file holds them, at most `limit` (each level in turn)."""
    if limit is not None:
        table = across_levels(table, limit)
    return [
        {
            "id": f"{task}/{r['prompt_id']}",
            "prompt": r["prompt"],
            "answer": r["answer"],
            "level": r["level"],
            "split": split,
            "task": task,
        }
        for r in table.to_pylist()
    ]


def mixed_problems(
    sources: list[str], n_train: int | None = None, n_heldout: int | None = None
) -> tuple[list[dict], dict[str, Any]]:
    """(rows, record) of the mixed set: each source's train rows (of its train_levels) and held-out rows, at most
    n_train and n_heldout of each task."""
    for what, n in (("--n-train", n_train), ("--n-heldout", n_heldout)):
        if n is not None and n < 1:
            raise ConfigError(f"{what}={n} must be >= 1")
    rows: list[dict] = []
    record: dict[str, Any] = {"tasks": {}}
    for spec in sources:
        name, path = parse_source(spec)
        cfg = load_config(path)
        task = name or cfg.experiment.name
        check_task_name(spec, task)
        if task in record["tasks"]:
            raise ConfigError(f"--from={spec!r}: the task {task!r} is given twice; name one `other_name={path}`")
        train, heldout = split_prompts(cfg.prompts)
        if cfg.prompts.train_levels:
            keep = [lv in cfg.prompts.train_levels for lv in train["level"].to_pylist()]
            train = train.filter(pa.array(keep, pa.bool_()))
        task_rows = source_rows(task, train, "train", n_train) + source_rows(task, heldout, "heldout", n_heldout)
        rows += task_rows
        defaults = ScoreConfig()
        record["tasks"][task] = {
            "config": path,
            "prompts": cfg.prompts.path,
            "prompts_sha256": file_digest(Path(cfg.prompts.path)),
            "train": sum(r["split"] == "train" for r in task_rows),
            "heldout": sum(r["split"] == "heldout" for r in task_rows),
            "train_levels": cfg.prompts.train_levels or None,
            # the verifier of this task in its own experiment: what score.tasks.<task> of the mixed one repeats
            "score": {k: v for k, v in cfg.score.__dict__.items() if k == "reward" or v != getattr(defaults, k)},
        }
    record["n_train"], record["n_heldout"] = n_train, n_heldout
    return rows, record


def file_digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_mix(path: Path, sources: list[str], **kwargs: Any) -> dict[str, dict]:
    """Write the mixed set as jsonl and its record beside it as `<file>.manifest.json`; returns the record's tasks."""
    rows, record = mixed_problems(sources, **kwargs)
    write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), path)
    write_text(json.dumps(record, indent=2) + "\n", path.with_name(path.name + ".manifest.json"))
    return record["tasks"]
