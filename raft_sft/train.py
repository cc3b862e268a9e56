"""Train: supervised fine-tuning on a round's selected samples with TRL's SFTTrainer.

Run as:
    raft-sft train --config pipelines/imdb_positive.yaml --round 0
    python -m raft_sft.train --config pipelines/imdb_positive.yaml --round 0 sft.learning_rate=2e-5

Round n starts from round n-1's `model/` (round 0 from the base model) and writes `round-NNNN/model/` in
save_pretrained format. The `sft:` section of the config holds TRL `SFTConfig` fields, passed through as they are.
Prompt/completion rows are tokenized here: loss on the completion only, and the end-of-sequence token only where
the sample ended by itself (not where it hit max_new_tokens).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import shutil
import sys
import time
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
    """The selected rows as a datasets.Dataset in prompt/completion form (with `truncated` where recorded)."""
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    return ds.select_columns([c for c in ("prompt", "completion", "truncated") if c in ds.column_names])


def tokenize_examples(dataset, tokenizer):
    """Prompt/completion rows as token ids, with labels on the completion only.

    The end-of-sequence token is appended only where the sample ended by itself. A sample cut off at
    max_new_tokens did not end there, and training it to stop there teaches the model to stop mid-sentence
    (TRL appends it to every completion of a text data set, so the data is tokenized here).
    """
    eos = tokenizer.eos_token_id

    def encode(row: dict) -> dict:
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        ids = tokenizer(row["prompt"] + row["completion"])["input_ids"]
        # Tokens can merge across the prompt/completion boundary: the completion starts where the two diverge.
        n_prompt = min(len(prompt_ids), len(ids))
        n_prompt = next((i for i in range(n_prompt) if prompt_ids[i] != ids[i]), n_prompt)
        if not row.get("truncated", False):
            ids = ids + [eos]
        return {"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:]}

    return dataset.map(encode, remove_columns=dataset.column_names)


# ---------------------------------------------------------------------------------------------------------------------
# Data parallel: under `accelerate launch` every process trains; only the main one locks, writes and publishes.


def process_state():
    """accelerate's PartialState: one process without a launcher, one per rank under `accelerate launch`."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def peft_config(cfg: Config):
    """TRL's `peft_config` from the `lora:` section, or None when lora.r is 0 (full fine-tuning)."""
    if cfg.lora.r == 0:
        return None
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def log_examples(trainer, example_ids: list[str], log: list[str]) -> None:
    """Record which examples this process is fed (by id), to check data parallelism loses or repeats none."""
    index: dict[tuple, list[str]] = {}
    for row, ids in enumerate(trainer.train_dataset["input_ids"]):
        index.setdefault(tuple(ids), []).append(example_ids[row])
    collate = trainer.data_collator

    def logging_collator(features: list[dict]) -> Any:
        for f in features:
            log.append(index[tuple(f["input_ids"])][0])
        return collate(features)

    trainer.data_collator = logging_collator


