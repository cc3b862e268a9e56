"""Where experiment trackers write (`tracking.dir`, by default `<experiment>/tracking/`), one folder per tracker, and
the environment variables through which the trackers' own libraries (and TRL's callbacks) find those folders.

Every location is local: TensorBoard event files, a trackio database, a wandb run in offline mode (unless the user
set WANDB_MODE), an mlflow file store. Nothing here imports a tracker.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from raft_data.config import Config, config_hash
from raft_data.storage.layout import experiment_dir


def tracking_dir(cfg: Config) -> Path:
    return Path(cfg.tracking.dir) if cfg.tracking.dir else experiment_dir(cfg) / "tracking"


def tracker_dir(cfg: Config, tracker: str) -> Path:
    """The folder of one tracker: tensorboard/ (event files), trackio/ (its database), wandb/, mlflow/ (mlruns)."""
    return tracking_dir(cfg) / tracker


def project_name(cfg: Config) -> str:
    return cfg.tracking.project or cfg.experiment.name


def run_name(cfg: Config) -> str:
    return cfg.tracking.run_name or cfg.experiment.name


def wandb_run_id(cfg: Config, name: str) -> str:
    """A stable wandb run id for a run name in this tracking folder, so a replay resumes the same run."""
    return config_hash([str(tracking_dir(cfg).resolve()), project_name(cfg), name])


def mlflow_uri(cfg: Config) -> str:
    return tracker_dir(cfg, "mlflow").resolve().as_uri()


def sft_run_name(cfg: Config, round_idx: int) -> str:
    """The run a round's SFT loss curves go to, beside the rounds' run in the same project (its steps restart at 0
    every round, so each round's SFT is a run of its own)."""
    return f"{run_name(cfg)}-sft-round-{round_idx:04d}"


def tracker_env(cfg: Config, sft_run: str | None = None) -> dict[str, str]:
    """The variables the trackers' libraries read, for the trackers in `tracking.report_to` (`sft_run`: also where
    TRL's TensorBoard callback writes that run)."""
    env: dict[str, str] = {}
    wanted = set(cfg.tracking.report_to)
    if "tensorboard" in wanted and sft_run is not None:
        env["TENSORBOARD_LOGGING_DIR"] = str(tracker_dir(cfg, "tensorboard") / sft_run)
    if "wandb" in wanted:
        env |= {"WANDB_DIR": str(tracker_dir(cfg, "wandb")), "WANDB_PROJECT": project_name(cfg)}
        env["WANDB_MODE"] = os.environ.get("WANDB_MODE", "offline")
        env["WANDB_SILENT"] = os.environ.get("WANDB_SILENT", "true")
    if "mlflow" in wanted:
        # the plain file store: mlflow-skinny has no database backend, and the file store is opt-in since mlflow 3
        env |= {"MLFLOW_TRACKING_URI": mlflow_uri(cfg), "MLFLOW_EXPERIMENT_NAME": project_name(cfg)}
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if "trackio" in wanted:
        env["TRACKIO_DIR"] = str(tracker_dir(cfg, "trackio"))
    return env


def point_trackio(folder: Path) -> None:
    """trackio reads TRACKIO_DIR once, when it is imported: set it, and move an already imported trackio there."""
    os.environ["TRACKIO_DIR"] = str(folder)
    if "trackio" in sys.modules:
        for name in ("trackio", "trackio.utils", "trackio.sqlite_storage"):
            module = sys.modules.get(name)
            if module is not None and hasattr(module, "TRACKIO_DIR"):
                module.TRACKIO_DIR = folder


@contextlib.contextmanager
def tracker_environment(cfg: Config, sft_run: str | None = None) -> Iterator[dict[str, str]]:
    """The tracker variables set for the duration of the block (TRL's callbacks read them), then put back."""
    env = tracker_env(cfg, sft_run)
    before = {k: os.environ.get(k) for k in env}
    trackio_before = os.environ.get("TRACKIO_DIR")
    os.environ.update(env)
    if "TRACKIO_DIR" in env:
        Path(env["TRACKIO_DIR"]).mkdir(parents=True, exist_ok=True)
        point_trackio(Path(env["TRACKIO_DIR"]))
    try:
        yield env
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if "TRACKIO_DIR" in env and trackio_before is not None:
            point_trackio(Path(trackio_before))
