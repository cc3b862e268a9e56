"""Train: supervised fine-tuning on a round's selected samples with TRL's SFTTrainer.

Run as:
    raft-sft train --config pipelines/imdb_positive.yaml --round 0
    raft-sft train --config pipelines/imdb_positive.yaml --round 0 sft.learning_rate=2e-5

Round n starts from round n-1's `model/` (round 0 from the base model) and writes `round-NNNN/model/` in
save_pretrained format. The `sft:` section of the config holds TRL `SFTConfig` fields, passed through as they are.
Prompt/completion rows are tokenized here: loss on the completion only, and the end-of-sequence token only where
the model ended the sample with it (not where it hit max_new_tokens, nor where a `generate.stop` string ended it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

from raft_data import storage
from raft_data.config import Config
from raft_data.config.sections import MAX_COUNT, MAX_SEED, MAX_TOKENS, finite
from raft_data.errors import ConfigError, DataError, StageError, shown
from raft_data.models.checks import check_finite_weights, check_model_limits, nonfinite_weights
from raft_data.models.logprobs import ended_on_eos
from raft_data.storage.tracking import project_name, sft_run_name, tracker_environment


def check_sft_section(cfg: Config) -> None:
    """The `sft:` section checked before any model is loaded: known SFTConfig fields, values of the field's kind,
    and a run that trains at least one step."""
    from trl import SFTConfig

    defaults = {f.name: f.default for f in dataclasses.fields(SFTConfig)}
    unknown = sorted(set(cfg.sft) - set(defaults), key=str)
    if unknown:
        raise ConfigError(f"unknown key sft.{unknown[0]}: the sft section takes TRL SFTConfig fields")
    if "output_dir" in cfg.sft:
        raise ConfigError("sft.output_dir is set by the round layout (round-NNNN/model/); remove it")
    for key, value in cfg.sft.items():
        check_sft_value(key, value, defaults[key])
    if cfg.sft.get("max_steps", -1) <= 0 and cfg.sft.get("num_train_epochs", 3.0) <= 0:
        raise ConfigError(
            f"sft.num_train_epochs={cfg.sft.get('num_train_epochs')!r} is invalid: expected > 0 "
            "(or sft.max_steps > 0); it would publish an untrained model"
        )


def sft_args(cfg: Config, output_dir: Path, on_cpu: bool, run: str | None = None) -> Any:
    """Build TRL's SFTConfig from the `sft:` section; an unknown field or a bad value is a ConfigError naming it.
    `run`: the tracker run the loss curves go to, when `tracking.report_to` names trackers (and `tracking.sft`)."""
    from trl import SFTConfig

    check_sft_section(cfg)
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
    if run is not None and cfg.tracking.report_to and cfg.tracking.sft:
        base |= {"report_to": list(cfg.tracking.report_to), "run_name": run, "project": project_name(cfg)}
        if "trackio" in cfg.tracking.report_to:
            base["trackio_static_space_id"] = False  # never a Space on the Hub: the database stays local
    try:
        return SFTConfig(output_dir=str(output_dir), **(base | cfg.sft))
    except Exception as e:  # TRL and transformers check the fields in many ways; all are the user's sft section
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ConfigError(f"sft section is invalid: {first}") from None


# SFTConfig fields that must be at least this (it checks none of them itself; a bad one fails deep in training)
SFT_MINIMUMS = {
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "learning_rate": 0.0,
    "max_length": 1,
    "logging_steps": 0,
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "seed": 0,
    "data_seed": 0,
}
# ... and at most this: seeds as numpy and torch take them, sizes that can be allocated
SFT_MAXIMUMS = {
    "per_device_train_batch_size": MAX_COUNT,
    "gradient_accumulation_steps": MAX_COUNT,
    "max_length": MAX_TOKENS,
    "seed": MAX_SEED,
    "data_seed": MAX_SEED,
}


def check_sft_value(key: str, value: Any, default: Any) -> None:
    """A ConfigError naming `sft.key=value` when the value is not of the field's kind (number, integer, true or
    false, as TRL's default is) or outside its bounds."""
    if isinstance(value, float) and not math.isfinite(value):  # in any field, numbers or not
        raise ConfigError(f"sft.{key}={value!r} is invalid: expected a finite number")
    if value is None and default is None:  # an optional field left unset
        return
    if key == "data_seed":  # an optional integer
        default = 0
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok = finite(value)
        expected = "a number"
    else:
        return
    low, high = SFT_MINIMUMS.get(key), SFT_MAXIMUMS.get(key)
    if ok and low is not None and value < low:
        ok, expected = False, f">= {low}"
    elif ok and high is not None and value > high:
        ok, expected = False, f"<= {high:,}"
    if not ok:
        raise ConfigError(f"sft.{key}={shown(value)} is invalid: expected {expected}")


