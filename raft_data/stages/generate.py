"""Generate: sample K completions for each of the round's prompts and write them as Parquet shards.

Run as:
    raft-data generate --config pipelines/imdb_positive.yaml --round 0
    raft-data generate --config pipelines/imdb_positive.yaml --round 0 generate.n_samples=8
    raft-data generate --config pipelines/imdb_positive.yaml --round 0 --shard 2 --num-shards 4   # one shard
    raft-data generate --config pipelines/imdb_positive.yaml --round 0 executor.kind=ray_data     # Ray Data

Writes `round-NNNN/prompts.parquet` and `round-NNNN/samples/shard-XXXXX-of-YYYYY.parquet` (one row per sample).
Each shard is redone whole if it has no `.done` marker, so a killed run resumes where it stopped and ends with the
same samples as an uninterrupted run. With `--shard i` a process runs only shard i (a Slurm array task, say); the
process that finishes the last shard writes the manifest, and a plain rerun without `--shard` also finalises.
Besides the policy's K samples a shard holds the candidates of `generate.extra_sources` (files of reference
answers or other models' outputs), each row tagged with its `source`. Under `executor.kind: ray_data` the rows of
all unfinished shards go through Ray Data replicas that hold the model (`on_ray_data`), and come back as the same
shards (docs/scaling.md).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raft_data import storage
from raft_data.backends import BACKENDS, ray_data
from raft_data.backends.base import Completion
from raft_data.config import Config, config_hash, derived_seed, prompts_hashed
from raft_data.data.chat import FormattedPrompts, context_limit, format_prompts
from raft_data.data.prompts import draw_round_prompts, split_record
from raft_data.data.sources import Source, candidates, file_hash, load_source
from raft_data.errors import ConfigError, StageError, UserError
from raft_data.models.loading import load_tokenizer, resolve_device
from raft_data.rewards.loading import correctness
from raft_data.storage import schemas


def shard_seed(seed: int, round_idx: int, shard_idx: int) -> int:
    """A shard's sampling seed depends on nothing but (seed, round, shard)."""
    return derived_seed(seed, round_idx, shard_idx)


