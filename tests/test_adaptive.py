"""Adaptive sampling: later passes sample only the prompts still short of correct samples, each pass its own
shards with markers, so a kill in any pass resumes to the same samples as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.data.arithmetic import arithmetic_problems
from raft_data.errors import ConfigError
from raft_data.rewards.checkers import last_number
from raft_data.stages.generate import generate, n_passes, prompts_needing_more
from raft_data.storage import schemas

from .conftest import ROOT, make_config

ADAPTIVE = {"n_samples": 2, "max_new_tokens": 4, "n_shards": 2, "adaptive_target": 1, "adaptive_budget": 6}


def sums_file(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_problems(10, levels=["sum_1d"])))
    return path


def adaptive_config(tmp_path: Path, model: Path, name: str = "adaptive", **generate_fields):
    return make_config(
        tmp_path,
        model,
        sums_file(tmp_path),
        experiment={"name": name},
        prompts={"answer_column": "answer", "level_column": "level", "n_prompts": 8},
        generate={**ADAPTIVE, **generate_fields},
        score={"reward": "correct"},
    )


def read(folder: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(f) for f in storage.shard_files(folder))


def test_later_passes_sample_only_unsolved_prompts(tmp_path: Path) -> None:
    """Pass 1 of a round whose pass 0 solved some prompts: exactly the others are sampled again."""
    cfg = adaptive_config(tmp_path, tmp_path / "unused")
    prompts = pa.table(
        {
            "prompt_id": ["a", "b", "c"],
            "prompt": ["q"] * 3,
            "answer": ["3", "4", "5"],
            "level": [None] * 3,
            "task": [None] * 3,
        },
        schema=schemas.PROMPTS,
    )
    folder = tmp_path / "samples"
    total = 2 * n_passes(cfg)
    rows = [("a", "it is 3"), ("a", "2"), ("b", "4, no 5"), ("b", "none"), ("c", "5"), ("c", "5.")]
    for shard in range(2):
        part = rows[shard * 3 : shard * 3 + 3]
        table = pa.table(
            {
                "prompt_id": [p for p, _ in part],
                "sample_idx": [0] * 3,
                "prompt": ["q"] * 3,
                "completion": [c for _, c in part],
                "n_tokens": [1] * 3,
                "truncated": [False] * 3,
                "source": ["policy"] * 3,
                "generator": ["x"] * 3,
                "seed": [0] * 3,
                "round": [0] * 3,
                "answer": [{"a": "3", "b": "4", "c": "5"}[p] for p, _ in part],
                "level": [None] * 3,
                "task": [None] * 3,
                "error": [None] * 3,
                "pass": [0] * 3,
            },
            schema=schemas.SAMPLES,
        )
        storage.write_parquet(table, folder / storage.shard_name(shard, total), schemas.SAMPLES)
    assert prompts_needing_more(prompts, folder, 2, 1, total, cfg) == [1]  # b: its last number is 5, not 4
    assert last_number("4, no 5") == "5"


def test_adaptive_round_matches_the_rule_and_counts(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = adaptive_config(tmp_path, tiny_model_dir)
    manifest = generate(cfg, 0)
    samples = read(storage.round_dir(cfg, 0) / "samples").to_pylist()
    assert n_passes(cfg) == 3 and len(manifest["samples_by_pass"]) == 3
    assert manifest["samples_by_pass"][0] == 16 and sum(manifest["samples_by_pass"]) == len(samples)
    by_prompt: dict[str, list[dict]] = {}
    for row in samples:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    for pid, rows in by_prompt.items():
        rows.sort(key=lambda r: r["sample_idx"])
        assert [r["sample_idx"] for r in rows] == list(range(len(rows)))
        for p in range(1, 3):  # sampled in pass p exactly when passes before it found no correct answer
            before = [r for r in rows if r["sample_idx"] < 2 * p]
            solved = any(last_number(r["completion"]) == r["answer"] for r in before)
            in_pass = any(2 * p <= r["sample_idx"] < 2 * p + 2 for r in rows)
            assert in_pass == (not solved and len(before) == 2 * p), (pid, p)

    # what a selected sample cost, and the acceptance rate by level, in the select manifest and status
    from raft_data.stages.score import score
    from raft_data.stages.select import select
    from raft_data.tools.status import round_status

    scored = score(cfg, 0)
    no_answer = sum(r["extracted"] is None for r in read(storage.round_dir(cfg, 0) / "scores").to_pylist())
    assert scored["counts"].get("no_answer", 0) == no_answer  # what the checker could not read, counted
    chosen = select(cfg, 0)
    n_selected, n_samples = chosen["counts"]["selected"], chosen["counts"]["samples"]
    assert chosen["acceptance_by_level"] == {"sum_1d": round(n_selected / n_samples, 4)}
    status = "\n".join(round_status(cfg, 0))
    assert f"acceptance {n_selected / n_samples:.3f}" in status and "tokens" in status


def test_kill_9_in_a_later_pass_resumes_to_the_same_samples(tmp_path: Path, tiny_model_dir: Path) -> None:
    more = {"max_new_tokens": 48, "batch_size": 1}
    killed = adaptive_config(tmp_path / "k", tiny_model_dir, name="killed", **more)
    clean = adaptive_config(tmp_path / "c", tiny_model_dir, name="clean", **more)
    path = tmp_path / "killed.yaml"
    path.write_text(killed.to_yaml())
    folder = storage.round_dir(killed, 0) / "samples"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "raft_data", "generate", "--config", str(path), "--round", "0"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while len(list(folder.glob("*.done"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= len(list(folder.glob("*.done"))) < 6  # killed in pass 1 (shards 2 and 3) or at the start of pass 2
    generate(killed, 0)
    generate(clean, 0)
    assert read(folder).equals(read(storage.round_dir(clean, 0) / "samples"))


def test_adaptive_refuses_what_it_cannot_do(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="generate.adaptive_budget=1"):
        adaptive_config(tmp_path, tiny_model_dir, adaptive_budget=1)
    cfg = adaptive_config(tmp_path, tiny_model_dir)
    with pytest.raises(ConfigError, match="generate.adaptive_target runs its passes in one process"):
        generate(cfg, 0, shard=0)