def load_selected(files: list[Path]):
    """The selected rows as a datasets.Dataset: prompt/completion (with `truncated` where recorded), or
    `messages` (select.format=messages, which TRL renders with the model's chat template)."""
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    keep = ("messages",) if "messages" in ds.column_names else ("prompt", "completion", "truncated")
    return ds.select_columns([c for c in keep if c in ds.column_names])


def mark_eos(dataset, stop: list[str]):
    """Prompt/completion rows with an `eos` column: whether the model ended the sample with its end-of-sequence
    token (`ended_on_eos`: not truncated, not ended by one of the `generate.stop` strings). SFT trains the token only
    there, so a round teaches the sequence the model sampled and nothing more: a sample the sampler cut after its
    first sentence does not teach the model to end every text after one sentence."""
    if "completion" not in dataset.column_names:
        return dataset
    truncated = dataset["truncated"] if "truncated" in dataset.column_names else [False] * len(dataset)
    eos = [ended_on_eos(c, t, stop) for c, t in zip(dataset["completion"], truncated, strict=True)]
    return dataset.add_column("eos", eos)


def add_replay(dataset, ids: list[str], selected_dir: Path, selected_manifest: dict, round_idx: int):
    """The selected rows plus the round's replay rows (human reference text, `rounds.replay_fraction`) that the
    select stage wrote beside them, checked against its manifest. Returns (dataset, example ids, replay rows)."""
    from datasets import concatenate_datasets

    replay = selected_manifest.get("replay")
    if replay is None:
        return dataset, ids, None
    path = selected_dir / replay["file"]
    if not path.is_file() or storage.file_sha256(path) != replay["sha256"]:
        raise DataError(
            f"{path} is missing or damaged (its checksum is not the one in manifest.json): rerun "
            f"`raft-data select --round {round_idx} --force`"
        )
    if replay["rows"] == 0:
        return dataset, ids, 0
    rows = load_selected([path])
    rows = rows.add_column("eos", [True] * len(rows))  # human text that ends there: it is trained to end
    ids = ids + [f"{round_idx:04d}:replay:{p}" for p in load_dataset_column([path], "prompt_id")]
    return concatenate_datasets([dataset, rows.cast(dataset.features)]), ids, len(rows)


def tokenize_examples(dataset, tokenizer):
    """Prompt/completion rows as token ids, with labels on the completion only.

    The end-of-sequence token is appended only where the sample ended by itself: the `eos` column (`mark_eos`). A
    sample cut off at max_new_tokens did not end there, and training it to stop there teaches the model to stop
    mid-sentence (TRL appends it to every completion of a text data set, so the data is tokenized here).
    """
    eos = tokenizer.eos_token_id

    def encode(row: dict) -> dict:
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        ids = tokenizer(row["prompt"] + row["completion"])["input_ids"]
        # Tokens can merge across the prompt/completion boundary: the completion starts where the two diverge.
        n_prompt = min(len(prompt_ids), len(ids))
        n_prompt = next((i for i in range(n_prompt) if prompt_ids[i] != ids[i]), n_prompt)
        if row["eos"]:
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


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete TRL checkpoint in `folder` (its trainer_state.json is written last), or None."""
    found = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.rsplit("-", 1)[-1]), default=None)


def fit(
    cfg: Config,
    start_path: str,
    dataset,
    example_ids: list[str],
    tmp: Path,
    state,
    record: bool = False,
    run: str | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune `start_path` on `dataset` with TRL's SFTTrainer and save the model (and tokenizer) into `tmp`.

    Returns (train result, trainer, extra manifest fields). With `lora.r > 0` the adapter is trained through
    `peft_config` and saved merged into the model or alone, as `lora.merge` says. With `run` and trackers in
    `tracking.report_to`, TRL reports the loss curves to them as that run.
    """
    reporting = run is not None and bool(cfg.tracking.report_to) and cfg.tracking.sft
    with tracker_environment(cfg, run) if reporting else contextlib.nullcontext():
        return _fit(cfg, start_path, dataset, example_ids, tmp, state, record, run if reporting else None)


