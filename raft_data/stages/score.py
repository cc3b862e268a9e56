"""Score: compute r(x, y) for every sample of a round, one scores shard per samples shard.

Run as:
    raft-data score --config pipelines/imdb_positive.yaml --round 0
    raft-data score --config pipelines/imdb_positive.yaml --round 0 score.reward=vader_completion
    raft-data score --config pipelines/imdb_positive.yaml --round 0 --shard 2 --num-shards 4   # one shard
    raft-data score --config pipelines/imdb_positive.yaml --round 0 executor.kind=ray_data \
        'score.reward=[{model: assets/reward-minilm}]'          # a reward-model actor pool on Ray Data

Writes `round-NNNN/scores/shard-XXXXX-of-YYYYY.parquet`: `prompt_id`, `sample_idx`, `reward` and one column per
reward component (`reward` is their weighted sum). With `score.beta > 0` it also writes `logp` (log p_t(y|x) under
the round's generator), `ref_logp` (log p_0(y|x) under the base model) and `reward_raw` (the weighted sum), and
`reward`, what selection ranks by, is the paper's KL-regularised key `reward_raw - beta * (logp - ref_logp)`.
A non-finite reward stops the stage with the prompt_id and sample_idx that produced it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raft_data import storage
from raft_data.config import Config, ScoreConfig
from raft_data.errors import ConfigError, DataError, UserError, shown
from raft_data.models.loading import resolve_device
from raft_data.models.logprobs import ended_on_eos, load_logprob_fn
from raft_data.rewards.checkers import extractor, pass_metrics
from raft_data.rewards.code import without_majority
from raft_data.rewards.loading import combine, load_routes, reward_values, route_names
from raft_data.storage import schemas

RESCORES = "rescores"  # round-NNNN/rescores/<name>/: the round's samples scored again with another reward
# what scoring reads of a samples shard
SAMPLE_COLUMNS = ["prompt_id", "sample_idx", "prompt", "completion", "truncated", "answer", "task", "error"]


def score(
    cfg: Config,
    round_idx: int,
    force: bool = False,
    shard: int | None = None,
    num_shards: int | None = None,
    retry_failed: bool = False,
    into: str | None = None,
) -> dict | None:
    """Run the score stage of one round (or one shard of it: scores shard i holds the rewards of samples shard i);
    returns the manifest, or None while shards that other processes run are unfinished. `retry_failed` scores
    again only the rows the reward failed on, in finished shards too. `into` (a rescore) writes the scores to
    `round-NNNN/rescores/<into>/` instead, in this process, and leaves `scores/` as it is."""
    rdir = storage.round_dir(cfg, round_idx)
    samples_dir = rdir / storage.STAGE_FOLDERS["generate"]
    samples_manifest, samples_ref = storage.read_input(cfg, "generate", round_idx)
    sample_files = storage.shard_files(samples_dir)
    total = len(sample_files)
    storage.check_shard_args("score", shard, num_shards, total, force, f"the {total} shards of samples/")
    folder = rdir / storage.STAGE_FOLDERS["score"] if into is None else rescore_folder(rdir, into)
    label = "score" if into is None else f"rescore.{into}"  # its locks: a rescore runs beside the others
    kl = cfg.score.beta > 0
    # new score fields enter the hash only when set, so rounds scored before they existed stay valid
    defaults = ScoreConfig()
    score_cfg = {k: v for k, v in cfg.score.__dict__.items() if k in ("reward", "text") or v != getattr(defaults, k)}
    stage_cfg = {"score": score_cfg, "round": round_idx}
    inputs = {"samples": samples_ref}
    if kl:
        generator_path, generator_ref = storage.policy_for_round(cfg, round_idx)
        ref_path = cfg.score.ref_model or cfg.model.name_or_path
        stage_cfg["kl"] = {"ref_model": ref_path}
        inputs["generator"] = generator_ref
    device = resolve_device(cfg.score.device)
    # Load the reward before touching the folder, so a bad reward leaves nothing behind; a finished stage skips it.
    done = not force and not retry_failed and storage.finished(folder, stage_cfg, inputs)
    routes = {} if done else load_routes(cfg.score, device, storage.experiment_dir(cfg))
    # a rescore reads samples/ only: it waits for no stage but this round's generate
    neighbours = storage.neighbours(cfg, "score", round_idx) if into is None else [(rdir, "generate")]
    with storage.sharded_stage(
        label,
        folder,
        rdir,
        stage_cfg,
        round_idx,
        force,
        shard,
        total,
        inputs=inputs,
        neighbours=neighbours,
    ) as run:
        if run.done and not retry_failed:
            return run.manifest
        names = route_names(routes)
        components = [c for task_components in routes.values() for c in task_components]
        schema = routes_schema(routes, kl)
        if into is not None:
            pass  # a rescore scores in this process
        elif shard is None and cfg.executor.kind == "ray_data" and has_reward_model(cfg.score):
            on_ray_data(run, rdir, sample_files, schema, cfg, round_idx, device)
        elif shard is None:
            task = functools.partial(storage.shard_task, score, cfg.to_dict(), round_idx)
            todo = [i for i in range(total) if not storage.shard_done(folder / sample_files[i].name)]
            gpus = int(device == "cuda")
            storage.run_elsewhere(
                cfg.executor, task, todo, f"score round {round_idx}", storage.experiment_dir(cfg), gpus
            )
        models: dict[str, Any] = {}

        def logprob_fns():
            """The generator's and the reference model's log-probability functions, loaded once, when needed."""
            if not models:
                size = cfg.score.batch_size
                models["logp"] = load_logprob_fn(generator_path, cfg.model, device, size)
                # round 0 samples from the base model itself: log p_t = log p_0, one model is enough
                same = ref_path == generator_path
                models["ref"] = models["logp"] if same else load_logprob_fn(ref_path, cfg.model, device, size)
            return models["logp"], models["ref"]

        def build(i: int) -> pa.Table:
            samples = read_samples(sample_files[i])
            before = checker_counts(components)
            fns = kl and logprob_fns()
            table = score_table(samples, routes, cfg, fns, sample_files[i])
            # what a checker could not read or compare (scored 0), for the manifest's counts
            return table, {k: v - before.get(k, 0) for k, v in checker_counts(components).items()}

        wanted = range(total) if shard is None else [shard]
        max_failed = cfg.executor.max_failed_fraction
        if retry_failed:

            def redo(i: int, table: pa.Table, positions: list[int]) -> pa.Table:
                src = sample_files[i]
                names = [c for c in SAMPLE_COLUMNS if c in pq.read_schema(src).names]
                samples = pq.read_table(src, columns=names).take(pa.array(positions, pa.int64()))
                fresh = score_table(samples, routes, cfg, kl and logprob_fns(), src)
                return storage.replace_rows(table, positions, fresh)

            storage.retry_failed(run, label, rdir, wanted, total, redo, schema, max_failed)
        storage.run_shards(
            run,
            label,
            rdir,
            wanted,
            total,
            build,
            schema,
            f"{label} round {round_idx}",
            device == "cuda",
            shard,
            max_failed,
        )

        def finish() -> dict:
            n_rows = sum(pq.read_metadata(f).num_rows for f in storage.shard_files(folder))
            extra: dict = {
                "components": names,
                "reward": [{"name": c.name, "weight": c.weight, **c.info} for c in components],
                "policy_chat_template": policy_template(cfg, round_idx),
                "cost": storage.shard_costs(folder),
            }
            code = next((c.name for c in components if c.info.get("ref") == "code_pass"), None)
            if code is not None and not cfg.score.tasks:  # a program passes when all its tests do
                metrics = round_pass_metrics(samples_dir, folder, cfg.generate.n_samples, code)
                extra["pass_at_k"] = without_majority(metrics)
            elif "correct" in names:
                extra["pass_at_k"] = round_pass_metrics(samples_dir, folder, cfg.generate.n_samples)
            if kl:
                extra["kl"] = {"beta": cfg.score.beta, "generator": generator_path, "ref_model": ref_path}
            if into is not None:
                extra["rescore"] = {"into": into, "beside": storage.STAGE_FOLDERS["score"]}
            counts = {"scores": n_rows, "shards": total, **storage.failed_count(extra["cost"])}
            for key in ("no_answer", "not_comparable"):  # answers a checker could not find or compare: scored 0
                if f"checker_{key}" in extra["cost"]:
                    counts[key] = int(extra["cost"][f"checker_{key}"])
            return storage.finish_stage(run, "score", round_idx, counts=counts, extra=extra)

        return storage.finish_when_complete(run, label, rdir, total, finish)


# A rescore's name: a folder name under round-NNNN/rescores/.
RESCORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def rescore_folder(rdir: Path, into: str) -> Path:
    """Where a rescore named `into` writes: `round-NNNN/rescores/<into>/`."""
    if RESCORE_NAME.fullmatch(into) is None or ".." in into:
        raise ConfigError(f"--into={into!r} is invalid: expected a folder name of letters, digits, _ . - (1-64)")
    return rdir / RESCORES / into


def checker_counts(components: list) -> dict[str, int]:
    """Completions the answer checkers of `components` found no answer in, or could not compare, so far."""
    out: dict[str, int] = {}
    for c in components:
        for key in ("no_answer", "not_comparable"):
            if key in getattr(c.fn, "counts", {}):
                out[f"checker_{key}"] = out.get(f"checker_{key}", 0) + c.fn.counts[key]
    return out


def row_safe_values(name: str, fn, prompts: list, completions: list, row, answers, errors: list) -> list:
    """A component's values for a batch; where the reward raises on the batch, each row alone, so that one bad
    sample costs only its own row: it gets no value (None) and the reason in `errors`. A reward that returns
    something that is not a finite number still stops the stage (that is a broken reward, not a bad row)."""
    try:
        return reward_values(name, fn, prompts, completions, row, answers)
    except DataError as e:
        if not isinstance(e.__cause__, Exception) or isinstance(e.__cause__, UserError):
            raise
    values: list = []
    first: DataError | None = None
    for i in range(len(prompts)):
        one = None if answers is None else [answers[i]]
        try:
            values += reward_values(name, fn, [prompts[i]], [completions[i]], lambda _, i=i: row(i), one)
        except DataError as e:
            if not isinstance(e.__cause__, Exception) or isinstance(e.__cause__, UserError):
                raise
            first = first or e
            errors[i] = errors[i] or str(e)
            values.append(None)
    if first is not None and all(v is None for v in values):
        raise first  # it raises on every row: a broken reward (its own exception is the cause), not bad rows
    return values


def read_samples(src: Path) -> pa.Table:
    return pq.read_table(src, columns=[c for c in SAMPLE_COLUMNS if c in pq.read_schema(src).names])


def has_reward_model(cfg: ScoreConfig) -> bool:
    """A component of the reward is a sequence-classification model (`model:`)."""
    return isinstance(cfg.reward, list) and any(c.get("model") for c in cfg.reward)


class ScoreReplica:
    """One replica of the Ray Data actor pool (executor.kind=ray_data): the reward's components (and, with
    score.beta > 0, the log-probability models) loaded once, then each batch of samples scored as a local shard is:
    every reward here reads one sample at a time, so a row's scores do not depend on its batch."""

    def __init__(self, cfg: dict[str, Any], round_idx: int, device: str, src: str) -> None:
        from raft_data.config import config_from_dict

        self.cfg = config_from_dict(cfg)
        self.routes = load_routes(self.cfg.score, device, storage.experiment_dir(self.cfg))
        self.logprob_fns = None
        if self.cfg.score.beta > 0:
            generator_path, _ = storage.policy_for_round(self.cfg, round_idx)
            ref_path = self.cfg.score.ref_model or self.cfg.model.name_or_path
            size = self.cfg.score.batch_size
            logp = load_logprob_fn(generator_path, self.cfg.model, device, size)
            same = ref_path == generator_path
            self.logprob_fns = (logp, logp if same else load_logprob_fn(ref_path, self.cfg.model, device, size))
        self.src = Path(src)

    def __call__(self, batch: pa.Table) -> pa.Table:
        samples = batch.select([c for c in SAMPLE_COLUMNS if c in batch.column_names])
        table = score_table(samples, self.routes, self.cfg, self.logprob_fns, self.src)
        return table.append_column(storage.SHARD_COLUMN, batch[storage.SHARD_COLUMN])


