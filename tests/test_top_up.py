"""`raft-data generate --top-up`: higher max_new_tokens or n_samples, or changed stop strings, on a finished generate
stage redo only what they need (truncated or failed samples, new sample indices, samples that ended at a removed
stop) as a new pass; every other row keeps its values, each row says which pass made it, the same top-up ends with
the same bytes, a killed one resumes to them, and what cannot be topped up is refused with one line. On the tiny
model (a stop string it rarely draws leaves about half its samples truncated at 16 tokens)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raft_data import storage
from raft_data.backends import BACKENDS
from raft_data.backends.base import Completion
from raft_data.cli.main import main as raft_data
from raft_data.errors import StageError
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.top_up import pass_seed, top_up, top_up_rows
from raft_data.storage import schemas

from .conftest import ROOT, make_config

STOP = ["x"]  # rare in the tiny model's output: samples end at it, at EOS, or are truncated


def config(tmp_path: Path, model_dir: Path, prompts: Path, **generate_section):
    section = {"max_new_tokens": 16, "n_samples": 2, "stop": STOP, "batch_size": 4} | generate_section
    return make_config(tmp_path, model_dir, prompts, generate=section)


def samples(cfg) -> pa.Table:
    folder = storage.round_dir(cfg, 0) / "samples"
    return pa.concat_tables([pq.read_table(f) for f in storage.shard_files(folder)])


def shard_bytes(cfg) -> dict[str, bytes]:
    folder = storage.round_dir(cfg, 0) / "samples"
    return {p.name: p.read_bytes() for p in storage.shard_files(folder)}


def keyed(table: pa.Table) -> dict[tuple[str, int], dict]:
    return {(r["prompt_id"], r["sample_idx"]): r for r in table.to_pylist()}


def test_raising_max_new_tokens_redoes_only_the_truncated_samples(tmp_path, tiny_model_dir, prompts_file, capsys):
    cfg = config(tmp_path, tiny_model_dir, prompts_file)
    generate(cfg, 0)
    score(cfg, 0)
    before = keyed(samples(cfg))
    truncated = {key for key, r in before.items() if r["truncated"]}
    assert 0 < len(truncated) < len(before)  # the test needs both kinds
    files = storage.shard_files(storage.round_dir(cfg, 0) / "samples")
    shard_of = {key: i for i, f in enumerate(files) for key in keyed(pq.read_table(f))}

    longer = config(tmp_path, tiny_model_dir, prompts_file, max_new_tokens=32)
    with pytest.raises(StageError, match=r"--top-up generate.max_new_tokens=32"):
        generate(longer, 0)  # a plain rerun is refused, naming the command
    capsys.readouterr()
    manifest = top_up(longer, 0)
    out = capsys.readouterr().out
    assert f"sampled again {len(truncated)} rows ({len(truncated)} truncated" in out
    last = manifest["passes"][-1]
    assert last["pass"] == 1 and last["regenerated"]["truncated"] == len(truncated)
    assert last["settings"] == {"max_new_tokens": 32, "n_samples": 2, "stop": STOP}
    assert manifest["passes"][0]["settings"]["max_new_tokens"] == 16

    after = keyed(samples(longer))
    assert after.keys() == before.keys()
    for key, row in after.items():
        if key in truncated:  # sampled again, in pass 1, with the pass's own seed
            assert row["pass"] == 1 and row["n_tokens"] <= 32
            assert row["seed"] == pass_seed(0, 0, shard_of[key], 1)
        else:  # kept exactly
            assert row == before[key]
    assert manifest["counts"]["truncated"] == sum(r["truncated"] for r in after.values())
    assert generate(longer, 0)["identity"] == manifest["identity"]  # done: a plain rerun skips it

    # the scores were made from the old samples: stale, and a plain rerun scores the union
    scores = storage.round_dir(cfg, 0) / "scores"
    assert storage.stale_reason(scores) is not None
    assert score(longer, 0)["counts"]["scores"] == len(after)


def test_the_same_top_up_ends_with_the_same_bytes_even_after_kill_9(tmp_path, tiny_model_dir, prompts_file):
    more = {"max_new_tokens": 32, "batch_size": 1}
    clean = config(tmp_path / "c", tiny_model_dir, prompts_file, batch_size=1)
    generate(clean, 0)
    start = storage.round_dir(clean, 0) / "samples"
    shutil.copytree(start, tmp_path / "start")
    top_up(config(tmp_path / "c", tiny_model_dir, prompts_file, **more), 0)
    first = shard_bytes(clean)
    shutil.rmtree(start)  # the same top-up again, from the same starting point
    shutil.copytree(tmp_path / "start", start)
    top_up(config(tmp_path / "c", tiny_model_dir, prompts_file, **more), 0)
    assert shard_bytes(clean) == first and first != {
        p.name: p.read_bytes() for p in storage.shard_files(tmp_path / "start")
    }

    # killed in the middle (after its first shard), then the same command again
    killed = config(tmp_path / "k", tiny_model_dir, prompts_file, batch_size=1)
    generate(killed, 0)
    path = tmp_path / "killed.yaml"
    path.write_text(config(tmp_path / "k", tiny_model_dir, prompts_file, **more).to_yaml())
    folder = storage.round_dir(killed, 0) / "samples"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "raft_data", "generate", "--config", str(path), "--round", "0", "--top-up"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def rewritten() -> int:
        return sum("rewrite" in json.loads(m.read_text() or "{}") for m in folder.glob("*.done"))

    deadline = time.time() + 300
    while rewritten() < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (folder / ".top-up.json").exists() and not (folder / "manifest.json").exists()
    with pytest.raises(StageError, match="unfinished top-up"):  # a plain rerun does not finish it half done
        generate(config(tmp_path / "k", tiny_model_dir, prompts_file, **more), 0)
    top_up(config(tmp_path / "k", tiny_model_dir, prompts_file, **more), 0)
    assert shard_bytes(killed) == shard_bytes(clean)
    assert not (folder / ".top-up.json").exists()


def test_raising_n_samples_adds_only_the_new_sample_indices(tmp_path, tiny_model_dir, prompts_file):
    cfg = config(tmp_path, tiny_model_dir, prompts_file)
    generate(cfg, 0)
    before = keyed(samples(cfg))
    more = config(tmp_path, tiny_model_dir, prompts_file, n_samples=3)
    manifest = top_up(more, 0)
    after = keyed(samples(more))
    new = set(after) - set(before)
    prompts = {pid for pid, _ in before}
    assert new == {(pid, 2) for pid in prompts}
    assert all(after[key] == row for key, row in before.items())  # truncated ones too: max_new_tokens is the same
    assert all(after[key]["pass"] == 1 for key in new)
    assert manifest["passes"][-1]["regenerated"] == {
        "truncated": 0,
        "failed": 0,
        "ended_at_removed_stop": 0,
        "new_samples": len(prompts),
    }
    # rows stay grouped by prompt, in sample order, as a fresh run writes them
    for f in storage.shard_files(storage.round_dir(cfg, 0) / "samples"):
        table = pq.read_table(f)
        pairs = list(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True))
        assert pairs == sorted(pairs, key=lambda p: (table["prompt_id"].to_pylist().index(p[0]), p[1]))


def test_stop_strings_added_cut_without_sampling_and_removed_ones_resample(
    tmp_path, tiny_model_dir, prompts_file, monkeypatch
):
    cfg = config(tmp_path, tiny_model_dir, prompts_file, stop=[])
    generate(cfg, 0)
    before = keyed(samples(cfg))
    common = " "  # a space is in nearly every sample: adding it as a stop cuts them
    holding = {k for k, r in before.items() if common in r["completion"][:-1]}
    assert holding

    def no_model(*args, **kwargs):
        raise AssertionError("a top-up that only cuts must not load the model")

    monkeypatch.setitem(BACKENDS, "transformers", no_model)
    added = config(tmp_path, tiny_model_dir, prompts_file, stop=[common])
    manifest = top_up(added, 0)
    assert manifest["passes"][-1]["cut_at_added_stop"] >= len(holding)
    after = keyed(samples(added))
    for key, row in after.items():
        if key in holding:
            assert row["completion"].endswith(common) and common not in row["completion"][:-1]
            assert not row["truncated"] and row["pass"] == 1
            assert before[key]["completion"].startswith(row["completion"])
    monkeypatch.undo()

    # removing it again: the samples that end at it are sampled again, the others kept
    ended = {k for k, r in after.items() if not r["truncated"] and r["completion"].endswith(common)}
    removed = config(tmp_path, tiny_model_dir, prompts_file, stop=[])
    manifest = top_up(removed, 0)
    assert manifest["passes"][-1]["regenerated"]["ended_at_removed_stop"] == len(ended)
    final = keyed(samples(removed))
    assert all(final[k] == r for k, r in after.items() if k not in ended)
    assert all(final[k]["pass"] == 2 for k in ended)
    assert [p["pass"] for p in manifest["passes"]] == [0, 1, 2]


def test_what_cannot_be_topped_up_is_refused_with_one_line(tmp_path, tiny_model_dir, prompts_file, capsys):
    cfg = config(tmp_path, tiny_model_dir, prompts_file)
    generate(cfg, 0)
    folder = storage.round_dir(cfg, 0) / "samples"
    kept = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    hotter = config(tmp_path, tiny_model_dir, prompts_file, temperature=0.7)
    config_path = tmp_path / "hotter.yaml"
    config_path.write_text(hotter.to_yaml())
    capsys.readouterr()
    for extra in (["--top-up"], [], ["--top-up", "generate.max_new_tokens=8"]):
        with pytest.raises(SystemExit) as exit_info:
            raft_data(["generate", "--config", str(config_path), "--round", "0", *extra])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")
        assert "generate.temperature differs: 1.0, now 0.7" in err
        assert "only generate.max_new_tokens, generate.n_samples, generate.stop can be topped up" in err
    with pytest.raises(SystemExit) as exit_info:
        raft_data(["generate", "--config", str(config_path), "--round", "0", "--top-up", "--force"])
    assert exit_info.value.code == 2 and "--top-up runs alone" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} == kept
    fewer = config(tmp_path, tiny_model_dir, prompts_file, n_samples=1)
    with pytest.raises(StageError, match="generate.n_samples is lower: 2, now 1; a top-up can only raise it"):
        top_up(fewer, 0)


def test_shards_written_before_the_pass_column_are_read_and_topped_up(tmp_path, tiny_model_dir, prompts_file):
    cfg = config(tmp_path, tiny_model_dir, prompts_file)
    generate(cfg, 0)
    folder = storage.round_dir(cfg, 0) / "samples"
    for f in storage.shard_files(folder):  # as an older version wrote them: no `pass` column
        pq.write_table(pq.read_table(f).drop_columns(["pass"]), f)
        marker = storage.read_json(storage.marker_path(f))
        storage.write_json(marker | {"sha256": storage.file_sha256(f)}, storage.marker_path(f))
    manifest = storage.read_json(folder / "manifest.json")
    manifest.pop("passes")
    manifest["files"] = storage.inventory(folder)
    manifest["identity"] = storage.manifests.identity(manifest["files"])
    storage.write_json(manifest, folder / "manifest.json")
    before = keyed(samples(cfg))
    assert score(cfg, 0)["counts"]["scores"] == len(before)  # readers take the old shards as they are

    more = config(tmp_path, tiny_model_dir, prompts_file, n_samples=3)
    topped = top_up(more, 0)
    assert topped["passes"][0] == {"pass": 0, "settings": {"max_new_tokens": 16, "n_samples": 2, "stop": STOP}}
    after = keyed(samples(more))
    assert all(after[k] == r | {"pass": 0} for k, r in before.items())


# ---------------------------------------------------------------------------------------------------------------------
# The rule, over small settings pairs: a fake sampler, rows of every kind.


def fake_sample(texts: list[str], seed: int) -> list[list[Completion]]:
    return [[Completion(f"new {seed % 97} {j} {t}", 5, j % 3 == 0)] for j, t in enumerate(texts)]


def shard_rows(n_prompts: int, k: int, kinds: list[int], stop: list[str]) -> pa.Table:
    rows = []
    for p in range(n_prompts):
        for s in range(k):
            kind = kinds[(p * k + s) % len(kinds)]
            text = ["a full answer", "cut off at the lim", "ends at a stop" + (stop[0] if stop else ""), ""][kind]
            rows.append(
                {
                    "prompt_id": f"p{p}",
                    "sample_idx": s,
                    "prompt": f"prompt {p}",
                    "completion": text,
                    "n_tokens": 4,
                    "truncated": kind == 1,
                    "source": "policy",
                    "generator": "fake",
                    "seed": 7,
                    "round": 0,
                    "answer": None,
                    "level": None,
                    "error": "boom" if kind == 3 else None,
                    "pass": 0,
                }
            )
    return pa.Table.from_pylist(rows, schema=schemas.SAMPLES)


settings_pairs = st.tuples(
    st.sampled_from([8, 16]), st.sampled_from([8, 16, 32]), st.integers(1, 3), st.integers(1, 4)
).filter(lambda t: t[1] >= t[0] and t[3] >= t[2])


@settings(max_examples=40, deadline=None)
@given(
    pair=settings_pairs,
    old_stop=st.sampled_from([[], ["!"], ["."]]),
    new_stop=st.sampled_from([[], ["!"], [" "]]),
    kinds=st.lists(st.integers(0, 3), min_size=1, max_size=6),
    n_prompts=st.integers(1, 3),
)
def test_a_top_up_redoes_exactly_what_the_new_settings_need(pair, old_stop, new_stop, kinds, n_prompts):
    max_old, max_new, k_old, k_new = pair
    old = {"max_new_tokens": max_old, "n_samples": k_old, "stop": old_stop}
    new = {"max_new_tokens": max_new, "n_samples": k_new, "stop": new_stop}
    table = shard_rows(n_prompts, k_old, kinds, old_stop)
    out, counts = top_up_rows(table, old, new, fake_sample, 123, 1, len)
    rows = (out or table).to_pylist()
    before = keyed(table)
    # every prompt holds exactly sample indices 0 .. k_new - 1, in order
    for p in range(n_prompts):
        assert [r["sample_idx"] for r in rows if r["prompt_id"] == f"p{p}"] == list(range(k_new))
    assert counts["new_samples"] == n_prompts * (k_new - k_old)
    redone = sum(counts[k] for k in ("truncated", "failed", "ended_at_removed_stop"))
    removed = [s for s in old_stop if s not in new_stop]
    added = [s for s in new_stop if s not in old_stop]
    expected = 0
    for r in before.values():
        cut = added and any(s in r["completion"] for s in new_stop) and r["error"] is None
        stopped = removed and not r["truncated"] and any(r["completion"].endswith(s) for s in removed)
        expected += bool(r["error"] or stopped or (not cut and r["truncated"] and max_new > max_old))
    assert redone == expected
    sampled = [r for r in rows if r["seed"] == 123]
    assert len(sampled) == redone + counts["new_samples"] and all(r["pass"] == 1 for r in sampled)
    # what was neither sampled nor cut is kept as it was; nothing failed is left
    for r in rows:
        if r["pass"] == 0:
            assert r == before[(r["prompt_id"], r["sample_idx"])]
    assert all(r["error"] is None for r in rows)
    # the same inputs, the same table
    again, _ = top_up_rows(table, old, new, fake_sample, 123, 1, len)
    assert (again or table).equals(out or table)
