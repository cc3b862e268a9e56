"""Top-up: raise generate.max_new_tokens or generate.n_samples, or change generate.stop, on a finished generate stage,
and redo only what the new settings need, as a new pass of the stage instead of starting it over.

Run as:
    raft-data generate --config pipelines/imdb_positive.yaml --round 0 --top-up generate.max_new_tokens=96
    raft-data generate --config pipelines/imdb_positive.yaml --round 0 --top-up generate.n_samples=8
    raft-data generate --config pipelines/imdb_positive.yaml --round 0 --top-up 'generate.stop=[". "]'
    make generate ROUND=0 TOP_UP=1 ARGS="generate.max_new_tokens=96"

What pass p (1, 2, ...) redoes, shard by shard, in place:
  - truncated samples, sampled again from their prompt when max_new_tokens was raised;
  - failed rows (`error` set);
  - samples that ended at a stop string that was removed (they end with it: `ended_on_eos` reads them the same way);
  - new samples of each prompt, sample_idx K_old .. K_new - 1, when n_samples was raised.
Samples that hold an added stop string are cut after it (n_tokens counted again with the tokenizer, no longer
truncated) without sampling. Every other row keeps its values; each row's `pass` says which pass made it, and the
manifest's `passes` lists each pass's settings and what it redid. A pass samples with the seed of (seed, round,
shard, pass) alone, so the same top-up from the same stage ends with the same bytes, and a killed one resumes
(rerun the same command). Downstream stages see new samples and are rebuilt by a plain rerun.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import yaml

from raft_data import storage
from raft_data.backends import BACKENDS
from raft_data.backends.base import Completion
from raft_data.config import Config, config_hash, derived_seed
from raft_data.data.prompts import draw_round_prompts
from raft_data.errors import ConfigError, StageError
from raft_data.models.loading import resolve_device
from raft_data.stages.generate import (
    TOP_UP_FILE,
    changed_fields,
    curriculum_levels,
    finish,
    load_prompt_tokenizer,
    pass_settings,
    sample_each,
    stage_config,
    top_up_args,
    why_not_top_up,
)
from raft_data.storage import schemas
from raft_data.storage.manifests import changed_inputs

REDONE = ("truncated", "failed", "ended_at_removed_stop")  # why a row is sampled again


def pass_seed(seed: int, round_idx: int, shard_idx: int, pass_idx: int) -> int:
    """The sampling seed of a top-up pass of one shard: nothing but (seed, round, shard, pass)."""
    return derived_seed(seed, round_idx, shard_idx, pass_idx)


def stop_end(text: str, stop: list[str]) -> int | None:
    """Where `text` ends when cut after its first stop string (the one that ends earliest), or None."""
    ends = [text.find(s) + len(s) for s in stop if s in text]
    return min(ends) if ends else None


def top_up_rows(
    table: pa.Table,
    old: dict[str, Any],
    new: dict[str, Any],
    sample: Callable[[list[str], int], list[list[Completion]]],
    seed: int,
    pass_idx: int,
    count_tokens: Callable[[str], int],
) -> tuple[pa.Table | None, dict[str, int]]:
    """One shard topped up from settings `old` to `new` (pass_settings dicts): the new table (None when nothing
    changes) and what was done, counted. `sample(texts, seed)` draws one completion per text under the new settings;
    `count_tokens(text)` counts a cut sample's tokens."""
    rows = table.to_pylist()
    upgraded = "pass" not in table.column_names  # written before the column: all rows are the first pass
    for row in rows:
        row.setdefault("pass", 0)
    added = [s for s in new["stop"] if s not in old["stop"]]
    removed = [s for s in old["stop"] if s not in new["stop"]]
    longer = new["max_new_tokens"] > old["max_new_tokens"]
    counts = {why: 0 for why in REDONE} | {"new_samples": 0, "cut_at_added_stop": 0}
    redo: list[int] = []
    for i, row in enumerate(rows):
        if row["source"] != "policy":
            continue
        text = row["completion"]
        if row["error"] is not None:
            why = "failed"
        elif removed and not row["truncated"] and any(text.endswith(s) for s in removed):
            why = "ended_at_removed_stop"
        else:
            end = stop_end(text, new["stop"]) if added else None
            if end is not None and (end < len(text) or row["truncated"]):
                row.update(completion=text[:end], n_tokens=count_tokens(text[:end]), truncated=False)
                row["pass"] = pass_idx
                counts["cut_at_added_stop"] += 1
                continue
            if not (longer and row["truncated"]):
                continue
            why = "truncated"
        redo.append(i)
        counts[why] += 1
    # new sample indices: after each prompt's rows, for every prompt that has policy rows
    by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    fresh: list[dict] = []
    for group in by_prompt.values():
        have = {r["sample_idx"] for r in group if r["source"] == "policy"}
        if not have:
            continue
        template = next(r for r in group if r["source"] == "policy")
        for idx in range(old["n_samples"], new["n_samples"]):
            if idx not in have:
                fresh.append({**template, "sample_idx": idx})
    counts["new_samples"] = len(fresh)
    targets = [rows[i] for i in redo] + fresh
    texts = [r["prompt"] for r in targets]
    drawn = sample_each(texts, sample, seed, 1) if texts else []
    counts["generated_tokens"] = 0
    for row, comps in zip(targets, drawn, strict=True):
        c = comps[0]
        row.update(completion=c.text, n_tokens=c.n_tokens, truncated=c.truncated, error=c.error, seed=seed)
        row["pass"] = pass_idx
        counts["generated_tokens"] += c.n_tokens
    if not targets and not counts["cut_at_added_stop"] and not upgraded:
        return None, counts
    out = []
    for pid, group in by_prompt.items():
        out += group + sorted((r for r in fresh if r["prompt_id"] == pid), key=lambda r: r["sample_idx"])
    return pa.Table.from_pylist(out, schema=schemas.SAMPLES), counts


