"""Export: an experiment's selected sets as a `datasets` DatasetDict with a dataset card, a round's model folder
with a model card, and the upload of either to the Hugging Face Hub.

Run as:
    raft-data export --config pipelines/imdb_positive.yaml --all-rounds --out runs/imdb_positive_dataset
    raft-data export --config pipelines/imdb_positive.yaml --all-rounds --merged --out DIR
    raft-data export --config pipelines/imdb_positive.yaml --round 2 --out DIR --push-to-hub user/imdb-raft
    raft-data export-model --config pipelines/imdb_positive.yaml --round 2 --out DIR

The dataset folder is what `DatasetDict.save_to_disk` writes (one split per round, `round_0`, `round_1`, ..., or one
`train` split with a `selection_round` column), with a README.md whose YAML front matter and body carry the base
model, the reward and its library versions, the selection SQL, the config and its hash, every round's eval and
selection metrics, the decontamination result (when a decontamination artifact exists) and the prompts' license.
Every value is read from the rounds' manifests; every round's files are checked against them first. The folder is
built beside `--out` and renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from raft_data import storage
from raft_data.config import Config, config_hash
from raft_data.errors import BackendError, ConfigError, StageError

# Sections that change no artifact: left out of the experiment's config hash on a card.
NOT_HASHED = ("tracking", "export", "executor")


def experiment_config_hash(cfg: Config) -> str:
    """The hash of the resolved config, without the sections that change no artifact."""
    return config_hash({k: v for k, v in cfg.to_dict().items() if k not in NOT_HASHED})


def _optional(cfg: Config, round_idx: int, stage: str) -> dict[str, Any] | None:
    path = storage.round_dir(cfg, round_idx) / storage.STAGE_FOLDERS[stage] / "manifest.json"
    return storage.read_json(path) if path.exists() else None


def decontamination(selected: dict[str, Any]) -> dict[str, Any] | str:
    """What the round's selection found of its eval texts (`decontam.*` guards: n-gram overlap, near-duplicates),
    from the select manifest; "not checked" when the selection ran without those guards."""
    return selected.get("decontamination") or "not checked"


def round_facts(cfg: Config, round_idx: int) -> dict[str, Any]:
    """What a card says of one round, from its manifests (the selection checked against its files)."""
    selected, _ = storage.read_input(cfg, "select", round_idx)
    generated, scored = _optional(cfg, round_idx, "generate"), _optional(cfg, round_idx, "score")
    evaluated, trained = _optional(cfg, round_idx, "eval"), _optional(cfg, round_idx, "train")
    return {
        "round": round_idx,
        "generator": (generated or {}).get("generator"),
        "reward": (scored or {}).get("reward") or ((scored or {}).get("config") or {}).get("score"),
        "versions": (scored or selected).get("versions") or {},
        "strategy": ((selected.get("config") or {}).get("select") or {}).get("strategy"),
        "sql": (selected.get("config") or {}).get("sql"),
        "select_config_hash": selected.get("config_hash"),
        "selection": {
            "counts": selected.get("counts") or {},
            "reward": selected.get("reward") or {},
            "dropped": selected.get("dropped") or {},
        },
        "eval": (evaluated or {}).get("metrics") or None,
        "train_loss": (trained or {}).get("train_loss"),
        "format": selected.get("format", "prompt_completion"),
        "decontamination": decontamination(selected),
    }


def read_selected(cfg: Config, round_idx: int) -> pa.Table:
    folder = storage.round_dir(cfg, round_idx) / storage.STAGE_FOLDERS["select"]
    return pa.concat_tables([pq.read_table(f) for f in storage.shard_files(folder)])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def metrics_table(facts: list[dict[str, Any]]) -> str:
    """Markdown: one row per round, its selection counts and rewards and its held-out eval."""
    eval_keys = ("reward_sampled", "reward_greedy", "kl_per_token", "perplexity", "distinct_2")
    head = ["round", "samples", "selected", "reward all", "reward selected", *eval_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in facts:
        counts, reward, ev = f["selection"]["counts"], f["selection"]["reward"], f["eval"] or {}
        cells = [f["round"], counts.get("samples"), counts.get("selected"), reward.get("mean_all")]
        cells += [reward.get("mean_selected"), *(ev.get(k) for k in eval_keys)]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).strip()


def dataset_card(cfg: Config, facts: list[dict[str, Any]], splits: dict[str, list[int]]) -> str:
    """README.md of an exported dataset: YAML front matter (Hub metadata and a `raft` block with the facts of every
    round) and a body that says the same for people."""
    sqls = list(dict.fromkeys(f["sql"] for f in facts if f["sql"]))
    rewards = list(dict.fromkeys(_yaml(f["reward"]) for f in facts if f["reward"]))
    versions = facts[-1]["versions"] if facts else {}
    checked = [f["decontamination"] for f in facts]
    header = {
        "license": cfg.export.prompts_license,
        "pretty_name": f"{cfg.experiment.name} (RAFT selected samples)",
        "tags": ["raft", "rejection-sampling", "synthetic"],
        "task_categories": ["text-generation"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"{split}/data-*.arrow"} for split in splits],
            }
        ],
        "raft": {
            "experiment": cfg.experiment.name,
            "config_hash": experiment_config_hash(cfg),
            "base_model": cfg.model.name_or_path,
            "prompts": cfg.prompts.path,
            "prompts_license": cfg.export.prompts_license,
            "splits": splits,
            "rounds": [
                {
                    "round": f["round"],
                    "generator": f["generator"],
                    "strategy": f["strategy"],
                    "select_config_hash": f["select_config_hash"],
                    "selected": f["selection"]["counts"].get("selected"),
                    "samples": f["selection"]["counts"].get("samples"),
                    "mean_reward_selected": f["selection"]["reward"].get("mean_selected"),
                    "mean_reward_all": f["selection"]["reward"].get("mean_all"),
                    "eval": f["eval"],
                    "decontamination": f["decontamination"],
                }
                for f in facts
            ],
            "reward": facts[-1]["reward"] if facts else None,
            "versions": versions,
        },
    }
    decontam = (
        "not checked"
        if all(c == "not checked" for c in checked)
        else "\n".join(f"- round {f['round']}: {_yaml(f['decontamination'])}" for f in facts)
    )
    split_text = ", ".join(f"`{s}`" for s in splits)
    sql_text = "\n\n".join(f"```sql\n{sql.strip()}\n```" for sql in sqls) or "(none recorded)"
    reward_text = "\n\n".join(f"```yaml\n{r}\n```" for r in rewards) or "(none recorded)"
    config = {k: v for k, v in cfg.to_dict().items() if k not in NOT_HASHED}
    return f"""---
{_yaml(header)}
---

