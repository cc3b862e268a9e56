"""Report: one self-contained HTML page (plots embedded as PNG) of every evaluated round of an experiment.

Run as:
    raft-data report --config pipelines/imdb_positive.yaml                 # -> runs/imdb_positive/report/index.html
    raft-data report --config pipelines/imdb_positive.yaml --compare imdb_positive_k1 imdb_positive_k2 \\
        --out runs/ablation_k                                              # held-out reward of several experiments
    make report

The page opens from disk (the PNGs are embedded as base64 and also written beside it). It shows the per-round
metrics table, the reward per round (held-out greedy and sampled, all samples, best-of-K, selected), reward
histograms per round, perplexity (and its ratio to the base model's), diversity, KL per sequence and per token,
entropy per token and length per round, the rounds flagged for possible reward hacking, example held-out prompts
with the base model's and the latest model's completions, and the latest round's kept and rejected samples.
The per-round table is also printed as Markdown.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raft_data import storage
from raft_data.config import Config
from raft_data.errors import StageError
from raft_data.selection.engine import METRICS_DIR
from raft_data.stages.select import decontam_line
from raft_data.storage import baseline_dir, read_eval, round_wall_time

# (column title, metrics key, format) of the per-round table
TABLE_COLUMNS = [
    ("held-out reward", "reward_sampled", "{:.3f}"),
    ("± s.e.", "reward_sampled_se", "{:.3f}"),
    ("greedy", "reward_greedy", "{:.3f}"),
    ("second reward", "second_reward_sampled", "{:.3f}"),
    ("all samples", "reward_all", "{:.3f}"),
    ("best-of-K", "reward_best_of_k", "{:.3f}"),
    ("selected", "reward_selected", "{:.3f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("ppl ratio", "ppl_ratio", "{:.2f}"),
    ("distinct-1", "distinct_1", "{:.3f}"),
    ("distinct-2", "distinct_2", "{:.3f}"),
    ("MSTTR", "msttr", "{:.3f}"),
    ("KL/seq", "kl", "{:.2f}"),
    ("KL/token", "kl_per_token", "{:.3f}"),
    ("entropy/token", "entropy", "{:.2f}"),
    ("tokens", "mean_tokens", "{:.1f}"),
    ("truncated", "truncation_rate", "{:.2f}"),
    ("wall s", "wall_time_s", "{:.0f}"),
]

# A round is flagged when its perplexity of held-out reference text is more than this many times the base model's.
PPL_RATIO_FLAG = 1.3
NOISE_SE = 2.0  # a move between two rounds counts when larger than this many standard errors (both combined)

# ---------------------------------------------------------------------------------------------------------------------
# Reading an experiment


def collect(cfg: Config) -> list[dict[str, Any]]:
    """One row per evaluation, baseline first, then every round whose eval is finished, in round order."""
    rows = []
    base = read_eval(baseline_dir(cfg))
    if base is not None:
        rows.append(
            {"label": "base", "round": None, "metrics": base[0]["metrics"] | {"wall_time_s": None}, "eval": base[1]}
        )
    for rdir in sorted(storage.experiment_dir(cfg).glob("round-[0-9][0-9][0-9][0-9]")):
        found = read_eval(rdir / storage.STAGE_FOLDERS["eval"])
        if found is None:
            continue
        round_idx = int(rdir.name.split("-")[1])
        metrics = found[0]["metrics"] | {"wall_time_s": round_wall_time(cfg, round_idx)}
        rows.append({"label": str(round_idx), "round": round_idx, "metrics": metrics, "eval": found[1], "dir": rdir})
    return rows


def round_samples(rdir: Path, n_prompts: int) -> pa.Table:
    """The samples of a round's first `n_prompts` prompts (by prompt_id), with their rewards and whether selection
    kept them. Only those rows leave DuckDB, so the cost does not grow with the round beyond one scan."""
    import duckdb

    con = duckdb.connect()
    for view, stage in (("raw_samples", "generate"), ("raw_scores", "score"), ("raw_selected", "select")):
        con.read_parquet([str(p) for p in storage.shard_files(rdir / storage.STAGE_FOLDERS[stage])]).create_view(view)
    sql = (METRICS_DIR / "kept_and_rejected.sql").read_text(encoding="utf-8")
    return con.sql(sql, params={"n_prompts": n_prompts}).to_arrow_table()


# ---------------------------------------------------------------------------------------------------------------------
# Reward-hacking flags: plain functions of the metric rows


def _moves(before: dict[str, Any], after: dict[str, Any], keys: tuple[str, ...], up: bool) -> list[str]:
    """`key a -> b` for each of `keys` known on both sides that rose (`up`) or fell. Where both sides also hold
    `key_se` (eval's standard errors over held-out prompts), a move counts only when it is larger than
    NOISE_SE times the two combined: a seed's noise is not a flag."""
    out = []
    for key in keys:
        a, b = before.get(key), after.get(key)
        if a is None or b is None:
            continue
        se_a, se_b = before.get(f"{key}_se"), after.get(f"{key}_se")
        margin = NOISE_SE * math.hypot(se_a, se_b) if se_a is not None and se_b is not None else 0.0
        if (b - a if up else a - b) > margin:
            out.append(f"{key} {a:.3f} -> {b:.3f}" + (f" (beyond noise, {margin:.3f})" if margin else ""))
    return out


def hacking_flags(rows: list[dict[str, Any]], ppl_ratio_max: float = PPL_RATIO_FLAG) -> list[tuple[str, str]]:
    """(round label, reasons) for each round that looks like reward hacking, in round order:

    - its training reward (reward_all or reward_selected) rose over the round before while the held-out second
      reward (second_reward_sampled) or distinct-2 fell by more than its noise (`_moves`): the reward is bought with
      something it does not see;
    - its ppl_ratio is above `ppl_ratio_max`: the model drifted from human text.

    `rows` are `collect`'s (baseline first); only rounds are flagged, each compared with the row before it, and a
    comparison is skipped when either side lacks the number."""
    flags = []
    for before, row in zip([None, *rows[:-1]], rows, strict=True):
        if row.get("round") is None:
            continue
        m = row["metrics"]
        reasons = []
        if before is not None:
            rose = _moves(before["metrics"], m, ("reward_all", "reward_selected"), up=True)
            fell = _moves(before["metrics"], m, ("second_reward_sampled", "distinct_2"), up=False)
            if rose and fell:
                reasons.append(f"training reward rose ({', '.join(rose)}) while {', '.join(fell)}")
        ratio = m.get("ppl_ratio")
        if ratio is not None and ratio > ppl_ratio_max:
            reasons.append(f"ppl_ratio {ratio:.2f} > {ppl_ratio_max:g}")
        if reasons:
            flags.append((row["label"], "; ".join(reasons)))
    return flags


def flags_html(flags: list[tuple[str, str]]) -> str:
    if not flags:
        return "<p>No round flagged.</p>"
    items = "".join(f"<li>round {html.escape(label)}: {html.escape(reason)}</li>" for label, reason in flags)
    return f"<ul>{items}</ul>"


# ---------------------------------------------------------------------------------------------------------------------
# Plots


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """x positions (0 = base, n + 1 = round n) and values of rows where `key` is known."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        value = row["metrics"].get(key)
        if value is not None:
            xs.append(i)
            ys.append(value)
    return xs, ys


def _round_axis(ax, rows: list[dict[str, Any]]) -> None:
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows])
    ax.set_xlabel("round (base = the base model)")
    ax.grid(alpha=0.3)


def plot_rewards(rows: list[dict[str, Any]]) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in (
        ("reward_sampled", "held-out, sampled", "o-"),
        ("reward_greedy", "held-out, greedy", "s-"),
        ("second_reward_sampled", "held-out, second reward", "x:"),
        ("reward_all", "round data: all samples", "^--"),
        ("reward_best_of_k", "round data: best-of-K", "v--"),
        ("reward_selected", "round data: selected", "d--"),
    ):
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, style, label=label)
    _round_axis(ax, rows)
    ax.set_ylabel("mean reward")
    ax.set_title("Reward per round")
    ax.legend(fontsize=8, loc="best")
    return _figure_png(fig)


def plot_histograms(rows: list[dict[str, Any]]) -> bytes:
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(rows)
    cols = min(n, 4)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.6 * ((n + cols - 1) // cols)))
    axes = np.atleast_1d(axes).ravel()
    bins = np.linspace(-1, 1, 21)
    for ax, row in zip(axes, rows, strict=False):
        held = [
            r
            for r, k in zip(row["eval"]["reward"].to_pylist(), row["eval"]["kind"].to_pylist(), strict=True)
            if k == "sampled"
        ]
        lo, hi = min([*held, -1.0]), max([*held, 1.0])
        edges = bins if (lo >= -1 and hi <= 1) else np.linspace(lo, hi, 21)
        ax.hist(held, bins=edges, alpha=0.6, density=True, label="held-out, sampled")
        if row.get("dir") is not None:
            files = storage.shard_files(row["dir"] / storage.STAGE_FOLDERS["score"])
            rewards = pa.chunked_array([pq.read_table(f, columns=["reward"])["reward"] for f in files], pa.float64())
            scores = pc.drop_null(rewards).to_numpy()  # rows a reward failed on have none
            ax.hist(scores, bins=edges, histtype="step", density=True, label="round samples")
        ax.set_title(f"round {row['label']}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[n:]:
        ax.axis("off")
    axes[n - 1].legend(fontsize=7)
    fig.suptitle("Reward histograms per round")
    fig.tight_layout()
    return _figure_png(fig)


def plot_quality(rows: list[dict[str, Any]]) -> bytes:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6))
    panels = [
        ("Perplexity of held-out reference text", [("perplexity", "perplexity")]),
        ("Perplexity / the base model's", [("ppl_ratio", "ppl ratio")]),
        (
            "Diversity of sampled completions",
            [("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"), ("msttr", "MSTTR")],
        ),
        ("KL to the base model per sequence (nats)", [("kl", "mean log p - log p_base")]),
        ("KL per completion token (nats); entropy per token", [("kl_per_token", "KL per token")]),
        ("Length of sampled completions", [("mean_tokens", "mean tokens")]),
    ]
    for ax, (title, series) in zip(axes.ravel(), panels, strict=True):
        for key, label in series:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, "o-", label=label)
        _round_axis(ax, rows)
        ax.set_title(title, fontsize=10)
        if len(series) > 1:
            ax.legend(fontsize=8)
    axes[0, 1].axhline(PPL_RATIO_FLAG, color="tab:red", linestyle=":", linewidth=1)
    xs, ys = _series(rows, "entropy")
    if xs:  # the entropy of the next-token distribution is many times the KL per token: its own axis
        twin = axes[1, 1].twinx()
        twin.plot(xs, ys, "s--", color="tab:green")
        twin.set_ylabel("entropy per token (nats)", color="tab:green")
        twin.ticklabel_format(axis="y", useOffset=False)
    xs, ys = _series(rows, "truncation_rate")
    if xs:
        twin = axes[1, 2].twinx()
        twin.plot(xs, ys, "s--", color="tab:red", label="truncation rate")
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("truncation rate", color="tab:red")
    fig.tight_layout()
    return _figure_png(fig)


# ---------------------------------------------------------------------------------------------------------------------
# HTML


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.kept td { background: #e7f6e7; }
img { max-width: 100%; }
.muted { color: #777; }
"""


def _fmt(value: Any, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def metrics_markdown(rows: list[dict[str, Any]]) -> str:
    """The per-round table as Markdown (for a terminal or a README)."""
    head = "| round | " + " | ".join(t for t, _, _ in TABLE_COLUMNS) + " |"
    sep = "|---" * (len(TABLE_COLUMNS) + 1) + "|"
    body = [
        f"| {r['label']} | " + " | ".join(_fmt(r["metrics"].get(k), f) for _, k, f in TABLE_COLUMNS) + " |"
        for r in rows
    ]
    return "\n".join([head, sep, *body])


def metrics_html(rows: list[dict[str, Any]]) -> str:
    head = "<tr><th>round</th>" + "".join(f"<th>{html.escape(t)}</th>" for t, _, _ in TABLE_COLUMNS) + "</tr>"
    body = "".join(
        f"<tr><td>{r['label']}</td>"
        + "".join(f'<td class="num">{_fmt(r["metrics"].get(k), f)}</td>' for _, k, f in TABLE_COLUMNS)
        + "</tr>"
        for r in rows
    )
    return f"<table>{head}{body}</table>"


def examples_html(rows: list[dict[str, Any]], n: int) -> str:
    """Held-out prompts with the greedy completion of the base model and of the latest model."""
    first, last = rows[0], rows[-1]

    def greedy(table: pa.Table) -> dict[str, tuple[str, float]]:
        t = table.filter(pc.equal(table["kind"], "greedy")).to_pylist()
        return {r["prompt_id"]: (r["prompt"], r["completion"], r["reward"]) for r in t}

    a, b = greedy(first["eval"]), greedy(last["eval"])
    out = [
        f"<tr><th>prompt</th><th>round {html.escape(first['label'])}</th><th>reward</th>"
        f"<th>round {html.escape(last['label'])}</th><th>reward</th></tr>"
    ]
    for pid in list(a)[:n]:
        prompt, ca, ra = a[pid]
        _, cb, rb = b.get(pid, (prompt, "", None))
        out.append(
            f"<tr><td>{html.escape(prompt)}</td><td>{html.escape(ca)}</td><td class='num'>{ra:.3f}</td>"
            f"<td>{html.escape(cb)}</td><td class='num'>{_fmt(rb, '{:.3f}')}</td></tr>"
        )
    return "<table>" + "".join(out) + "</table>"


def kept_rejected_html(samples: pa.Table, n_prompts: int) -> str:
    """The latest round's samples for a few prompts: the kept one highlighted, the rejected ones below it."""
    rows = samples.to_pylist()
    prompt_ids = list(dict.fromkeys(r["prompt_id"] for r in rows))[:n_prompts]
    out = ["<tr><th>prompt</th><th>sample</th><th>completion</th><th>reward</th><th></th></tr>"]
    for pid in prompt_ids:
        group = [r for r in rows if r["prompt_id"] == pid]
        for j, r in enumerate(group):
            prompt = f"<td rowspan='{len(group)}'>{html.escape(r['prompt'])}</td>" if j == 0 else ""
            out.append(
                f"<tr class='{'kept' if r['kept'] else 'rejected'}'>{prompt}<td class='num'>{r['sample_idx']}</td>"
                f"<td>{html.escape(r['completion'])}</td><td class='num'>{r['reward']:.3f}</td>"
                f"<td>{'kept' if r['kept'] else 'rejected'}</td></tr>"
            )
    return "<table>" + "".join(out) + "</table>"


def cost_html(cfg: Config, rows: list[dict[str, Any]]) -> str:
    """One row per round: what it cost in seconds and tokens, per selected sample, and its acceptance rate."""
    head = "<tr><th>round</th><th>selected</th><th>seconds</th><th>tokens</th><th>s / selected</th>"
    head += "<th>tokens / selected</th><th>acceptance</th></tr>"
    body = []
    for row in rows:
        cost = storage.round_cost(cfg, row["round"]) if row["round"] is not None else None
        if cost is None:
            continue
        shares = {**cost["acceptance_by_level"], **{f"task {t}": r for t, r in cost["acceptance_by_task"].items()}}
        levels = " ".join(f"{html.escape(str(lv))} {rate:.3f}" for lv, rate in shares.items())
        cells = [
            row["label"],
            str(cost["selected"]),
            _fmt(cost["seconds"], "{:.1f}"),
            str(cost["tokens"]) if cost["tokens"] is not None else "",
            _fmt(cost.get("seconds_per_selected"), "{:.3f}"),
            _fmt(cost.get("tokens_per_selected"), "{:.1f}"),
            _fmt(cost["acceptance"], "{:.3f}") + (f" ({levels})" if levels else ""),
        ]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def decontam_html(cfg: Config, rows: list[dict[str, Any]]) -> str:
    """One line per evaluated round: what the contaminated and near_duplicate guards found and dropped."""
    lines = []
    for row in rows:
        if row["round"] is None:
            continue
        manifest = storage.round_dir(cfg, row["round"]) / storage.STAGE_FOLDERS["select"] / "manifest.json"
        found = storage.read_json(manifest).get("decontamination") if manifest.exists() else None
        text = decontam_line(found) if found else "not checked (decontam.drop_contaminated is off)"
        lines.append(f"<li>round {row['label']}: {html.escape(text)}</li>")
    return f"<ul>{''.join(lines)}</ul>"


def _img(name: str, png: bytes) -> str:
    return f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def plot_pass_at_k(rows: list[dict[str, Any]]) -> bytes | None:
    """Held-out pass@k against k, one curve per evaluated model (checkable answers); None without pass@k."""
    import matplotlib.pyplot as plt

    curves = [(r["label"], r["metrics"].get("pass_at_k") or {}) for r in rows]
    curves = [(label, m) for label, m in curves if any(k.startswith("pass@") for k in m)]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, m in curves:
        ks = sorted(int(k[5:]) for k in m if k.startswith("pass@"))
        ax.plot(ks, [m[f"pass@{k}"] for k in ks], "o-", label="base" if label == "base" else f"round {label}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per held-out prompt)")
    ax.set_ylabel("pass@k (unbiased estimate)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Held-out pass@k per round")
    ax.legend(fontsize=8, loc="best")
    return _figure_png(fig)


def pass_by_html(rows: list[dict[str, Any]], key: str = "by_level", title: str = "level") -> str:
    """Held-out pass@1 of each level (`by_level`) or task (`by_task`), one row per evaluated model ("" with fewer
    than two): whether a gain on the levels or tasks trained on reaches the others."""
    by_row = [(r["label"], (r["metrics"].get("pass_at_k") or {}).get(key) or {}) for r in rows]
    names = list(dict.fromkeys(lv for _, m in by_row for lv in m))
    if len(names) < 2:
        return ""
    head = "<tr><th>model</th>" + "".join(f"<th>{html.escape(str(lv))}</th>" for lv in names) + "</tr>"
    body = []
    for label, m in by_row:
        cells = [_fmt((m.get(lv) or {}).get("pass@1"), "{:.3f}") for lv in names]
        name = "base" if label == "base" else f"round {label}"
        body.append(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td class='num'>{c}</td>" for c in cells))
    return f"<h2>Held-out pass@1 by {title}</h2>\n<table>" + head + "".join(b + "</tr>" for b in body) + "</table>"


def write_report(cfg: Config, out_dir: Path | None = None, n_examples: int = 8) -> Path:
    """Write `index.html` and its PNGs to `out_dir` (default `<experiment>/report/`); returns the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    rows = collect(cfg)
    if not rows:
        raise StageError(
            f"{storage.experiment_dir(cfg)} has no finished eval yet: run `raft-data rounds N` or `raft-data eval`"
        )
    out_dir = out_dir or storage.experiment_dir(cfg) / "report"
    pngs = {
        "reward.png": plot_rewards(rows),
        "histograms.png": plot_histograms(rows),
        "quality.png": plot_quality(rows),
    }
    pass_png = plot_pass_at_k(rows)
    if pass_png is not None:
        pngs["pass_at_k.png"] = pass_png
    pass_section = f"<h2>Held-out pass@k</h2>\n{_img('pass@k per round', pass_png)}" if pass_png is not None else ""
    pass_section += pass_by_html(rows, "by_task", "task") + pass_by_html(rows)
    for name, png in pngs.items():
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / name).write_bytes(png)
    latest = [r for r in rows if r.get("dir") is not None]
    kept = ""
    if latest:
        kept = (
            f"<h2>Kept and rejected samples, round {latest[-1]['label']} ({html.escape(cfg.select.strategy)})</h2>"
            + kept_rejected_html(round_samples(latest[-1]["dir"], 6), 6)
        )
    title = f"RAFT report: {cfg.experiment.name}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="muted">{html.escape(str(storage.experiment_dir(cfg)))} &middot; reward {html.escape(str(cfg.score.reward))}
&middot; selection {html.escape(cfg.select.strategy)} &middot; K = {cfg.generate.n_samples}
&middot; b = {cfg.prompts.n_prompts} &middot; mode {cfg.rounds.mode}, SFT from {cfg.rounds.sft_from}.
Held-out metrics use {len(set(rows[-1]["eval"]["prompt_id"].to_pylist()))} prompts never trained on;
"base" is the base model.</p>
<h2>Per-round metrics</h2>
{metrics_html(rows)}
<h2>Reward per round</h2>
{_img("reward per round", pngs["reward.png"])}
{pass_section}
<h2>Reward histograms</h2>
{_img("reward histograms", pngs["histograms.png"])}
<h2>Perplexity, diversity, KL, entropy and length</h2>
<p class="muted">KL/seq is per sampled completion; KL/token and entropy/token are per completion token (nats).
ppl ratio is the perplexity of held-out reference text over the base model's.</p>
{_img("perplexity and diversity", pngs["quality.png"])}
<h2>What each round cost</h2>
<p class="muted">Seconds of every stage of the round (summed over the processes that ran its shards), generated
tokens, and both per selected sample; acceptance is selected / samples (by level where the prompts have levels).</p>
{cost_html(cfg, rows)}
<h2>Decontamination</h2>
<p class="muted">Training rows (prompt + completion) sharing a word n-gram with held-out or listed evaluation text,
and near-duplicate completions, as the select stage's guards found them (docs/selection.md).</p>
{decontam_html(cfg, rows)}
<h2>Reward-hacking flags</h2>
<p class="muted">A round is flagged when its training reward (all samples or selected) rose while the held-out
second reward or distinct-2 fell by more than {NOISE_SE:g} standard errors (the two evals' combined), or when its
ppl ratio is above {PPL_RATIO_FLAG:g}.</p>
{flags_html(hacking_flags(rows))}
<h2>Held-out examples: greedy completions</h2>
{examples_html(rows, n_examples)}
{kept}
</body></html>
"""
    path = out_dir / "index.html"
    storage.write_text(page, path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Comparing experiments (e.g. a sweep over K)


def compare_experiments(cfg: Config, names: list[str], out_dir: Path) -> Path:
    """Held-out reward per round of several experiments under the same output root: `compare.png`,
    `index.html` and a Markdown table of each experiment's rows."""
    import dataclasses

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    sections = []
    for name in names:
        sub = dataclasses.replace(cfg, experiment=dataclasses.replace(cfg.experiment, name=name))
        rows = collect(sub)
        if not rows:
            raise StageError(f"{storage.experiment_dir(sub)} has no finished eval: run its rounds first")
        xs, ys = _series(rows, "reward_sampled")
        ax.plot(xs, ys, "o-", label=name)
        sections.append((name, rows))
    longest = max((rows for _, rows in sections), key=len)
    _round_axis(ax, longest)
    ax.set_ylabel("held-out mean reward (sampled)")
    ax.set_title("Held-out reward per round")
    ax.legend(fontsize=8)
    png = _figure_png(fig)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.png").write_bytes(png)
    tables = "".join(f"<h2>{html.escape(name)}</h2>{metrics_html(rows)}" for name, rows in sections)
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>RAFT comparison</title>'
        f"<style>{CSS}</style></head><body><h1>RAFT comparison</h1>{_img('held-out reward', png)}{tables}"
        "</body></html>"
    )
    storage.write_text(page, out_dir / "index.html")
    storage.write_text(
        "\n\n".join(f"### {name}\n\n{metrics_markdown(rows)}" for name, rows in sections) + "\n", out_dir / "tables.md"
    )
    return out_dir / "index.html"