def on_ray_data(
    run: storage.StageRun,
    rdir: Path,
    sample_files: list[Path],
    schema: pa.Schema,
    cfg: Config,
    round_idx: int,
    device: str,
) -> None:
    """Every unfinished scores shard through one Ray Data actor pool that holds the reward model: the rows of
    samples shard i come back as scores shard i, in the samples' order, with its marker."""
    total = len(sample_files)

    def build(i: int, out: pa.Table) -> tuple[pa.Table, dict]:
        order = pq.read_table(sample_files[i], columns=["prompt_id", "sample_idx"])
        at = {key: j for j, key in enumerate(storage.row_keys(out))}
        return out.take(pa.array([at[key] for key in storage.row_keys(order)], pa.int64())), {}

    src = str(sample_files[0].parent) if sample_files else ""
    kwargs = {"cfg": cfg.to_dict(), "round_idx": round_idx, "device": device, "src": src}
    pipeline = storage.actor_pool(ScoreReplica, kwargs, cfg.executor, int(device == "cuda"))
    storage.run_dataset(
        run,
        "score",
        rdir,
        cfg.executor,
        range(total),
        total,
        lambda i: read_samples(sample_files[i]),
        pipeline,
        build,
        schema,
        schema,
        f"score round {round_idx}",
        device == "cuda",
    )