def shard_bounds(n_rows: int, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal slices of the prompts; some may be empty when prompts < shards."""
    return [(i * n_rows // n_shards, (i + 1) * n_rows // n_shards) for i in range(n_shards)]


def load_prompt_tokenizer(model_path: str, cfg: Config):
    """The policy's tokenizer, for chat templates, prompt lengths and token counts of imported candidates; None for
    a served model (`openai` backend) whose name is not a local folder."""
    if cfg.generate.backend == "openai" and not (Path(model_path) / "config.json").is_file():
        return None
    return load_tokenizer(model_path, cfg.model)


def generate(
    cfg: Config,
    round_idx: int,
    force: bool = False,
    shard: int | None = None,
    num_shards: int | None = None,
    retry_failed: bool = False,
) -> dict | None:
    """Run the generate stage of one round (or one shard of it); returns the manifest, or None while shards that
    other processes run are unfinished. `retry_failed` samples again only the prompts whose backend call failed
    (their rows carry an `error`), in finished shards too."""
    if cfg.generate.backend not in BACKENDS:
        raise ConfigError(f"generate.backend={cfg.generate.backend!r} is unknown: choose from {', '.join(BACKENDS)}")
    n_shards = cfg.generate.n_shards
    storage.check_shard_args("generate", shard, num_shards, n_shards, force, f"generate.n_shards={n_shards}")
    if cfg.executor.kind == "ray_data" and cfg.generate.backend not in ray_data.RAY_DATA_BACKENDS:
        raise ConfigError(
            f"generate.backend={cfg.generate.backend!r} does not run under ray_data (executor.kind): choose "
            f"{' or '.join(ray_data.RAY_DATA_BACKENDS)}, or executor.kind=ray"
        )
    if n_passes(cfg) > 1 and (shard is not None or cfg.executor.kind != "local"):
        raise ConfigError(
            "generate.adaptive_target runs its passes in one process (each pass needs the one before): run it "
            "without --shard and with executor.kind=local"
        )
    rdir = storage.round_dir(cfg, round_idx)
    folder = rdir / storage.STAGE_FOLDERS["generate"]
    model_path, model_ref = storage.policy_for_round(cfg, round_idx)
    # Everything that can be wrong with the inputs is found here, before the round's folder is touched.
    prompts = draw_round_prompts(cfg.prompts, cfg.experiment.seed, round_idx, curriculum_levels(cfg, round_idx))
    tokenizer = load_prompt_tokenizer(model_path, cfg)
    formatted = prepare(prompts, tokenizer, model_path, cfg)
    sources = [load_source(spec) for spec in cfg.generate.extra_sources]
    if sources and tokenizer is None:
        raise ConfigError(f"generate.extra_sources needs the model's tokenizer, and {model_path} has none")
    for source in sources:  # bad rows stop the stage here, before any shard is written
        for pid, text in zip(prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist(), strict=True):
            candidates(source, pid, text)
    stage_cfg = stage_config(cfg, round_idx, prompts)
    refuse_other_settings(folder, stage_cfg, round_idx, force)
    prompts_path = rdir / "prompts.parquet"

    def write_prompts(run: storage.StageRun) -> None:
        # Every worker draws the same prompts; the first one writes them, the others check them.
        if not prompts_path.exists() or not pq.read_table(prompts_path).equals(prompts):
            storage.write_parquet(prompts, prompts_path, schemas.PROMPTS)

    total = n_shards * n_passes(cfg)  # shards of all passes: pass p holds shards p * n_shards ...
    with storage.sharded_stage(
        "generate",
        folder,
        rdir,
        stage_cfg,
        round_idx,
        force,
        shard,
        total,
        inputs={"model": model_ref},
        neighbours=storage.neighbours(cfg, "generate", round_idx),
        setup=write_prompts,
    ) as run:
        if run.done and not retry_failed:
            return run.manifest
        on_gpu = cfg.generate.backend == "vllm" or resolve_device(cfg.generate.device) == "cuda"
        generator = f"{cfg.generate.backend}:{model_path}"

        def complete() -> dict | None:
            return storage.finish_when_complete(
                run,
                "generate",
                rdir,
                total,
                lambda: finish(
                    run,
                    prompts_path,
                    prompts.num_rows,
                    formatted.chat_template,
                    formatted.report(cfg.generate.long_prompts),
                    generator,
                    cfg,
                    round_idx,
                ),
            )

        if shard is None and cfg.executor.kind == "ray_data":
            shard_inputs = ShardInputs(prompts, formatted, sources, tokenizer, generator, round_idx, cfg)
            on_ray_data(run, rdir, model_path, shard_inputs, on_gpu)
            return complete()
        if shard is None:
            task = functools.partial(storage.shard_task, generate, cfg.to_dict(), round_idx)
            todo = [i for i in range(n_shards) if not storage.shard_done(folder / storage.shard_name(i, total))]
            desc = f"generate round {round_idx}"
            storage.run_elsewhere(cfg.executor, task, todo, desc, storage.experiment_dir(cfg), int(on_gpu))

        pending = [i for i in range(total) if not storage.shard_done(folder / storage.shard_name(i, total))]
        # the backend, loaded once before any progress is drawn (a failure to load is the one line on stderr)
        sample = (
            BACKENDS[cfg.generate.backend](model_path, cfg.model, cfg.generate) if pending or retry_failed else None
        )
        max_failed = cfg.executor.max_failed_fraction
        if retry_failed:
            texts_by_id = dict(zip(prompts["prompt_id"].to_pylist(), formatted.texts, strict=True))

            def redo(shard_idx: int, table: pa.Table, positions: list[int]) -> pa.Table:
                # the failed rows are whole prompts (the backend call of a prompt fails for its K rows at once)
                ids = list(dict.fromkeys(table["prompt_id"][i].as_py() for i in positions))
                seed = shard_seed(cfg.experiment.seed, round_idx, shard_idx)
                again = sample_each([texts_by_id[p] for p in ids], sample, seed, cfg.generate.n_samples)
                fresh = {p: comps for p, comps in zip(ids, again, strict=True)}
                rows = table.to_pydict()
                rows.setdefault("pass", [0] * table.num_rows)  # a shard written before the column
                for i in positions:
                    c = fresh[rows["prompt_id"][i]][rows["sample_idx"][i] % cfg.generate.n_samples]
                    rows["completion"][i], rows["n_tokens"][i], rows["truncated"][i] = c.text, c.n_tokens, c.truncated
                    rows["error"][i] = c.error
                return pa.table(rows, schema=schemas.SAMPLES)

            wanted = range(total) if shard is None else [shard]
            storage.retry_failed(run, "generate", rdir, wanted, total, redo, schemas.SAMPLES, max_failed)

        for pass_idx in range(n_passes(cfg)):
            rows = (
                list(range(prompts.num_rows))
                if pass_idx == 0
                else prompts_needing_more(prompts, folder, n_shards, pass_idx, total, cfg)
            )
            bounds = shard_bounds(len(rows), n_shards)

            def build(shard_idx: int, pass_idx: int = pass_idx, rows: list[int] = rows, bounds=bounds):
                lo, hi = bounds[shard_idx - pass_idx * n_shards]
                take = rows[lo:hi]
                part, texts = prompts.take(pa.array(take, pa.int64())), [formatted.texts[j] for j in take]
                reported: dict[str, int] = {}
                table = run_shard(
                    part,
                    texts,
                    sample,
                    shard_seed(cfg.experiment.seed, round_idx, shard_idx),
                    sources if pass_idx == 0 else [],
                    tokenizer,
                    generator,
                    round_idx,
                    cfg,
                    first_idx=pass_idx * cfg.generate.n_samples,
                    reported=reported,
                )
                return table, token_counts(table, texts, tokenizer, cfg.generate.n_samples) | reported

            wanted = range(n_shards) if shard is None else [shard]
            label = f"generate round {round_idx}" + (f" pass {pass_idx}" if total > n_shards else "")
            ids = [pass_idx * n_shards + i for i in wanted]
            storage.run_shards(
                run, "generate", rdir, ids, total, build, schemas.SAMPLES, label, on_gpu, shard, max_failed
            )

        return complete()


def stage_config(cfg: Config, round_idx: int, prompts: pa.Table) -> dict[str, Any]:
    """What the stage's config hash covers: everything that decides which samples it holds."""
    stage_cfg = {
        "experiment": {"name": cfg.experiment.name, "seed": cfg.experiment.seed},
        "model": cfg.model.__dict__,
        "prompts": prompts_hashed(cfg.prompts),
        # the drawn prompts themselves: an edited prompts file is a new config, never mixed into a resumed round
        "prompts_drawn": config_hash(prompts.to_pydict()),
        "generate": cfg.generate.__dict__,
        "round": round_idx,
    }
    if cfg.generate.extra_sources:  # a changed file is a changed config: its rows must not mix with the old ones
        stage_cfg["extra_source_files"] = {s["name"]: file_hash(s["path"]) for s in cfg.generate.extra_sources}
    return stage_cfg


# What `--top-up` can change on a finished generate stage (docs/rounds.md, stages/top_up.py)
TOP_UP_FIELDS = ("generate.max_new_tokens", "generate.n_samples", "generate.stop")
TOP_UP_FILE = ".top-up.json"  # a top-up under way: its pass and settings; removed when its manifest is written


def flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b": leaf}, the leaves as JSON keeps them (so a manifest's config compares to a new one)."""
    if not prefix:
        data = json.loads(json.dumps(data, default=str))
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out |= flat(value, f"{prefix}.{key}" if prefix else key)
    return out


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The config fields (dotted) whose values differ between two stage configs."""
    a, b = flat(old), flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def top_up_args(fields: list[str], new: dict[str, Any]) -> str:
    """The `--top-up` overrides that take a stage to the new values of `fields`."""
    values = flat(new)
    return " ".join(f"{f}={json.dumps(values[f]) if isinstance(values[f], list) else values[f]}" for f in fields)


def refuse_other_settings(folder: Path, stage_cfg: dict[str, Any], round_idx: int, force: bool) -> None:
    """A finished stage made with other settings, or a top-up under way, is refused here with one line that names
    the fields that differ and what to do: `--top-up` where only what a top-up can change differs, else --force."""
    if force:
        return
    pending = folder / TOP_UP_FILE
    if pending.exists():
        plan = storage.read_json(pending)
        raise StageError(
            f"{folder} has an unfinished top-up (pass {plan['pass']}): finish it with `raft-data generate --round "
            f"{round_idx} --top-up {plan['args']}`, or start this stage over with --force"
        )
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        return
    old = storage.read_json(manifest_path)
    if old.get("config_hash") == config_hash(stage_cfg) or "config" not in old:
        return
    why = why_not_top_up(old["config"], stage_cfg)
    if why is None:
        fields = changed_fields(old["config"], stage_cfg)
        values = flat(old["config"])
        said = ", ".join(f"{f}={json.dumps(values.get(f))}" for f in fields)
        raise StageError(
            f"{folder} was made with {said}: to regenerate only what the new settings need, run `raft-data generate "
            f"--round {round_idx} --top-up {top_up_args(fields, stage_cfg)}` (with your --config), or start this "
            "stage over with --force"
        )
    raise StageError(
        f"{folder} was made with another config ({why}); to start this stage over and drop its old rows, rerun with "
        f"--force (and --round {round_idx}), or set a new experiment.name"
    )


def why_not_top_up(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why a stage made with config `old` cannot be topped up to `new`, in a few words; None when it can."""
    a, b = flat(old), flat(new)
    fields = changed_fields(old, new)
    for f in fields:
        if f not in TOP_UP_FIELDS:
            return (
                f"{f} differs: {json.dumps(a.get(f))}, now {json.dumps(b.get(f))}; only "
                f"{', '.join(TOP_UP_FIELDS)} can be topped up"
            )
    for f in ("generate.max_new_tokens", "generate.n_samples"):
        if f in fields and b[f] < a[f]:
            return f"{f} is lower: {a[f]}, now {b[f]}; a top-up can only raise it"
    if fields and a.get("generate.adaptive_target"):
        return "generate.adaptive_target is set: adaptive sampling's passes cannot be topped up"
    if "generate.n_samples" in fields and a.get("generate.extra_sources"):
        return "generate.extra_sources is set: its rows hold the sample indices a higher generate.n_samples needs"
    return None


def pass_settings(generate_section: dict[str, Any]) -> dict[str, Any]:
    """What a pass of the stage was sampled with, as the manifest's `passes` lists it (a config written before
    stop strings existed had none)."""
    g = generate_section
    return {"max_new_tokens": g["max_new_tokens"], "n_samples": g["n_samples"], "stop": list(g.get("stop") or [])}


@dataclass
class ShardInputs:
    """What every shard of the round is made from, the same in every worker."""

    prompts: pa.Table
    formatted: FormattedPrompts
    sources: list[Source]
    tokenizer: Any
    generator: str
    round_idx: int
    cfg: Config


# the rows sent through Ray Data: one per sample to draw
RAY_DATA_ROWS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),  # as the model reads it
        pa.field("prompt_idx", pa.int32(), nullable=False),  # the prompt's index among its shard's sampled prompts
        pa.field("shard_seed", pa.int64(), nullable=False),
    ]
)


