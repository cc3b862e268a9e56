"""Score: compute r(x, y) for every sample of a round, one scores shard per samples shard.

Run as:
    raft-data score --config pipelines/imdb_positive.yaml --round 0
    python -m raft_data.score --config pipelines/imdb_positive.yaml --round 0 score.reward=vader_completion

Writes `round-NNNN/scores/shard-XXXXX-of-YYYYY.parquet`: `prompt_id`, `sample_idx`, `reward` and one column per
reward component. A non-finite reward stops the stage with the prompt_id and sample_idx that produced it.
"""

from __future__ import annotations

import argparse
import math

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from raft_data import artifacts, schemas
from raft_data.cli_common import add_stage_args, run_cli
from raft_data.config import Config, config_hash
from raft_data.prompts import DataError
from raft_data.rewards import load_reward


def score(cfg: Config, round_idx: int, force: bool = False) -> dict:
    """Run the score stage of one round; returns its manifest."""
    rdir = artifacts.round_dir(cfg, round_idx)
    samples_dir = rdir / artifacts.STAGE_FOLDERS["generate"]
    samples_manifest = artifacts.read_manifest(samples_dir, "generate", round_idx)
    folder = rdir / artifacts.STAGE_FOLDERS["score"]
    name, reward_fn = load_reward(cfg.score.reward)
    stage_cfg = {"score": cfg.score.__dict__, "samples": samples_manifest["config_hash"], "round": round_idx}
    chash = config_hash(stage_cfg)
    schema = schemas.scores_schema([name])
    with artifacts.stage_lock(rdir, "score"):
        run = artifacts.begin_stage(folder, stage_cfg, chash, force, round_idx)
        if run.done:
            print(f"score: {folder} is done, skipping")
            return artifacts.read_json(folder / "manifest.json")
        sample_files = artifacts.shard_files(samples_dir)
        n_rows = 0
        for src in tqdm(sample_files, desc=f"score round {round_idx}", unit="shard"):
            dst = folder / src.name
            if artifacts.shard_done(dst):
                n_rows += pq.read_metadata(dst).num_rows
                continue
            samples = pq.read_table(src, columns=["prompt_id", "sample_idx", "prompt", "completion"])
            rewards = [float(r) for r in reward_fn(samples["prompt"].to_pylist(), samples["completion"].to_pylist())]
            check_rewards(rewards, samples, name, src)
            table = pa.table(
                {
                    "prompt_id": samples["prompt_id"],
                    "sample_idx": samples["sample_idx"],
                    "reward": pa.array(rewards, pa.float64()),
                    name: pa.array(rewards, pa.float64()),
                }
            )
            artifacts.write_parquet(table, dst, schema)
            artifacts.mark_done(dst, table.num_rows)
            n_rows += table.num_rows
        return artifacts.finish_stage(
            run,
            "score",
            round_idx,
            inputs={"samples": samples_manifest["config_hash"]},
            counts={"scores": n_rows, "shards": len(sample_files)},
            extra={"components": [name]},
        )


def check_rewards(rewards: list[float], samples: pa.Table, name: str, src) -> None:
    if len(rewards) != samples.num_rows:
        raise DataError(f"reward {name!r} returned {len(rewards)} values for {samples.num_rows} samples in {src}")
    for i, r in enumerate(rewards):
        if not math.isfinite(r):
            pid, k = samples["prompt_id"][i].as_py(), samples["sample_idx"][i].as_py()
            raise DataError(f"reward {name!r} returned {r} for prompt_id={pid} sample_idx={k} in {src}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raft-data score", description="Score every sample of one round with the configured reward."
    )
    return add_stage_args(parser)


def main(argv: list[str] | None = None) -> None:
    run_cli(make_parser(), score, argv)


if __name__ == "__main__":
    main()