# {cfg.experiment.name}: RAFT selected samples

Samples generated by a policy model, scored by a reward and kept by a selection query, round by round, in a RAFT
(reward-ranked fine-tuning) experiment. Splits: {split_text}. Load the folder with
`datasets.load_from_disk(path)`, or from the Hub with `datasets.load_dataset(repo_id)`.

## Model

Base model: `{cfg.model.name_or_path}`. Each round samples from the model it names as its generator:

{chr(10).join(f"- round {f['round']}: `{f['generator']}`" for f in facts)}

## Reward

{reward_text}

Library versions: {", ".join(f"{k} {v}" for k, v in versions.items())}.

## Selection

Strategy: {", ".join(dict.fromkeys(str(f["strategy"]) for f in facts))}. The query, as the rounds ran it:

{sql_text}

## Metrics per round

{metrics_table(facts)}

## Decontamination

{decontam}

## License

Prompts: {cfg.export.prompts_license} (source `{cfg.prompts.path}`). The completions were generated by the model above.

## Config

Hash `{experiment_config_hash(cfg)}` (the resolved config without the sections that change no artifact:
{", ".join(NOT_HASHED)}).

```yaml
{_yaml(config)}
```
"""


def _prepare_out(out: Path, force: bool) -> Path:
    """The temporary folder beside `out` to build in; `out` may exist only when `force` says to replace it."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(f"--out {out} exists and is not empty: choose another folder, or --force to replace it")
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)


