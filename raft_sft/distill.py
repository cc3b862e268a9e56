"""Distillation: fine-tune any student model on the selected data of any rounds (of any experiments), into its own
output folder with a manifest that names the rounds and the teachers that generated them.

Run as:
    raft-sft train --data 'runs/imdb_positive/round-*' --model runs/students/smollm2-l6 --output runs/distill/student
"""

from __future__ import annotations

import dataclasses
import glob
from pathlib import Path
from typing import Any

from raft_data import storage
from raft_data.config import Config
from raft_data.errors import ConfigError, StageError
from raft_sft.train import check_sft_section, fit, load_dataset_column, load_selected, mark_eos, process_state


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
            if (path / storage.STAGE_FOLDERS["select"]).is_dir():
                path = path / storage.STAGE_FOLDERS["select"]
            if not (path / "manifest.json").is_file():
                raise StageError(f"--data {path} is not a finished selected/ folder (no manifest.json)")
            manifest = storage.read_json(path / "manifest.json")
            storage.verify_files(path, manifest, "select", manifest.get("round", 0))
            if path.resolve() not in [f.resolve() for f in folders]:
                folders.append(path)
    return folders


def lineage(folder: Path) -> dict[str, Any]:
    """Where a selected/ folder comes from: experiment, round, its hash, and the teacher that generated it."""
    manifest = storage.read_json(folder / "manifest.json")
    samples = folder.parent / storage.STAGE_FOLDERS["generate"] / "manifest.json"
    teacher = storage.read_json(samples).get("generator") if samples.is_file() else None
    return {
        "path": str(folder),
        "experiment": folder.parent.parent.name,
        "round": manifest.get("round"),
        "config_hash": manifest.get("config_hash"),
        "identity": manifest.get("identity"),
        "rows": sum(load_counts(folder)),
        "teacher": teacher,
    }


def load_counts(folder: Path) -> list[int]:
    import pyarrow.parquet as pq

    return [pq.read_metadata(f).num_rows for f in storage.shard_files(folder)]


def distill(
    cfg: Config, data: list[str], model: str, output: Path, force: bool = False, record_examples: bool = False
) -> dict:
    """Fine-tune `model` (the student) on the selected data of any rounds; write `output` with a manifest naming
    the rounds and their teachers. The `sft:` and `lora:` sections of `cfg` apply as in a round."""
    folders = resolve_selected(data)
    rounds = [lineage(f) for f in folders]
    check_sft_section(cfg)
    if sum(r["rows"] for r in rounds) == 0:
        raise StageError(f"--data {', '.join(data)} holds no rows: nothing to fine-tune on")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=model))
    stage_cfg = {
        "sft": cfg.sft,
        "lora": dict(cfg.lora.__dict__) if cfg.lora.r > 0 else None,
        "student": model,
        "seed": cfg.experiment.seed,
        "data": [r["config_hash"] for r in rounds],
    }
    state = process_state()
    owner = state.is_main_process
    storage.make_dir(output.parent)
    lock_name = f"distill-{output.name}"
    with storage.stage(lock_name, output, stage_cfg, -1, force, in_place=False, owner=owner) as run:
        state.wait_for_everyone()
        if (output / "manifest.json").exists() and (run.done or not owner):
            return storage.read_json(output / "manifest.json")
        tmp = storage.tmp_folder(output)
        files = [f for folder in folders for f in storage.shard_files(folder)]
        dataset = mark_eos(load_selected(files), cfg.generate.stop)
        ids = [
            f"{r['experiment']}/{r['round']:04d}:{p}"
            for r, folder in zip(rounds, folders, strict=True)
            for p in load_dataset_column(storage.shard_files(folder), "prompt_id")
        ]
        result, _, extra = fit(cfg, model, dataset, ids, tmp, state, record_examples)
        if not state.is_main_process:
            return {}
        teachers = sorted({r["teacher"] for r in rounds if r["teacher"]})
        manifest = storage.finish_stage(
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
        storage.publish_folder(output)
        print(
            f"distill: {len(dataset)} examples from {len(rounds)} round(s), {result.global_step} steps, "
            f"loss {result.training_loss:.4f} -> {output}"
        )
        return manifest
