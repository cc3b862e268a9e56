"""Train: supervised fine-tuning on a round's selected samples with TRL's SFTTrainer.

Run as:
    raft-sft train --config pipelines/imdb_positive.yaml --round 0
    python -m raft_sft.train --config pipelines/imdb_positive.yaml --round 0 sft.learning_rate=2e-5

Round n starts from round n-1's `model/` (round 0 from the base model) and writes `round-NNNN/model/` in
save_pretrained format. The `sft:` section of the config holds TRL `SFTConfig` fields, passed through as they are.
Completion-only loss comes from the prompt/completion form of `selected/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any

from raft_data import artifacts
from raft_data.cli_common import add_stage_args, run_cli
from raft_data.config import Config, ConfigError, config_hash


def sft_args(cfg: Config, output_dir: Path, on_cpu: bool) -> Any:
    """Build TRL's SFTConfig from the `sft:` section; an unknown field is a ConfigError naming it."""
    from trl import SFTConfig

    known = {f.name for f in dataclasses.fields(SFTConfig)}
    unknown = sorted(set(cfg.sft) - known)
    if unknown:
        raise ConfigError(f"unknown key sft.{unknown[0]}: the sft section takes TRL SFTConfig fields")
    if "output_dir" in cfg.sft:
        raise ConfigError("sft.output_dir is set by the round layout (round-NNNN/model/); remove it")
    # What the round layout and a CPU need; anything the user sets in `sft:` wins.
    base: dict[str, Any] = {
        "report_to": "none",
        "save_strategy": "no",
        "seed": cfg.experiment.seed,
        "logging_steps": 1,
        "disable_tqdm": False,
    }
    if on_cpu:
        base |= {"use_cpu": True, "bf16": False, "fp16": False, "gradient_checkpointing": False}
    try:
        return SFTConfig(output_dir=str(output_dir), **(base | cfg.sft))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"sft section is invalid: {str(e).splitlines()[0]}") from None


def load_selected(files: list[Path]):
    """The selected rows as a datasets.Dataset in prompt/completion form."""
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    return ds.select_columns(["prompt", "completion"])


def train(cfg: Config, round_idx: int, force: bool = False) -> dict:
    """Run the SFT stage of one round; returns its manifest."""
    import torch
    from trl import SFTTrainer

    from raft_data.backends import load_tokenizer_and_model

    rdir = artifacts.round_dir(cfg, round_idx)
    selected_dir = rdir / artifacts.STAGE_FOLDERS["select"]
    selected_manifest = artifacts.read_manifest(selected_dir, "select", round_idx)
    start_path, start_id = artifacts.policy_for_round(cfg, round_idx, role="train")
    folder = rdir / artifacts.STAGE_FOLDERS["train"]
    stage_cfg = {
        "sft": cfg.sft,
        "model": {**cfg.model.__dict__, "start": start_id},
        "seed": cfg.experiment.seed,
        "selected": selected_manifest["config_hash"],
        "round": round_idx,
    }
    chash = config_hash(stage_cfg)
    with artifacts.stage_lock(rdir, "train"):
        run = artifacts.begin_stage(folder, stage_cfg, chash, force, round_idx, in_place=False)
        if run.done:
            print(f"train: {folder} is done, skipping")
            return artifacts.read_json(folder / "manifest.json")
        tmp = artifacts.tmp_folder(folder)
        on_cpu = not torch.cuda.is_available()
        args = sft_args(cfg, tmp / "trainer", on_cpu)
        files = artifacts.shard_files(selected_dir)
        dataset = load_selected(files)
        if len(dataset) == 0:
            raise artifacts.StageError(f"{selected_dir} holds no rows: nothing to fine-tune on")
        tokenizer, model = load_tokenizer_and_model(start_path, cfg.model, "cpu" if on_cpu else "cuda")
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        result = trainer.train()
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(tmp / "trainer", ignore_errors=True)  # checkpoints and logs of a finished run
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the manifest records the arguments
        manifest = artifacts.finish_stage(
            run,
            "train",
            round_idx,
            inputs={"selected": selected_manifest["config_hash"], "start_model": start_id},
            counts={"examples": len(dataset), "steps": result.global_step},
            extra={
                "start_model": start_path,
                "train_loss": result.training_loss,
                "sft_args": args.to_dict(),
                "log_history": trainer.state.log_history,
            },
            folder=tmp,
        )
        artifacts.publish_folder(folder)
        print(
            f"train round {round_idx}: {len(dataset)} examples, {result.global_step} steps, "
            f"loss {result.training_loss:.4f} -> {folder}"
        )
        return manifest


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raft-sft train",
        description="Fine-tune the round's starting model on its selected samples with TRL's SFTTrainer.",
    )
    return add_stage_args(parser)


def main(argv: list[str] | None = None) -> None:
    run_cli(make_parser(), train, argv)


def cli() -> None:
    """`raft-sft train ...` console script."""
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: raft-sft train [--config CONFIG] [--round N] [--force] [section.key=value ...]\n\n"
            "Commands:\n  train   fine-tune a round's starting model on its selected samples (TRL SFTTrainer)\n\n"
            "Run `raft-sft train --help` for the options."
        )
        return
    if argv[0] != "train":
        print(f"error: unknown command {argv[0]!r}; the command is `raft-sft train`", file=sys.stderr)
        sys.exit(2)
    main(argv[1:])


if __name__ == "__main__":
    main()