def top_up(cfg: Config, round_idx: int) -> dict[str, Any]:
    """Top a finished generate stage up to the settings of `cfg` (see the module's docstring); returns the new
    manifest. A change a top-up cannot make is refused with one line that names the field."""
    if cfg.generate.backend not in BACKENDS:
        raise ConfigError(f"generate.backend={cfg.generate.backend!r} is unknown: choose from {', '.join(BACKENDS)}")
    rdir = storage.round_dir(cfg, round_idx)
    folder = rdir / storage.STAGE_FOLDERS["generate"]
    model_path, model_ref = storage.policy_for_round(cfg, round_idx)
    prompts = draw_round_prompts(cfg.prompts, cfg.experiment.seed, round_idx, curriculum_levels(cfg, round_idx))
    tokenizer = load_prompt_tokenizer(model_path, cfg)
    stage_cfg = stage_config(cfg, round_idx, prompts)
    new_hash = config_hash(stage_cfg)
    plan_path, manifest_path = folder / TOP_UP_FILE, folder / "manifest.json"
    with storage.stage_rewrite("generate", rdir, storage.neighbours(cfg, "generate", round_idx)):
        plan = storage.read_json(plan_path) if plan_path.exists() else None
        if plan is None:
            old = storage.read_verified(folder, "generate", round_idx)
            if old.get("config_hash") == new_hash:
                print(f"generate: {folder} already has these settings: nothing to top up")
                return old
            why = why_not_top_up(old.get("config") or {}, stage_cfg)
            if why is not None:
                raise StageError(f"{folder} cannot be topped up: {why} (start it over with --force)")
            if changed_inputs(old.get("inputs"), {"model": model_ref}):
                raise StageError(
                    f"{folder} cannot be topped up: the model it was sampled from changed since; rebuild it with a "
                    f"plain `raft-data generate --round {round_idx}`"
                )
            passes = old.get("passes") or [{"pass": 0, "settings": pass_settings(old["config"]["generate"])}]
            fields = changed_fields(old["config"], stage_cfg)
            plan = {
                "pass": len(passes),
                "from_hash": old["config_hash"],
                "to_hash": new_hash,
                "args": top_up_args(fields, stage_cfg),
                "passes": passes,
                "chat_template": old.get("chat_template"),
                "long_prompts": old.get("long_prompts"),
            }
            # the plan first, then the new config record, then the manifest goes: a kill at any point resumes
            storage.write_json(plan, plan_path)
            record = {"config_hash": new_hash, "config": stage_cfg, "inputs": {"model": model_ref}}
            storage.write_text(yaml.safe_dump(record, sort_keys=False), folder / "raft_config.yaml")
            manifest_path.unlink()
            print(f"generate: topping up {folder} (pass {plan['pass']}): manifest removed, written again when done")
        elif plan["to_hash"] != new_hash:
            raise StageError(
                f"{folder} has an unfinished top-up to other settings: finish it with `raft-data generate --round "
                f"{round_idx} --top-up {plan['args']}`, or start this stage over with --force"
            )
        elif manifest_path.exists() and storage.read_json(manifest_path).get("config_hash") == new_hash:
            plan_path.unlink()  # killed after its manifest was written: the top-up is done
            return storage.read_json(manifest_path)
        else:
            manifest_path.unlink(missing_ok=True)
            print(f"generate: resuming the top-up of {folder} (pass {plan['pass']})")
        started = time.time()
        pass_idx, old_settings = plan["pass"], plan["passes"][-1]["settings"]
        new_settings = pass_settings(cfg.generate.__dict__)
        one = dataclasses.replace(cfg.generate, n_samples=1)
        loaded: dict[str, Any] = {}

        def sample(texts: list[str], seed: int) -> list[list[Completion]]:
            if "fn" not in loaded:  # the model is loaded only when a shard has something to sample
                loaded["fn"] = BACKENDS[cfg.generate.backend](model_path, cfg.model, one)
            return loaded["fn"](texts, seed)

        def count_tokens(text: str) -> int:
            if tokenizer is None:
                raise ConfigError(f"cutting samples at a new stop string needs a tokenizer, and {model_path} has none")
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        def redo(shard_idx: int, table: pa.Table) -> tuple[pa.Table | None, dict[str, int]]:
            seed = pass_seed(cfg.experiment.seed, round_idx, shard_idx, pass_idx)
            return top_up_rows(table, old_settings, new_settings, sample, seed, pass_idx, count_tokens)

        total = len(storage.shard_files(folder))
        run = storage.StageRun(folder, stage_cfg, new_hash, started, done=False, inputs={"model": model_ref})
        on_gpu = cfg.generate.backend == "vllm" or resolve_device(cfg.generate.device) == "cuda"
        tag = {"pass": pass_idx, "to_hash": new_hash}
        infos = storage.rewrite_shards(
            run, "generate", rdir, total, redo, schemas.SAMPLES, tag, f"generate top-up round {round_idx}", on_gpu
        )
        done = {key: sum(info.get(key, 0) for info in infos) for key in (*REDONE, "new_samples", "cut_at_added_stop")}
        n_rows = sum(storage.read_json(storage.marker_path(p))["rows"] for p in storage.shard_files(folder))
        regenerated = {key: done[key] for key in (*REDONE, "new_samples")}
        print(
            f"generate: top-up pass {pass_idx} of round {round_idx}: sampled again {sum(done[k] for k in REDONE)} "
            f"rows ({done['truncated']} truncated, {done['failed']} failed, {done['ended_at_removed_stop']} ended at "
            f"a removed stop), {done['new_samples']} new samples, {done['cut_at_added_stop']} cut at an added stop; "
            f"{n_rows} rows in all"
        )
        this_pass = {
            "pass": pass_idx,
            "settings": new_settings,
            "regenerated": regenerated,
            "cut_at_added_stop": done["cut_at_added_stop"],
            "wall_s": round(time.time() - started, 3),
        }
        manifest = finish(
            run,
            rdir / "prompts.parquet",
            prompts.num_rows,
            plan["chat_template"],
            plan["long_prompts"],
            f"{cfg.generate.backend}:{model_path}",
            cfg,
            round_idx,
            passes=[*plan["passes"], this_pass],
        )
        plan_path.unlink()
        return manifest