def routes_schema(routes: dict[str | None, list], kl: bool) -> pa.Schema:
    """The scores shards' schema: every route's component columns, with score.beta the KL columns, and `extracted`
    when a component checks answers."""
    checks = any(c.needs_answers for components in routes.values() for c in components)
    return schemas.scores_schema(route_names(routes) + (["reward_raw", "logp", "ref_logp"] if kl else []), checks)


def score_table(samples: pa.Table, routes: dict[str | None, list], cfg: Config, logprob_fns, src: Path) -> pa.Table:
    """The scores of one samples shard. With score.tasks each row is scored by its task's verifier (`routes`): the
    columns of the other tasks' components are null on it; a task that score.tasks does not list stops the stage."""
    if list(routes) == [None]:
        components = routes[None]
        extract = extractor(cfg.score) if any(c.needs_answers for c in components) else None
        return score_rows(samples, components, cfg, logprob_fns, extract, src)
    tasks = samples["task"].to_pylist() if "task" in samples.column_names else [None] * samples.num_rows
    unknown = next((i for i, t in enumerate(tasks) if t not in routes), None)
    if unknown is not None:
        pid, idx = samples["prompt_id"][unknown].as_py(), samples["sample_idx"][unknown].as_py()
        raise DataError(
            f"{src}: prompt_id={pid} sample_idx={idx} field 'task' is {shown(tasks[unknown])}: score.tasks lists "
            f"{', '.join(map(str, routes))}"
        )
    schema = routes_schema(routes, bool(logprob_fns))
    parts, order = [], []
    for task, components in routes.items():
        rows = [i for i, t in enumerate(tasks) if t == task]
        if not rows:
            continue
        task_score = cfg.score.for_task(task)
        extract = extractor(task_score) if any(c.needs_answers for c in components) else None
        part = score_rows(samples.take(pa.array(rows, pa.int64())), components, cfg, logprob_fns, extract, src)
        have = part.column_names
        parts.append(
            pa.table({f.name: part[f.name] if f.name in have else pa.nulls(part.num_rows, f.type) for f in schema})
        )
        order += rows
    if not parts:
        return schema.empty_table()
    position = [0] * len(order)  # the rows back in the shard's order
    for j, i in enumerate(order):
        position[i] = j
    return pa.concat_tables(parts).take(pa.array(position, pa.int64()))