def _fit(
    cfg: Config, start_path: str, dataset, example_ids: list[str], tmp: Path, state, record: bool, run: str | None
) -> tuple[Any, Any, dict[str, Any]]:
    import torch
    from trl import SFTTrainer

    from raft_data.models.loading import load_tokenizer_and_model

    check_model_limits(cfg, start_path)  # a LoRA rank beyond the model's width, before anything is allocated
    on_cpu = not torch.cuda.is_available()
    args = sft_args(cfg, tmp / "trainer", on_cpu, run)
    device = "cpu" if on_cpu else f"cuda:{state.local_process_index}"
    tokenizer, model = load_tokenizer_and_model(start_path, cfg.model, device)
    if "completion" in dataset.column_names:
        dataset = tokenize_examples(dataset, tokenizer)
    lora = peft_config(cfg)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    if len(trainer.train_dataset) == 0:  # TRL drops examples whose completion was cut away entirely
        raise StageError(
            f"SFT has no example left to train on: all {len(dataset)} were cut to prompt tokens only by "
            f"sft.max_length={args.max_length}; raise it"
        )
    seen: list[str] = []
    if record:
        log_examples(trainer, example_ids, seen)
    # A killed run of the same config left its checkpoints in tmp/trainer (when sft.save_strategy saves any):
    # go on from the last complete one.
    checkpoint = last_checkpoint(tmp / "trainer")
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if run is not None and "wandb" in cfg.tracking.report_to and state.is_main_process:
        import wandb

        wandb.finish()  # TRL leaves its run open; the rounds' run opens next
    if result.global_step == 0:
        raise StageError(f"SFT on {start_path} ran 0 steps: check sft.num_train_epochs / sft.max_steps")
    diverged = first_nonfinite_loss(trainer.state.log_history, result)
    if diverged is not None:
        if state.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # its checkpoints would resume the divergence
        step, loss = diverged
        raise StageError(diverged_message(cfg, f"the training loss is {loss} at step {step}"))
    extra: dict[str, Any] = {"sft_args": args.to_dict(), "log_history": trainer.state.log_history}
    if checkpoint is not None:
        extra["resumed_from_checkpoint"] = checkpoint.name
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
    if state.is_main_process:  # the weights as saved, before anything is published
        where = nonfinite_weights(tmp)
        if where is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StageError(
                diverged_message(cfg, f"the trained weights are not finite ({where} are NaN or infinite)")
            )
    return result, trainer, extra


def first_nonfinite_loss(log_history: list[dict[str, Any]], result: Any) -> tuple[Any, Any] | None:
    """(step, loss) of the first logged training loss that is NaN or infinite, the final training loss last; None
    when every one is finite."""
    losses = [(entry.get("step"), entry["loss"]) for entry in log_history if "loss" in entry]
    losses.append(("end", result.training_loss))
    for step, loss in losses:
        if not finite(loss):
            return step, loss
    return None


def diverged_message(cfg: Config, what: str) -> str:
    """One line: SFT diverged (`what` says how), with the learning rate, and that nothing was published."""
    lr = cfg.sft.get("learning_rate")
    setting = f" (sft.learning_rate={lr:g})" if isinstance(lr, (int, float)) else ""
    return f"SFT diverged: {what}{setting}; nothing was published: lower sft.learning_rate and rerun"