def on_ray_data(run: storage.StageRun, rdir: Path, model_path: str, inputs: ShardInputs, on_gpu: bool) -> None:
    """Every unfinished shard through one Ray Data pipeline (executor.kind=ray_data): one row per sample to draw,
    seeded by (seed, round, shard, prompt, sample index) alone; each shard then built from its rows exactly as
    `run_shard` builds a local one (columns, order, extra sources), and written with its marker."""
    cfg = inputs.cfg
    n_shards, k = cfg.generate.n_shards, cfg.generate.n_samples
    bounds = shard_bounds(inputs.prompts.num_rows, n_shards)

    def shard(i: int) -> tuple[pa.Table, list[str | None], int]:
        lo, hi = bounds[i]
        return (
            inputs.prompts.slice(lo, hi - lo),
            inputs.formatted.texts[lo:hi],
            shard_seed(cfg.experiment.seed, inputs.round_idx, i),
        )

    def rows(i: int) -> pa.Table:
        part, texts, seed = shard(i)
        kept = [(pid, t) for pid, t in zip(part["prompt_id"].to_pylist(), texts, strict=True) if t is not None]
        return pa.table(
            {
                "prompt_id": [pid for pid, _ in kept for _ in range(k)],
                "sample_idx": [s for _ in kept for s in range(k)],
                "prompt": [t for _, t in kept for _ in range(k)],
                "prompt_idx": [j for j in range(len(kept)) for _ in range(k)],
                "shard_seed": [seed] * (len(kept) * k),
            },
            schema=RAY_DATA_ROWS,
        )

    def build(i: int, out: pa.Table) -> tuple[pa.Table, dict]:
        part, texts, seed = shard(i)
        drawn = {
            (pid, idx): Completion(text, n, cut)
            for pid, idx, text, n, cut in zip(*(out[c].to_pylist() for c in ray_data.OUTPUT.names), strict=True)
        }
        ids = [pid for pid, t in zip(part["prompt_id"].to_pylist(), texts, strict=True) if t is not None]

        def sample(_texts: list[str], _seed: int) -> list[list[Completion]]:  # what Ray Data drew, prompt by prompt
            return [[drawn[(pid, idx)] for idx in range(k)] for pid in ids]

        table = run_shard(
            part, texts, sample, seed, inputs.sources, inputs.tokenizer, inputs.generator, inputs.round_idx, cfg
        )
        return table, token_counts(table, texts, inputs.tokenizer, k)

    pipeline = ray_data.generation_pipeline(
        cfg.generate.backend, model_path, cfg.model, cfg.generate, cfg.executor, inputs.tokenizer
    )
    desc = f"generate round {inputs.round_idx}"
    storage.run_dataset(
        run,
        "generate",
        rdir,
        cfg.executor,
        range(n_shards),
        n_shards,
        rows,
        pipeline,
        build,
        schemas.SAMPLES,
        ray_data.OUTPUT,
        desc,
        on_gpu,
    )