def score_rows(samples: pa.Table, components: list, cfg: Config, logprob_fns, extract, src: Path) -> pa.Table:
    """The scores of rows that one reward scores: each component's reward, their weighted sum `reward`, with
    `score.beta` the KL-regularised key (and `logp`, `ref_logp`, `reward_raw`), and the extracted answer when a
    checker reads one. A sample that failed to generate is not scored, and a row the reward raises on keeps no
    reward: both say why in `error` and are never selected."""
    failed = samples["error"].to_pylist() if "error" in samples.column_names else [None] * samples.num_rows
    errors: list[str | None] = [f"no sample: {e}" if e is not None else None for e in failed]
    keep = [i for i, e in enumerate(failed) if e is None]
    part = samples.take(pa.array(keep, pa.int64())) if len(keep) < samples.num_rows else samples
    prompts, completions = part["prompt"].to_pylist(), part["completion"].to_pylist()
    answers = part["answer"].to_pylist() if "answer" in part.column_names else None
    ids, idxs = part["prompt_id"].to_pylist(), part["sample_idx"].to_pylist()

    def row(i: int) -> str:
        return f"prompt_id={ids[i]} sample_idx={idxs[i]} in {src}"

    part_errors: list[str | None] = [None] * part.num_rows
    columns: dict[str, list] = {}
    for c in components:
        columns[c.name] = (
            row_safe_values(c.name, c.fn, prompts, completions, row, answers, part_errors) if part.num_rows else []
        )
    ok = [i for i in range(part.num_rows) if part_errors[i] is None]
    reward: list = [None] * part.num_rows
    if ok:
        summed = combine(components, {name: [values[i] for i in ok] for name, values in columns.items()})
        for i, value in zip(ok, summed, strict=True):
            reward[i] = value
    for values in columns.values():  # a row the reward failed on keeps no component value either
        for i in range(part.num_rows):
            if part_errors[i] is not None:
                values[i] = None
    if logprob_fns and ok:
        logp_fn, ref_fn = logprob_fns
        truncated = part["truncated"].to_pylist()
        sel_p, sel_c = [prompts[i] for i in ok], [completions[i] for i in ok]
        ended = [ended_on_eos(completions[i], truncated[i], cfg.generate.stop) for i in ok]
        logp = logp_fn(sel_p, sel_c, ended)
        ref_logp = logp if ref_fn is logp_fn else ref_fn(sel_p, sel_c, ended)
        raw = [reward[i] for i in ok]
        kl_key = [r - cfg.score.beta * (lp - rlp) for r, lp, rlp in zip(raw, logp, ref_logp, strict=True)]
        kl_key = reward_values("reward", lambda p, c, r=kl_key: r, sel_p, sel_c, lambda j: row(ok[j]))
        columns |= {name: [None] * part.num_rows for name in ("reward_raw", "logp", "ref_logp")}
        for j, i in enumerate(ok):
            columns["reward_raw"][i], columns["logp"][i], columns["ref_logp"][i] = raw[j], logp[j], ref_logp[j]
            reward[i] = kl_key[j]
    elif logprob_fns:
        columns |= {name: [None] * part.num_rows for name in ("reward_raw", "logp", "ref_logp")}
    for j, i in enumerate(keep):
        errors[i] = part_errors[j]

    def full(values: list) -> list:  # the part's values back in the shard's rows; failed samples get None
        out: list = [None] * samples.num_rows
        for j, i in enumerate(keep):
            out[i] = values[j]
        return out

    table = pa.table(
        {
            "prompt_id": samples["prompt_id"],
            "sample_idx": samples["sample_idx"],
            "reward": pa.array(full(reward), pa.float64()),
            **{name: pa.array(full(values), pa.float64()) for name, values in columns.items()},
        }
    )
    if extract is not None:
        found = full([extract(c) for c in completions])
        table = table.append_column("extracted", pa.array(found, pa.string()))
    return table.append_column("error", pa.array(errors, pa.string()))


