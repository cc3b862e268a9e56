"""Generate: sample K completions for each of the round's prompts and write them as Parquet shards.

Run as:
    raft-data generate --config pipelines/imdb_positive.yaml --round 0
    python -m raft_data.generate --config pipelines/imdb_positive.yaml --round 0 generate.n_samples=8

Writes `round-NNNN/prompts.parquet` and `round-NNNN/samples/shard-XXXXX-of-YYYYY.parquet` (one row per sample).
Each shard is redone whole if it has no `.done` marker, so a killed run resumes where it stopped and ends with the
same samples as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import hashlib

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from raft_data import artifacts, schemas
from raft_data.backends import BACKENDS
from raft_data.cli_common import add_stage_args, run_cli
from raft_data.config import Config, ConfigError, config_hash
from raft_data.prompts import draw_round_prompts


def shard_seed(seed: int, round_idx: int, shard_idx: int) -> int:
    """A shard's sampling seed depends on nothing but (seed, round, shard)."""
    digest = hashlib.sha256(f"{seed}:{round_idx}:{shard_idx}".encode()).hexdigest()
    return int(digest[:8], 16)


def shard_bounds(n_rows: int, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal slices of the prompts; some may be empty when prompts < shards."""
    return [(i * n_rows // n_shards, (i + 1) * n_rows // n_shards) for i in range(n_shards)]


def generate(cfg: Config, round_idx: int, force: bool = False) -> dict:
    """Run the generate stage of one round; returns its manifest."""
    if cfg.generate.backend not in BACKENDS:
        raise ConfigError(f"generate.backend={cfg.generate.backend!r} is unknown: choose from {', '.join(BACKENDS)}")
    rdir = artifacts.round_dir(cfg, round_idx)
    folder = rdir / artifacts.STAGE_FOLDERS["generate"]
    model_path, model_id = artifacts.policy_for_round(cfg, round_idx)
    stage_cfg = {
        "experiment": {"name": cfg.experiment.name, "seed": cfg.experiment.seed},
        "model": {**cfg.model.__dict__, "generator": model_id},
        "prompts": cfg.prompts.__dict__,
        "generate": cfg.generate.__dict__,
        "round": round_idx,
    }
    chash = config_hash(stage_cfg)
    with artifacts.stage_lock(rdir, "generate"):
        run = artifacts.begin_stage(folder, stage_cfg, chash, force, round_idx)
        if run.done:
            print(f"generate: {folder} is done, skipping")
            return artifacts.read_json(folder / "manifest.json")

        prompts_path = rdir / "prompts.parquet"
        prompts = draw_round_prompts(cfg.prompts, cfg.experiment.seed, round_idx)
        artifacts.write_parquet(prompts, prompts_path, schemas.PROMPTS)

        n_shards = cfg.generate.n_shards
        todo = [
            (i, lo, hi)
            for i, (lo, hi) in enumerate(shard_bounds(prompts.num_rows, n_shards))
            if not artifacts.shard_done(folder / artifacts.shard_name(i, n_shards))
        ]
        if todo:
            sample = BACKENDS[cfg.generate.backend](model_path, cfg.model, cfg.generate)
        generator = f"{cfg.generate.backend}:{model_path}"
        bar = tqdm(total=sum(hi - lo for _, lo, hi in todo), desc=f"generate round {round_idx}", unit="prompt")
        for shard_idx, lo, hi in todo:
            part = prompts.slice(lo, hi - lo)
            seed = shard_seed(cfg.experiment.seed, round_idx, shard_idx)
            completions = sample(part["prompt"].to_pylist(), seed) if part.num_rows else []
            table = samples_table(part, completions, generator, seed, round_idx)
            path = folder / artifacts.shard_name(shard_idx, n_shards)
            artifacts.write_parquet(table, path, schemas.SAMPLES)
            artifacts.mark_done(path, table.num_rows)
            bar.update(part.num_rows)
        bar.close()

        files = artifacts.shard_files(folder)
        n_samples = sum(pq.read_metadata(f).num_rows for f in files)
        truncated = sum(pc.sum(pq.read_table(f, columns=["truncated"])["truncated"]).as_py() or 0 for f in files)
        return artifacts.finish_stage(
            run,
            "generate",
            round_idx,
            inputs={"prompts": str(prompts_path), "model": model_id},
            counts={"prompts": prompts.num_rows, "samples": n_samples, "truncated": truncated, "shards": n_shards},
            extra={"generator": generator},
        )


def samples_table(prompts: pa.Table, completions: list, generator: str, seed: int, round_idx: int) -> pa.Table:
    rows: dict[str, list] = {name: [] for name in schemas.SAMPLES.names}
    ids, texts = prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist()
    for pid, prompt, comps in zip(ids, texts, completions, strict=True):
        for k, c in enumerate(comps):
            rows["prompt_id"].append(pid)
            rows["sample_idx"].append(k)
            rows["prompt"].append(prompt)
            rows["completion"].append(c.text)
            rows["n_tokens"].append(c.n_tokens)
            rows["truncated"].append(c.truncated)
            rows["source"].append("policy")
            rows["generator"].append(generator)
            rows["seed"].append(seed)
            rows["round"].append(round_idx)
    return pa.table(rows, schema=schemas.SAMPLES)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raft-data generate",
        description="Sample K completions per prompt for one round and write them as Parquet shards.",
    )
    return add_stage_args(parser)


def main(argv: list[str] | None = None) -> None:
    run_cli(make_parser(), generate, argv)


if __name__ == "__main__":
    main()