def token_counts(table: pa.Table, texts: list[str | None], tokenizer, n_samples: int) -> dict[str, int]:
    """What a shard cost in tokens: generated (the samples' own counts) and prompt tokens (each prompt once per
    sample it was sampled for; not counted for a served model without a local tokenizer)."""
    cost = {"generated_tokens": int(pc.sum(table["n_tokens"]).as_py() or 0)}
    if tokenizer is not None:
        kept = [t for t in texts if t is not None]
        lengths = tokenizer(kept, add_special_tokens=False)["input_ids"] if kept else []
        cost["prompt_tokens"] = sum(len(ids) for ids in lengths) * n_samples
    return cost


def samples_by_pass(folder: Path, cfg: Config) -> list[int]:
    """Rows each pass wrote (one number for uniform sampling)."""
    n_shards, files = cfg.generate.n_shards, storage.shard_files(folder)
    return [
        sum(pq.read_metadata(f).num_rows for f in files[p * n_shards : (p + 1) * n_shards])
        for p in range(n_passes(cfg))
    ]


def curriculum_levels(cfg: Config, round_idx: int) -> list[str] | None:
    """The levels round n draws from under prompts.curriculum_threshold (None: no curriculum): every level up to
    the first whose pass@1, in the last earlier round that sampled it (its score manifest), is below the threshold."""
    p = cfg.prompts
    if p.curriculum_threshold is None:
        return None
    last_pass: dict[str, float] = {}
    for r in range(round_idx):
        scores = storage.round_dir(cfg, r) / storage.STAGE_FOLDERS["score"]
        by_level = (storage.read_manifest(scores, "score", r).get("pass_at_k") or {}).get("by_level") or {}
        last_pass |= {level: m["pass@1"] for level, m in by_level.items()}
    for i, level in enumerate(p.levels):
        if last_pass.get(level, 0.0) < p.curriculum_threshold:
            return p.levels[: i + 1]
    return list(p.levels)