def round_pass_metrics(samples_dir: Path, scores_dir: Path, n_samples: int, column: str = "correct") -> dict:
    """pass@k, maj@k and mixed outcomes of the round's own samples (the policy's first n_samples per prompt: later
    passes of adaptive sampling depend on the first one's outcome), by level too: a sample passes when its
    `column` reward (`correct`, or the `code_pass` component's) is 1."""
    rows = []
    for src in storage.shard_files(samples_dir):
        names = pq.read_schema(src).names
        wanted = ("prompt_id", "sample_idx", "source", "level", "task")
        samples = pq.read_table(src, columns=[c for c in wanted if c in names])
        scored = pq.read_schema(scores_dir / src.name).names
        scores = pq.read_table(scores_dir / src.name, columns=[c for c in (column, "extracted") if c in scored])
        levels = samples["level"].to_pylist() if "level" in names else [None] * samples.num_rows
        tasks = samples["task"].to_pylist() if "task" in names else [None] * samples.num_rows
        found_all = scores["extracted"].to_pylist() if "extracted" in scored else [None] * samples.num_rows
        for pid, idx, source, level, task, ok, found in zip(
            samples["prompt_id"].to_pylist(),
            samples["sample_idx"].to_pylist(),
            samples["source"].to_pylist(),
            levels,
            tasks,
            scores[column].to_pylist(),
            found_all,
            strict=True,
        ):
            if source == "policy" and idx < n_samples:
                row = {"prompt_id": pid, "level": level, "correct": ok == 1.0, "extracted": found}
                rows.append(row | ({"task": task} if task is not None else {}))
    return pass_metrics(rows)


def policy_template(cfg: Config, round_idx: int) -> str | None:
    """The generator's chat template, recorded beside any reward model's own (they may differ)."""
    path, _ = storage.policy_for_round(cfg, round_idx)
    tok_cfg = Path(path) / "tokenizer_config.json"
    template_file = Path(path) / "chat_template.jinja"
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    if tok_cfg.is_file():
        return storage.read_json(tok_cfg).get("chat_template")
    return None
