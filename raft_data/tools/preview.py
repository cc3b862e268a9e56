"""Preview: a whole round (generate, score, select, one SFT step, eval) of an experiment on a few prompts and samples,
in a scratch folder, printing a few samples at each stage: their rewards, and what selection kept and why.

Run as:
    raft-data preview --config pipelines/imdb_positive.yaml
    raft-data preview --config pipelines/arithmetic.yaml --prompts 4 --samples 4 select.n=2
    raft-data preview --config pipelines/imdb_positive.yaml --keep     # keep the scratch folder and say where

The real stage functions run on a shrunk copy of the config: b and K from `--prompts` / `--samples`, one shard, the
held-out eval of the round's model (not the base model's baseline) on as many prompts with one sample each beside the
greedy one, and SFT for one step (`sft.max_steps`);
everything else (model, reward, strategy, guards, your overrides) as the experiment says. The rounds go to a new
temporary folder, removed at the end unless `--keep`: the experiment's own `<output_root>/<name>/` is never read
or written.
"""

from __future__ import annotations

import contextlib
import copy
import io
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from textwrap import shorten
from typing import Any

from raft_data import storage
from raft_data.config import Config
from raft_data.data.decontam import guard_texts
from raft_data.selection.engine import round_connection, run_query, select_params, view_sql
from raft_data.stages.evaluate import evaluate_model, format_metrics
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import decontam_line, empty_selection, select

TrainFn = Callable[[Config, int], dict]  # the SFT stage, handed in by the command line (as for rounds)
WIDTH = 72  # characters of a prompt or completion shown


def tail(text: str, width: int = WIDTH + 24) -> str:
    """The end of a prompt, white space collapsed: a chat template puts the question last."""
    text = " ".join(text.split())
    return text if len(text) <= width else "[...] " + text[-(width - 6) :]


def preview_config(cfg: Config, scratch: Path, n_prompts: int, n_samples: int, max_new_tokens: int | None) -> Config:
    """The experiment shrunk to a preview: b prompts, K samples, one shard, one SFT step, a small eval, in scratch."""
    small = copy.deepcopy(cfg)
    small.experiment.output_root = str(scratch)
    small.prompts.n_prompts = n_prompts
    small.generate.n_samples = n_samples
    small.generate.n_shards = 1
    small.generate.adaptive_target = 0  # sample exactly K, not until a target number of correct samples
    if max_new_tokens is not None:
        small.generate.max_new_tokens = max_new_tokens
    small.eval.n_prompts = min(cfg.eval.n_prompts, n_prompts)
    small.eval.n_samples = 1
    small.eval.n_shards = 1
    small.executor.kind = "local"
    small.sft = {**cfg.sft, "max_steps": 1, "save_strategy": "no"}
    return small


def quiet(fn: Callable[..., Any], *args: Any) -> Any:
    """A stage's own lines are left out of the preview: it prints what the stage made instead."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def sample_lines(cfg: Config, n_show: int) -> list[str]:
    """The first n_show prompts' samples after scoring: completion, tokens, whether cut, reward."""
    import duckdb

    rdir = storage.round_dir(cfg, 0)
    con = duckdb.connect()
    samples = [str(p) for p in storage.shard_files(rdir / storage.STAGE_FOLDERS["generate"])]
    scores = [str(p) for p in storage.shard_files(rdir / storage.STAGE_FOLDERS["score"])]
    rows = con.execute(
        "select s.prompt_id, s.prompt, s.sample_idx, s.completion, s.n_tokens, s.truncated, r.reward "
        "from read_parquet($samples) s positional join read_parquet($scores) r "
        "where s.prompt_id in (select distinct prompt_id from read_parquet($samples) order by 1 limit $n) "
        "order by s.prompt_id, s.sample_idx",
        {"samples": samples, "scores": scores, "n": n_show},
    ).fetchall()
    lines, current = [], None
    for pid, prompt, idx, completion, n_tokens, truncated, reward in rows:
        if pid != current:
            current = pid
            lines.append(f"  prompt {pid}: {tail(prompt)!r}")
        cut = " cut" if truncated else ""
        shown = "-" if reward is None else f"{reward:.4f}"
        lines.append(f"    s{idx}  reward {shown:>8s}  {n_tokens:3d} tokens{cut:4s} {shorten(completion, WIDTH)!r}")
    return lines