def n_passes(cfg: Config) -> int:
    """1 for uniform sampling; with adaptive sampling the first pass and as many more as the budget allows."""
    g = cfg.generate
    return 1 if g.adaptive_target == 0 else g.adaptive_budget // g.n_samples


def prompts_needing_more(
    prompts: pa.Table, folder: Path, n_shards: int, pass_idx: int, total: int, cfg: Config
) -> list[int]:
    """Rows of `prompts` that pass `pass_idx` samples: fewer than generate.adaptive_target correct samples in the
    passes before it (checked with the `correct` checker of the score section, or the reasoning_gym family's).
    Read back from the finished shards, so a resumed run chooses the same prompts."""
    correct = correctness(cfg.score)
    solved: dict[str, int] = {}
    for shard_idx in range(pass_idx * n_shards):
        path = folder / storage.shard_name(shard_idx, total)
        table = pq.read_table(path, columns=["prompt_id", "completion", "answer", "source"])
        flags = correct([], table["completion"].to_pylist(), table["answer"].to_pylist())
        for pid, ok, source in zip(table["prompt_id"].to_pylist(), flags, table["source"].to_pylist(), strict=True):
            if source == "policy":
                solved[pid] = solved.get(pid, 0) + int(ok)
    target = cfg.generate.adaptive_target
    return [i for i, pid in enumerate(prompts["prompt_id"].to_pylist()) if solved.get(pid, 0) < target]


