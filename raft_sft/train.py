"""Train: supervised fine-tuning on a round's selected samples with TRL's SFTTrainer.

Run as:
    raft-sft train --config pipelines/imdb_positive.yaml --round 0
    raft-sft train --config pipelines/imdb_positive.yaml --round 0 sft.learning_rate=2e-5

Round n starts from round n-1's `model/` (round 0 from the base model) and writes `round-NNNN/model/` in
save_pretrained format. The `sft:` section of the config holds TRL `SFTConfig` fields, passed through as they are.
Prompt/completion rows are tokenized here: loss on the completion only, and the end-of-sequence token only where
the sample ended by itself (not where it hit max_new_tokens).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from raft_data import storage
from raft_data.config import Config
from raft_data.errors import ConfigError, StageError


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

    from raft_data.models.loading import load_tokenizer_and_model

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
        storage.write_json(
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
    rdir = storage.round_dir(cfg, round_idx)
    selected_dir = rdir / storage.STAGE_FOLDERS["select"]
    selected_manifest = storage.read_manifest(selected_dir, "select", round_idx)
    start_path, start_id = storage.policy_for_round(cfg, round_idx, role="train")
    folder = rdir / storage.STAGE_FOLDERS["train"]
    stage_cfg = {
        "sft": cfg.sft,
        "model": {**cfg.model.__dict__, "start": start_id},
        "seed": cfg.experiment.seed,
        "selected": selected_manifest["config_hash"],
        "round": round_idx,
    }
    if cfg.lora.r > 0:
        stage_cfg["lora"] = dict(cfg.lora.__dict__)
    state = process_state()
    owner = state.is_main_process
    with storage.stage("train", folder, stage_cfg, round_idx, force, in_place=False, owner=owner) as run:
        state.wait_for_everyone()
        if (folder / "manifest.json").exists() and (run.done or not owner):
            return storage.read_json(folder / "manifest.json")
        tmp = storage.tmp_folder(folder)
        files = storage.shard_files(selected_dir)
        dataset = load_selected(files)
        if len(dataset) == 0:
            raise StageError(f"{selected_dir} holds no rows: nothing to fine-tune on")
        ids = [f"{round_idx:04d}:{p}" for p in load_dataset_column(files, "prompt_id")]
        result, _, extra = fit(cfg, start_path, dataset, ids, tmp, state, record_examples)
        if not state.is_main_process:
            return {}
        manifest = storage.finish_stage(
            run,
            "train",
            round_idx,
            inputs={"selected": selected_manifest["config_hash"], "start_model": start_id},
            counts={"examples": len(dataset), "steps": result.global_step, "processes": state.num_processes},
            extra={"start_model": start_path, "train_loss": result.training_loss, **extra},
            folder=tmp,
        )
        storage.publish_folder(folder)
        print(
            f"train round {round_idx}: {len(dataset)} examples, {result.global_step} steps, "
            f"loss {result.training_loss:.4f} -> {folder}"
        )
        return manifest


def load_dataset_column(files: list[Path], column: str) -> list:
    import pyarrow.parquet as pq

    return [v for f in files for v in pq.read_table(f, columns=[column])[column].to_pylist()]