def selection_lines(cfg: Config, n_show: int) -> list[str]:
    """Why selection kept what it kept: each shown prompt's samples by rank, kept, dropped by a guard, or ranked
    below the kept ones."""
    con = round_connection(cfg, 0, guard_texts(cfg))
    params = select_params(cfg, 0) | {"n_prompts": n_show}
    shown = run_query(con, view_sql("example_prompts"), params, "example_prompts.sql")["prompt_id"].to_pylist()
    table = run_query(con, view_sql("examples"), params | {"prompt_ids": shown}, "examples.sql")
    lines, current, rank = [], None, 0
    for row in sorted(table.to_pylist(), key=lambda r: (r["prompt_id"], -(r["rank_key"] or 0), r["sample_idx"])):
        if row["prompt_id"] != current:
            current, rank = row["prompt_id"], 0
            lines.append(f"  prompt {current}: {tail(row['prompt'])!r}")
        rank += 1
        if row["kept"]:
            why = "kept"
        elif row["dropped_by"]:
            why = f"dropped by {row['dropped_by']}"
        else:
            why = f"not kept by {cfg.select.strategy}"
        text = shorten(row["completion"], WIDTH - 12)
        lines.append(
            f"    rank {rank}  {cfg.select.rank_by} {row['rank_key']:8.4f}  s{row['sample_idx']}  {why:30s} {text!r}"
        )
    return lines


def preview(
    cfg: Config,
    train: TrainFn,
    n_prompts: int = 4,
    n_samples: int = 2,
    n_show: int = 2,
    max_new_tokens: int | None = None,
    keep: bool = False,
) -> Path | None:
    """Run one shrunk round in a scratch folder and print each stage's samples; returns the folder when kept."""
    scratch = Path(tempfile.mkdtemp(prefix="raft-preview-"))
    small = preview_config(cfg, scratch, n_prompts, n_samples, max_new_tokens)
    real = storage.experiment_dir(cfg)
    print(
        f"preview of {cfg.experiment.name}: {n_prompts} prompts x K={n_samples}, one SFT step, eval on "
        f"{small.eval.n_prompts} held-out prompts; in {scratch} ({'kept' if keep else 'removed afterwards'}); "
        f"{real} is not touched"
    )
    start = time.perf_counter()
    start_cpu = time.process_time()
    times: dict[str, float] = {}

    cpu_times: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        t, c = time.perf_counter(), time.process_time()
        out = quiet(fn, *args)
        times[name], cpu_times[name] = time.perf_counter() - t, time.process_time() - c
        return out

    try:
        made = timed("generate", generate, small, 0)
        timed("score", score, small, 0)
        counts = made["counts"]
        print(
            f"\n[generate] {counts.get('samples')} samples of {counts.get('prompts')} prompts "
            f"({times['generate']:.1f}s); [score] reward {reward_label(small)} ({times['score']:.1f}s)"
        )
        print("\n".join(sample_lines(small, n_show)))

        chosen = timed("select", select, small, 0)
        dropped = ", ".join(f"{k} {v}" for k, v in chosen["dropped"].items()) or "none enabled"
        print(
            f"\n[select] strategy {small.select.strategy} by {small.select.rank_by}: kept "
            f"{chosen['counts']['selected']} of {chosen['counts']['samples']} samples; guards dropped: {dropped} "
            f"({times['select']:.1f}s)"
        )
        if chosen.get("decontamination"):
            print(f"  {decontam_line(chosen['decontamination'])}")
        print("\n".join(selection_lines(small, n_show)))

        if chosen["counts"]["selected"] == 0:
            print(f"\n[sft] skipped: {empty_selection(small, 0, chosen)}\n[eval] skipped: no model to evaluate")
        else:
            trained = timed("sft", train, small, 0)
            print(
                f"\n[sft] one step on {trained['counts']['examples']} selected samples: loss "
                f"{trained['train_loss']:.4f} ({times['sft']:.1f}s)"
            )
            evaluated = timed("eval", evaluate_model, small, 0)  # the round's model only, not the baseline
            print(f"\n[eval] the round's model on {small.eval.n_prompts} held-out prompts ({times['eval']:.1f}s)")
            print(f"  {format_metrics(evaluated['metrics'])}")
        stages = ", ".join(f"{k} {v:.1f}s (CPU {cpu_times[k]:.1f}s)" for k, v in times.items())
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        print(f"\npreview took {wall:.1f}s ({cpu:.1f}s of CPU time, all threads): {stages}")
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    if keep:
        print(f"preview rounds kept in {scratch / cfg.experiment.name}")
        return scratch
    return None


def reward_label(cfg: Config) -> str:
    """The reward as the score line names it: with score.tasks, each task's own."""
    if not cfg.score.tasks:
        return str(cfg.score.reward)
    return "by task: " + ", ".join(f"{t} {cfg.score.for_task(t).reward}" for t in cfg.score.tasks)