def prepare(prompts: pa.Table, tokenizer, model_path: str, cfg: Config):
    """The round's prompts as the model sees them (chat template, length rule), the same in every worker."""
    ids, texts = prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist()
    if tokenizer is None:
        if cfg.generate.chat_template or cfg.generate.max_prompt_tokens is not None:
            raise ConfigError(
                f"generate.chat_template and max_prompt_tokens need a tokenizer, and {model_path} has none"
            )
        return FormattedPrompts(list(texts), None, None)
    return format_prompts(ids, texts, tokenizer, cfg.generate, context_limit(model_path, cfg.generate))


def run_shard(
    part: pa.Table,
    texts: list[str | None],
    sample,
    seed: int,
    sources: list[Source],
    tokenizer,
    generator: str,
    round_idx: int,
    cfg: Config,
    first_idx: int = 0,
    reported: dict[str, int] | None = None,
) -> pa.Table:
    """The shard's rows, prompt by prompt: its K policy samples (sample_idx first_idx .. first_idx + K - 1), then
    each extra source's candidates (sample_idx K, K+1, ...), so `sample_idx` is unique per prompt across sources
    (adaptive sampling's later passes, with first_idx = pass x K, carry no extra sources). A skipped prompt (too
    long) has no rows. `reported` gathers the prompt tokens an endpoint reported, where it reports them."""
    keep = [i for i, t in enumerate(texts) if t is not None]
    ids, originals = part["prompt_id"].to_pylist(), part["prompt"].to_pylist()
    answers, levels = part["answer"].to_pylist(), part["level"].to_pylist()
    tasks = part["task"].to_pylist() if "task" in part.column_names else [None] * part.num_rows
    completions = sample_each([texts[i] for i in keep], sample, seed, cfg.generate.n_samples) if keep else []
    rows: dict[str, list] = {name: [] for name in schemas.SAMPLES.names}

    def add(
        i: int, idx: int, text: str, n_tokens: int, truncated: bool, source: str, made_by: str, error=None
    ) -> None:
        for name, value in (
            ("prompt_id", ids[i]),
            ("sample_idx", idx),
            ("prompt", texts[i]),
            ("completion", text),
            ("n_tokens", n_tokens),
            ("truncated", truncated),
            ("source", source),
            ("generator", made_by),
            ("seed", seed),
            ("round", round_idx),
            ("answer", answers[i]),
            ("level", levels[i]),
            ("task", tasks[i]),
            ("error", error),
            ("pass", 0),
        ):
            rows[name].append(value)

    for i, comps in zip(keep, completions, strict=True):
        if reported is not None and comps and comps[0].prompt_tokens is not None:
            reported["api_prompt_tokens"] = reported.get("api_prompt_tokens", 0) + comps[0].prompt_tokens
        for k, c in enumerate(comps):
            add(i, first_idx + k, c.text, c.n_tokens, c.truncated, "policy", generator, c.error)
        idx = first_idx + len(comps)
        for source in sources:
            for text in candidates(source, ids[i], originals[i]):
                n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                add(i, idx, text, n_tokens, False, source.spec["name"], f"file:{source.spec['path']}")
                idx += 1
    return pa.table(rows, schema=schemas.SAMPLES)