def empty_selection(round_idx: int, selected_manifest: dict[str, Any]) -> str:
    """One line: the round's selection is empty, and what emptied it."""
    dropped = selected_manifest.get("dropped") or {}
    emptied_by = ", ".join(f"{k} dropped {v}" for k, v in dropped.items() if v) or "no guard dropped a row"
    strategy = selected_manifest["config"]["select"]["strategy"]
    return (
        f"round {round_idx}: selected/ holds no rows, nothing to fine-tune on (select.strategy={strategy}; "
        f"{emptied_by}); loosen the selection and rerun `raft-data select --round {round_idx} --force`"
    )


def train(cfg: Config, round_idx: int, force: bool = False, record_examples: bool = False) -> dict:
    """Run the SFT stage of one round; returns its manifest."""
    check_sft_section(cfg)
    rdir = storage.round_dir(cfg, round_idx)
    selected_dir = rdir / storage.STAGE_FOLDERS["select"]
    selected_manifest, selected_ref = storage.read_input(cfg, "select", round_idx)
    if selected_manifest.get("format") == "pairs":
        raise StageError(
            f"{selected_dir} holds preference pairs (select.format=pairs): train them with TRL's DPOTrainer; "
            "raft-sft train fine-tunes on prompt/completion rows"
        )
    if selected_manifest["counts"].get("selected") == 0:
        raise StageError(empty_selection(round_idx, selected_manifest))
    start_path, start_ref = storage.policy_for_round(cfg, round_idx, role="train")
    folder = rdir / storage.STAGE_FOLDERS["train"]
    if not (folder / "manifest.json").exists() or force:  # what training would start from, checked up front
        check_model_limits(cfg, start_path)
        check_finite_weights(start_path)
    stage_cfg = {"sft": cfg.sft, "model": cfg.model.__dict__, "seed": cfg.experiment.seed, "round": round_idx}
    if cfg.lora.r > 0:
        stage_cfg["lora"] = dict(cfg.lora.__dict__)
    state = process_state()
    owner = state.is_main_process
    inputs = {"selected": selected_ref, "start_model": start_ref}
    neighbours = storage.neighbours(cfg, "train", round_idx)
    with storage.stage(
        "train", folder, stage_cfg, round_idx, force, in_place=False, owner=owner, inputs=inputs, neighbours=neighbours
    ) as run:
        state.wait_for_everyone()
        if (folder / "manifest.json").exists() and (run.done or not owner):
            return storage.read_json(folder / "manifest.json")
        tmp = storage.tmp_folder(folder)
        files = storage.shard_files(selected_dir)
        dataset = mark_eos(load_selected(files), cfg.generate.stop)
        ids = [f"{round_idx:04d}:{p}" for p in load_dataset_column(files, "prompt_id")]
        dataset, ids, n_replay = add_replay(dataset, ids, selected_dir, selected_manifest, round_idx)
        run_name = sft_run_name(cfg, round_idx)
        result, _, extra = fit(cfg, start_path, dataset, ids, tmp, state, record_examples, run_name)
        if not state.is_main_process:
            return {}
        manifest = storage.finish_stage(
            run,
            "train",
            round_idx,
            inputs={"start_model_path": start_path},
            counts={
                "examples": len(dataset),
                **({"replay": n_replay} if n_replay is not None else {}),
                "steps": result.global_step,
                "processes": state.num_processes,
            },
            extra={"start_model": start_path, "train_loss": result.training_loss, **extra},
            folder=tmp,
        )
        storage.publish_folder(folder)
        print(
            f"train round {round_idx}: {len(dataset)} examples{f' ({n_replay} replay)' if n_replay else ''}, "
            f"{result.global_step} steps, "
            f"loss {result.training_loss:.4f} -> {folder}"
        )
        return manifest


def load_dataset_column(files: list[Path], column: str) -> list:
    import pyarrow.parquet as pq

    return [v for f in files for v in pq.read_table(f, columns=[column])[column].to_pylist()]