def fit(
    cfg: Config, start_path: str, dataset, example_ids: list[str], tmp: Path, state, record: bool = False
) -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune `start_path` on `dataset` with TRL's SFTTrainer and save the model (and tokenizer) into `tmp`.

    Returns (train result, trainer, extra manifest fields). With `lora.r > 0` the adapter is trained through
    `peft_config` and saved merged into the model or alone, as `lora.merge` says.
    """
    import torch
    from trl import SFTTrainer

    from raft_data.backends import load_tokenizer_and_model

    on_cpu = not torch.cuda.is_available()
    args = sft_args(cfg, tmp / "trainer", on_cpu)
    device = "cpu" if on_cpu else f"cuda:{state.local_process_index}"
    tokenizer, model = load_tokenizer_and_model(start_path, cfg.model, device)
    if "completion" in dataset.column_names:
        dataset = tokenize_examples(dataset, tokenizer)
    lora = peft_config(cfg)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    seen: list[str] = []
    if record:
        log_examples(trainer, example_ids, seen)
    result = trainer.train()
    extra: dict[str, Any] = {"sft_args": args.to_dict(), "log_history": trainer.state.log_history}
    if lora is not None:
        extra["lora"] = dict(cfg.lora.__dict__)
        extra["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if record:
        artifacts.write_json(
            {"rank": state.process_index, "example_ids": seen},
            tmp / "examples" / f"rank-{state.process_index:05d}.json",
        )
    if lora is not None and cfg.lora.merge:
        if state.is_main_process:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(str(tmp))
    else:
        trainer.save_model(str(tmp))  # the main process writes (the adapter alone when LoRA is not merged)
    if state.is_main_process:
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(tmp / "trainer", ignore_errors=True)  # checkpoints and logs of a finished run
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the manifest records the arguments
    state.wait_for_everyone()
    return result, trainer, extra


def train(cfg: Config, round_idx: int, force: bool = False, record_examples: bool = False) -> dict:
    """Run the SFT stage of one round; returns its manifest."""
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
    if cfg.lora.r > 0:
        stage_cfg["lora"] = dict(cfg.lora.__dict__)
    chash = config_hash(stage_cfg)
    state = process_state()
    lock = artifacts.stage_lock(rdir, "train") if state.is_main_process else contextlib.nullcontext()
    with lock:
        run = None
        if state.is_main_process:
            run = artifacts.begin_stage(folder, stage_cfg, chash, force, round_idx, in_place=False)
        state.wait_for_everyone()
        if (folder / "manifest.json").exists() and (run is None or run.done):
            print(f"train: {folder} is done, skipping")
            return artifacts.read_json(folder / "manifest.json")
        tmp = artifacts.tmp_folder(folder)
        files = artifacts.shard_files(selected_dir)
        dataset = load_selected(files)
        if len(dataset) == 0:
            raise artifacts.StageError(f"{selected_dir} holds no rows: nothing to fine-tune on")
        ids = [f"{round_idx:04d}:{p}" for p in load_dataset_column(files, "prompt_id")]
        result, _, extra = fit(cfg, start_path, dataset, ids, tmp, state, record_examples)
        if not state.is_main_process:
            return {}
        manifest = artifacts.finish_stage(
            run,
            "train",
            round_idx,
            inputs={"selected": selected_manifest["config_hash"], "start_model": start_id},
            counts={"examples": len(dataset), "steps": result.global_step, "processes": state.num_processes},
            extra={"start_model": start_path, "train_loss": result.training_loss, **extra},
            folder=tmp,
        )
        artifacts.publish_folder(folder)
        print(
            f"train round {round_idx}: {len(dataset)} examples, {result.global_step} steps, "
            f"loss {result.training_loss:.4f} -> {folder}"
        )
        return manifest


def load_dataset_column(files: list[Path], column: str) -> list:
    import pyarrow.parquet as pq

    return [v for f in files for v in pq.read_table(f, columns=[column])[column].to_pylist()]


# ---------------------------------------------------------------------------------------------------------------------
# Distillation: any rounds' selected data, any student, its own output folder


def resolve_selected(data: list[str]) -> list[Path]:
    """Finished `selected/` folders named by paths or globs: a selected folder, a round folder, or a shard file."""
    folders: list[Path] = []
    for pattern in data:
        matches = [Path(p) for p in sorted(glob.glob(pattern))] if glob.has_magic(pattern) else [Path(pattern)]
        if not matches:
            raise ConfigError(f"--data {pattern!r} matches nothing")
        for path in matches:
            if path.is_file() and path.suffix == ".parquet":
                path = path.parent
            if (path / artifacts.STAGE_FOLDERS["select"]).is_dir():
                path = path / artifacts.STAGE_FOLDERS["select"]
            if not (path / "manifest.json").is_file():
                raise artifacts.StageError(f"--data {path} is not a finished selected/ folder (no manifest.json)")
            if path.resolve() not in [f.resolve() for f in folders]:
                folders.append(path)
    return folders


def lineage(folder: Path) -> dict[str, Any]:
    """Where a selected/ folder comes from: experiment, round, its hash, and the teacher that generated it."""
    manifest = artifacts.read_json(folder / "manifest.json")
    samples = folder.parent / artifacts.STAGE_FOLDERS["generate"] / "manifest.json"
    teacher = artifacts.read_json(samples).get("generator") if samples.is_file() else None
    return {
        "path": str(folder),
        "experiment": folder.parent.parent.name,
        "round": manifest.get("round"),
        "config_hash": manifest.get("config_hash"),
        "rows": sum(load_counts(folder)),
        "teacher": teacher,
    }


def load_counts(folder: Path) -> list[int]:
    import pyarrow.parquet as pq

    return [pq.read_metadata(f).num_rows for f in artifacts.shard_files(folder)]


def distill(
    cfg: Config, data: list[str], model: str, output: Path, force: bool = False, record_examples: bool = False
) -> dict:
    """Fine-tune `model` (the student) on the selected data of any rounds; write `output` with a manifest naming
    the rounds and their teachers. The `sft:` and `lora:` sections of `cfg` apply as in a round."""
    folders = resolve_selected(data)
    rounds = [lineage(f) for f in folders]
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=model))
    stage_cfg = {
        "sft": cfg.sft,
        "lora": dict(cfg.lora.__dict__) if cfg.lora.r > 0 else None,
        "student": model,
        "seed": cfg.experiment.seed,
        "data": [r["config_hash"] for r in rounds],
    }
    chash = config_hash(stage_cfg)
    state = process_state()
    output.parent.mkdir(parents=True, exist_ok=True)
    lock = artifacts.stage_lock(output.parent, f"distill-{output.name}") if state.is_main_process else None
    with lock or contextlib.nullcontext():
        done = (output / "manifest.json").is_file()
        if done and not force:
            old = artifacts.read_json(output / "manifest.json").get("config_hash")
            if old != chash:
                raise artifacts.StageError(
                    f"{output} was made from other data or settings (hash {old}, now {chash}); "
                    "rerun with --force to replace it, or choose another --output"
                )
            print(f"distill: {output} is done, skipping")
            return artifacts.read_json(output / "manifest.json")
        tmp = artifacts.tmp_folder(output)
        if state.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        state.wait_for_everyone()
        files = [f for folder in folders for f in artifacts.shard_files(folder)]
        dataset = load_selected(files)
        if len(dataset) == 0:
            raise artifacts.StageError(f"--data {', '.join(data)} holds no rows: nothing to fine-tune on")
        ids = [
            f"{r['experiment']}/{r['round']:04d}:{p}"
            for r, folder in zip(rounds, folders, strict=True)
            for p in load_dataset_column(artifacts.shard_files(folder), "prompt_id")
        ]
        run = artifacts.StageRun(output, stage_cfg, chash, time.time(), done=False)
        result, _, extra = fit(cfg, model, dataset, ids, tmp, state, record_examples)
        if not state.is_main_process:
            return {}
        teachers = sorted({r["teacher"] for r in rounds if r["teacher"]})
        manifest = artifacts.finish_stage(
            run,
            "distill",
            -1,
            inputs={r["path"]: r["config_hash"] for r in rounds},
            counts={"examples": len(dataset), "steps": result.global_step, "processes": state.num_processes},
            extra={
                "student": model,
                "teachers": teachers,
                "rounds": rounds,
                "train_loss": result.training_loss,
                **extra,
            },
            folder=tmp,
        )
        artifacts.publish_folder(output)
        print(
            f"distill: {len(dataset)} examples from {len(rounds)} round(s), {result.global_step} steps, "
            f"loss {result.training_loss:.4f} -> {output}"
        )
        return manifest


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raft-sft train",
        description="Fine-tune the round's starting model on its selected samples with TRL's SFTTrainer; "
        "with --data, --model and --output, distil any rounds' selected data into any student model instead.",
    )
    add_stage_args(parser)
    group = parser.add_argument_group("distillation (instead of --round)")
    group.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        help="selected/ folders, round folders or globs, across experiments, e.g. 'runs/imdb_positive/round-*'",
    )
    group.add_argument("--model", help="the student: a model folder")
    group.add_argument("--output", help="the student's output folder")
    parser.add_argument(
        "--log-examples",
        action="store_true",
        help="write the example ids each process trained on to examples/rank-NNNNN.json in the output",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = make_parser()
    args, _ = parser.parse_known_args(argv)
    distilling = args.data is not None or args.model is not None or args.output is not None
    if distilling and not (args.data and args.model and args.output):
        parser.error("distillation needs all of --data, --model and --output")
    if distilling:

        def stage(cfg: Config, round_idx: int, force: bool = False) -> dict:
            return distill(cfg, args.data, args.model, Path(args.output), force, args.log_examples)

    else:

        def stage(cfg: Config, round_idx: int, force: bool = False) -> dict:
            return train(cfg, round_idx, force, args.log_examples)

    run_cli(parser, stage, argv)


def cli() -> None:
    """`raft-sft train ...` console script."""
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: raft-sft train [--config CONFIG] [--round N] [--force] [section.key=value ...]\n"
            "       raft-sft train --data PATH [PATH ...] --model STUDENT --output DIR [--config CONFIG] [...]\n\n"
            "Commands:\n  train   fine-tune a round's starting model on its selected samples (TRL SFTTrainer),\n"
            "          or distil any rounds' selected data into a student model (--data/--model/--output)\n\n"
            "Run `raft-sft train --help` for the options."
        )
        return
    if argv[0] != "train":
        print(f"error: unknown command {argv[0]!r}; the command is `raft-sft train`", file=sys.stderr)
        sys.exit(2)
    main(argv[1:])


if __name__ == "__main__":
    main()