def sample_each(texts: list[str], sample, seed: int, n_samples: int) -> list[list[Completion]]:
    """The backend's completions of `texts`. Where the call for the batch fails (not a user error: a prompt the
    model cannot take, an engine that fails on one input), each prompt is asked alone, so one bad prompt costs only
    its own K rows: they say why in `error` and hold no sample."""
    try:
        return sample(texts, seed)
    except UserError:
        raise
    except Exception:
        pass
    out = []
    for j, text in enumerate(texts):
        try:
            out += sample([text], seed + j)
        except UserError:
            raise
        except Exception as e:
            why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
            out.append([Completion("", 0, False, error=why) for _ in range(n_samples)])
    return out


def finish(
    run: storage.StageRun,
    prompts_path: Path,
    n_prompts: int,
    chat_template: Any,
    long_prompts: Any,
    generator: str,
    cfg: Config,
    round_idx: int,
    passes: list[dict[str, Any]] | None = None,
) -> dict:
    """Count what all shards hold and write the manifest (last). `passes`: the settings of each pass that made the
    rows (a `--top-up` adds one); by default the first pass alone, with this config's settings."""
    files = storage.shard_files(run.folder)
    table = pa.concat_tables([pq.read_table(f, columns=["source", "truncated"]) for f in files])
    by_source = table.group_by("source").aggregate([("source", "count")]).to_pylist()
    truncated = pc.sum(table["truncated"]).as_py() or 0
    extra = {
        "generator": generator,
        "samples_by_source": {
            row["source"]: row["source_count"] for row in sorted(by_source, key=lambda r: r["source"])
        },
        "chat_template": chat_template,
        "long_prompts": long_prompts,
        "samples_by_pass": samples_by_pass(run.folder, cfg),
        "passes": passes or [{"pass": 0, "settings": pass_settings(cfg.generate.__dict__)}],
        "cost": storage.shard_costs(run.folder),
        "split": split_record(cfg.prompts),  # the train pool drawn from, checked apart from the held-out set
    }
    inputs = {"prompts": str(prompts_path)}
    inputs.update({f"source:{s['name']}": s["path"] for s in cfg.generate.extra_sources})
    return storage.finish_stage(
        run,
        "generate",
        round_idx,
        inputs=inputs,
        counts={
            "prompts": n_prompts,
            "samples": table.num_rows,
            "truncated": truncated,
            "shards": cfg.generate.n_shards,
            **storage.failed_count(extra["cost"]),
        },
        extra=extra,
    )