def export_dataset(
    cfg: Config, out: Path, rounds: list[int] | None = None, merged: bool = False, force: bool = False
) -> Path:
    """Write the selected sets of `rounds` (None: every round with a finished selection) to `out` as a DatasetDict
    with a dataset card; returns `out`."""
    import datasets

    rounds = storage.rounds_with(cfg, "select") if rounds is None else rounds
    if not rounds:
        raise StageError(
            f"{storage.experiment_dir(cfg)} has no finished selection to export: run `raft-data select --round 0`"
        )
    facts = [round_facts(cfg, r) for r in rounds]  # each round's files checked against its manifest first
    formats = {f["format"] for f in facts}
    if merged and len(formats) > 1:
        raise ConfigError(f"--merged needs one select.format across rounds; rounds {rounds} have {sorted(formats)}")
    tables = {r: read_selected(cfg, r) for r in rounds}
    if merged:
        parts = [t.append_column("selection_round", pa.array([r] * t.num_rows, pa.int32())) for r, t in tables.items()]
        splits = {"train": list(rounds)}
        data = datasets.DatasetDict({"train": datasets.Dataset(pa.concat_tables(parts))})
    else:
        splits = {f"round_{r}": [r] for r in rounds}
        data = datasets.DatasetDict({f"round_{r}": datasets.Dataset(t) for r, t in tables.items()})
    tmp = _prepare_out(out, force)
    try:
        data.save_to_disk(str(tmp))
        storage.write_text(dataset_card(cfg, facts, splits), tmp / "README.md")
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def model_card(cfg: Config, round_idx: int, trained: dict[str, Any], facts: dict[str, Any]) -> str:
    """README.md of an exported model: Hub metadata, and how the round's model was made."""
    header = {
        "license": cfg.export.model_license,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["raft", "rejection-sampling", "trl", "sft"],
        "raft": {
            "experiment": cfg.experiment.name,
            "round": round_idx,
            "config_hash": experiment_config_hash(cfg),
            "train_config_hash": trained.get("config_hash"),
            "base_model": cfg.model.name_or_path,
            "start_model": trained.get("start_model"),
            "train_loss": trained.get("train_loss"),
            "examples": (trained.get("counts") or {}).get("examples"),
            "steps": (trained.get("counts") or {}).get("steps"),
            "reward": facts["reward"],
            "strategy": facts["strategy"],
            "eval": facts["eval"],
            "prompts_license": cfg.export.prompts_license,
            "decontamination": facts["decontamination"],
            "versions": trained.get("versions") or {},
        },
    }
    sft = (trained.get("config") or {}).get("sft") or {}
    return f"""---
{_yaml(header)}
---

# {cfg.experiment.name}, round {round_idx}

Fine-tuned with TRL's SFTTrainer from `{trained.get("start_model")}` on the samples that the `{facts["strategy"]}`
selection kept in round {round_idx} of a RAFT (reward-ranked fine-tuning) experiment whose base model is
`{cfg.model.name_or_path}`. Load it with `transformers.AutoModelForCausalLM.from_pretrained(path)`.

## Training data

{_fmt((trained.get("counts") or {}).get("examples"))} examples, {_fmt((trained.get("counts") or {}).get("steps"))}
steps, final training loss {_fmt(trained.get("train_loss"))}. Reward:

```yaml
{_yaml(facts["reward"])}
```

SFT settings (TRL `SFTConfig` fields set by the experiment):

```yaml
{_yaml(sft) if sft else "{}"}
```

## Held-out evaluation

{metrics_table([facts])}

## Decontamination

{facts["decontamination"] if isinstance(facts["decontamination"], str) else _yaml(facts["decontamination"])}

## License

Model: {cfg.export.model_license}; training prompts: {cfg.export.prompts_license}.
"""


def export_model(cfg: Config, round_idx: int, out: Path, force: bool = False) -> Path:
    """Copy round n's model folder (its files checked against the manifest) to `out` with a model card; `out`."""
    trained, _ = storage.read_input(cfg, "train", round_idx)
    facts = round_facts(cfg, round_idx)
    folder = storage.round_dir(cfg, round_idx) / storage.STAGE_FOLDERS["train"]
    tmp = _prepare_out(out, force)
    try:
        shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("manifest.json", "raft_config.yaml", "README.md"))
        storage.write_json(trained, tmp / "raft_manifest.json")
        storage.write_text(model_card(cfg, round_idx, trained, facts), tmp / "README.md")
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def push_to_hub(folder: Path, repo_id: str, repo_type: str, private: bool = False) -> str:
    """Upload `folder` to the Hub repository `repo_id` (created when missing); returns the commit URL. No token, no
    network, or a refusal by the Hub is a BackendError in one line."""
    import huggingface_hub

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"--push-to-hub {repo_id!r} is invalid: expected owner/name")
    if not huggingface_hub.get_token():
        raise BackendError(
            f"cannot push to {repo_id}: no Hugging Face token (run `hf auth login` or set HF_TOKEN); "
            f"the export is in {folder}"
        )
    api = huggingface_hub.HfApi()
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type=repo_type,
            folder_path=str(folder),
            commit_message=f"Upload {folder.name} from raft-data export",
        )
    except Exception as e:  # the Hub's client raises many kinds (HTTP, connection, offline mode, auth)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise BackendError(
            f"cannot push to {repo_id} ({type(e).__name__}: {first}); the export is in {folder}"
        ) from None
    return str(getattr(info, "commit_url", info))
