"""Sweep: named variants of one experiment, each a set of `section.key=value` overrides run as its own experiment
(`<name>_<variant>`), then a frontier page of held-out reward against drift from the base model.

Run as:
    raft-data sweep --config pipelines/imdb_positive.yaml --grid pipelines/sweeps/imdb_small.yaml
    raft-data sweep --config pipelines/imdb_positive.yaml --grid pipelines/sweeps/imdb_small.yaml --no-run
    make sweep GRID=pipelines/sweeps/imdb_small.yaml

A grid file:

    n_rounds: 2
    variants:
      default: []                              # the experiment as it is
      lr3e-5: [sft.learning_rate=3.0e-5]

Every variant runs rounds 0..n_rounds-1 through the rounds loop (handed in by the command line, with the SFT
stage). Finished stages are skipped, so rerunning the command continues where it stopped. A variant whose
baseline eval would measure exactly what another variant's did (the same config hash) gets a copy of it instead
of evaluating the base model again.

The page, in `<output_root>/<name>_sweep/` (or --out): `frontier.png` and `index.html` plot held-out reward
(sampled) against KL per token and against the perplexity ratio to the base model, one point per round per
variant (and the base model), the Pareto front (most reward for least drift) ringed; `variants.md` is the table of
variants.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raft_data import storage
from raft_data.config import Config, config_hash, load_config, parse_override, read_text_file, read_yaml
from raft_data.errors import ConfigError, StageError, shown
from raft_data.stages.evaluate import baseline_model_id, eval_stage_config

# `run(cfg, n_rounds)`: the rounds loop with its SFT stage, handed in by the command line
RunFn = Callable[[Config, int], Any]

# a variant's experiment is <name>_<variant>: a folder name, within experiment.name's limit of 128 bytes
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# (title, metrics key) of the two drift measures the frontier plots reward against
DRIFTS = [("KL per token (nats)", "kl_per_token"), ("perplexity / base model's", "ppl_ratio")]

# ---------------------------------------------------------------------------------------------------------------------
# The grid


@dataclass
class SweepGrid:
    # rounds 0..n_rounds-1 of every variant
    n_rounds: int
    # variant name -> its `section.key=value` overrides, applied after the command line's
    variants: dict[str, list[str]]
    # where the grid came from, for error messages
    source: str = "grid"

    def __post_init__(self) -> None:
        where = self.source
        if isinstance(self.n_rounds, bool) or not isinstance(self.n_rounds, int) or self.n_rounds < 1:
            raise ConfigError(f"{where}: n_rounds={shown(self.n_rounds)} is invalid: expected an integer >= 1")
        if not isinstance(self.variants, dict) or not self.variants:
            raise ConfigError(
                f"{where}: variants={shown(self.variants)} is invalid: expected a mapping name -> overrides"
            )
        for name, overrides in self.variants.items():
            if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
                raise ConfigError(
                    f"{where}: variant name {shown(name)} is invalid: expected 1 to 64 letters, digits, '_', '.', '-'"
                )
            if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
                raise ConfigError(
                    f"{where}: variants.{name}={shown(overrides)} is invalid: expected a list of section.key=value"
                )
            for text in overrides:
                (section, key), _ = parse_override(text)
                if (section, key) == ("experiment", "name"):
                    raise ConfigError(
                        f"{where}: variants.{name} sets {text!r}: the sweep names each variant's experiment itself"
                    )


def load_grid(path: Path) -> SweepGrid:
    """Read and check a grid file (keys `n_rounds` and `variants`)."""
    text = read_text_file(path, "grid file")
    try:
        data = read_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"grid file {path} is not valid YAML text: {str(e).splitlines()[0]}") from None
    except ConfigError as e:
        raise ConfigError(f"grid file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"grid file {path} must hold a mapping with n_rounds and variants")
    unknown = sorted(set(data) - {"n_rounds", "variants"})
    if unknown:
        raise ConfigError(f"grid file {path}: unknown key {unknown[0]!r}: keys are n_rounds, variants")
    variants = data.get("variants")
    if isinstance(variants, dict):  # `name:` with nothing after it is a variant without overrides
        variants = {name: [] if overrides is None else overrides for name, overrides in variants.items()}
    return SweepGrid(n_rounds=data.get("n_rounds", 1), variants=variants, source=f"grid file {path}")


def variant_configs(config_path: str, overrides: list[str], grid: SweepGrid) -> dict[str, Config]:
    """Each variant's config: defaults < YAML < command-line overrides < the variant's, named `<name>_<variant>`.
    All are built (and checked) before anything runs."""
    base = load_config(config_path, overrides).experiment.name
    out = {}
    for name, extra in grid.variants.items():
        try:
            cfg = load_config(config_path, [*overrides, *extra])
            named = dataclasses.replace(cfg.experiment, name=f"{base}_{name}")
        except ConfigError as e:
            raise ConfigError(f"{grid.source}: variant {name}: {e}") from None
        out[name] = dataclasses.replace(cfg, experiment=named)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Running


def share_baseline(cfg: Config, others: list[Config]) -> Path | None:
    """Copy the first finished baseline eval among `others` whose config hash is the one `cfg`'s baseline would
    have (the hash covers every setting the baseline depends on, not the experiment's name) into `cfg`'s
    experiment; returns the folder copied, or None when `cfg` has its own or none matches."""
    dest = storage.baseline_dir(cfg)
    want = config_hash(eval_stage_config(cfg, baseline_model_id(cfg), None))
    with storage.stage_lock(dest.parent, "eval"):
        if (dest / "manifest.json").exists():
            return None
        for other in others:
            src = storage.baseline_dir(other)
            if src == dest or not (src / "manifest.json").exists():
                continue
            if storage.read_json(src / "manifest.json").get("config_hash") != want:
                continue
            tmp = storage.tmp_folder(dest)
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            storage.publish_folder(dest)
            return src
    return None


def run_sweep(configs: dict[str, Config], n_rounds: int, run: RunFn) -> None:
    """Run every variant's rounds in grid order (finished stages skip themselves), sharing baselines."""
    done: list[Config] = []
    for i, (name, cfg) in enumerate(configs.items()):
        print(f"sweep: variant {name} ({i + 1}/{len(configs)}) -> {storage.experiment_dir(cfg)}", flush=True)
        shared = share_baseline(cfg, done)
        if shared is not None:
            print(f"sweep: baseline eval copied from {shared}")
        run(cfg, n_rounds)
        done.append(cfg)


# ---------------------------------------------------------------------------------------------------------------------
# The frontier


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For each (reward, drift) point, whether it is on the Pareto front of maximising reward and minimising drift:
    no other point has reward >= and drift <= with one of them strict. Equal points are both on it or both off."""

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])

    return [not any(dominates(q, p) for q in points) for p in points]


def frontier_points(configs: dict[str, Config]) -> list[dict[str, Any]]:
    """One row per finished eval: the base model once per distinct baseline (label `base`), then each variant's
    rounds in order (label: the round index); each row is {variant, label, metrics}."""
    points: list[dict[str, Any]] = []
    baselines: set[str] = set()
    for name, cfg in configs.items():
        base = storage.baseline_dir(cfg) / "manifest.json"
        if base.exists():
            manifest = storage.read_json(base)
            if manifest.get("config_hash") not in baselines:
                baselines.add(manifest.get("config_hash"))
                variant = "base model" if len(baselines) == 1 else f"base model ({name})"
                points.append({"variant": variant, "label": "base", "metrics": manifest.get("metrics") or {}})
        for rdir in sorted(storage.experiment_dir(cfg).glob("round-[0-9][0-9][0-9][0-9]")):
            path = rdir / storage.STAGE_FOLDERS["eval"] / "manifest.json"
            if path.exists():
                label = str(int(rdir.name.split("-")[1]))
                points.append(
                    {"variant": name, "label": label, "metrics": storage.read_json(path).get("metrics") or {}}
                )
    return points


def mark_fronts(points: list[dict[str, Any]]) -> None:
    """Set `front_<drift>` on each point: True on that drift's Pareto front, False off it, None when the point
    lacks the reward or the drift measure."""
    for _, key in DRIFTS:
        known = [
            p for p in points if p["metrics"].get("reward_sampled") is not None and p["metrics"].get(key) is not None
        ]
        marks = pareto_front([(p["metrics"]["reward_sampled"], p["metrics"][key]) for p in known])
        for p in points:
            p[f"front_{key}"] = None
        for p, on in zip(known, marks, strict=True):
            p[f"front_{key}"] = on


def _fmt(value: Any, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


# (column title, metrics key, format) of the variants table: the variant's latest finished round
VARIANT_COLUMNS = [
    ("held-out reward", "reward_sampled", "{:.3f}"),
    ("second reward", "second_reward_sampled", "{:.3f}"),
    ("KL/token", "kl_per_token", "{:.3f}"),
    ("ppl ratio", "ppl_ratio", "{:.2f}"),
    ("entropy/token", "entropy", "{:.2f}"),
    ("distinct-2", "distinct_2", "{:.3f}"),
    ("truncated", "truncation_rate", "{:.2f}"),
]


def variant_rows(grid: SweepGrid, points: list[dict[str, Any]]) -> list[list[str]]:
    """One row per variant (the base model first): its overrides, rounds evaluated, its latest round's metrics,
    and which of its rounds are on each front."""
    rows = []
    for base in [p for p in points if p["label"] == "base"]:
        fronts = ["base" if base.get(f"front_{k}") else "" for _, k in DRIFTS]
        rows.append(
            [base["variant"], "", "", *(_fmt(base["metrics"].get(k), f) for _, k, f in VARIANT_COLUMNS), *fronts]
        )
    for name, overrides in grid.variants.items():
        mine = [p for p in points if p["variant"] == name]
        latest = mine[-1]["metrics"] if mine else {}
        fronts = [", ".join(p["label"] for p in mine if p.get(f"front_{k}")) for _, k in DRIFTS]
        cells = [_fmt(latest.get(k), f) for _, k, f in VARIANT_COLUMNS]
        rows.append([name, " ".join(overrides) or "(none)", str(len(mine)), *cells, *fronts])
    return rows


def variants_header() -> list[str]:
    metric_titles = [f"{t} (last round)" if i == 0 else t for i, (t, _, _) in enumerate(VARIANT_COLUMNS)]
    return ["variant", "overrides", "rounds", *metric_titles, *(f"front: {t.split(' (')[0]}" for t, _ in DRIFTS)]


def variants_markdown(grid: SweepGrid, points: list[dict[str, Any]]) -> str:
    header = variants_header()
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in variant_rows(grid, points)]
    return "\n".join(lines)


def plot_frontier(points: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    variants = list(dict.fromkeys(p["variant"] for p in points))
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    for ax, (title, key) in zip(axes, DRIFTS, strict=True):
        front = []
        for variant in variants:
            mine = [p for p in points if p["variant"] == variant and p[f"front_{key}"] is not None]
            if not mine:
                continue
            xs = [p["metrics"][key] for p in mine]
            ys = [p["metrics"]["reward_sampled"] for p in mine]
            is_base = mine[0]["label"] == "base"
            ax.plot(
                xs, ys, "*" if is_base else "o-", color=colors[variant], label=variant, markersize=10 if is_base else 6
            )
            for p, x, y in zip(mine, xs, ys, strict=True):
                ax.annotate(p["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            front += [(x, y) for p, x, y in zip(mine, xs, ys, strict=True) if p[f"front_{key}"]]
        if front:
            front.sort()
            ax.plot([x for x, _ in front], [y for _, y in front], ":", color="black", linewidth=1)
            ax.scatter(
                [x for x, _ in front],
                [y for _, y in front],
                s=180,
                facecolors="none",
                edgecolors="black",
                label="Pareto front",
            )
        ax.set_xlabel(f"{title} (lower: closer to the base model)")
        ax.set_ylabel("held-out reward (sampled)")
        ax.set_title(f"Held-out reward against {title}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; vertical-align: top; }
th { background: #f0f0f0; }
img { max-width: 100%; }
.muted { color: #777; }
"""


def write_frontier(base_name: str, grid: SweepGrid, configs: dict[str, Config], out_dir: Path) -> Path:
    """Write `frontier.png`, `index.html` and `variants.md` to `out_dir` from every finished eval of the variants;
    returns the HTML path."""
    points = frontier_points(configs)
    if not any(p["label"] != "base" for p in points):
        raise StageError(f"no variant of {grid.source} has a finished round yet: run the sweep first")
    mark_fronts(points)
    png = plot_frontier(points)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "frontier.png").write_bytes(png)
    markdown = variants_markdown(grid, points)
    storage.write_text(markdown + "\n", out_dir / "variants.md")
    head = "".join(f"<th>{html.escape(t)}</th>" for t in variants_header())
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in variant_rows(grid, points)
    )
    title = f"RAFT sweep: {base_name}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="muted">{html.escape(grid.source)}: {len(grid.variants)} variants, {grid.n_rounds} round(s) each. One point
per evaluated round of each variant (the star is the base model); held-out reward is the mean reward of sampled
completions on held-out prompts. KL per token is the Monte-Carlo KL estimate to the base model over the sampled
completions' tokens; the perplexity ratio is held-out reference text's perplexity over the base model's. Ringed
points are the Pareto front: no other point has more reward for no more drift.</p>
<img alt="held-out reward against drift" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Variants</h2>
<table><tr>{head}</tr>{body}</table>
</body></html>
"""
    storage.write_text(page, out_dir / "index.html")
    return out_dir / "index.html"
