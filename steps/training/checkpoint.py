"""Per-epoch checkpoints as run artifacts, and resuming from them.

Every epoch writes ``checkpoints/last.pt`` (and ``checkpoints/best.pt`` when validation
loss improved) into the run's artifacts: the model, optimiser, scheduler and loss-scaler
state dicts, the epoch, the run's parameters, the early-stopping state and the RNG state.
Only tensors and plain values, so they load with ``torch.load(weights_only=True)``. An
interrupted run therefore loses at most the epoch in progress.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cli import UserError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"


def make_checkpoint(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    *,
    epoch: int,
    args: dict[str, Any],
    stopper: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to continue training after ``epoch``."""
    return {
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "epoch": epoch,
        "args": dict(args),
        "early_stopping": dict(stopper),
        "rng": torch.get_rng_state(),
        **(extra or {}),
    }


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` atomically (a half-written file never replaces a good one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)
    return path


def log_checkpoint(path: Path) -> None:
    """Upload ``path`` as ``checkpoints/<name>`` of the active run."""
    import mlflow

    mlflow.log_artifact(str(path), CHECKPOINT_DIR)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def fetch_checkpoint(run_id: str, name: str = LAST) -> dict[str, Any]:
    """Download and load ``checkpoints/<name>`` of run ``run_id``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.tracking.MlflowClient().get_run(run_id)
    except MlflowException:
        raise UserError(
            f"no run {run_id!r} in the tracking store {mlflow.get_tracking_uri()}: pass "
            "--resume with the id of an interrupted train run (see `mlflow ui`)"
        ) from None
    if name == LAST and run.info.status == "FINISHED":
        raise UserError(
            f"run {run_id} finished: there is nothing to resume; start a new run, or pass "
            f"--weights runs:/{run_id}/{CHECKPOINT_DIR}/{BEST} to start from its best weights"
        )
    with tempfile.TemporaryDirectory(prefix="resume-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{CHECKPOINT_DIR}/{name}", dst_path=tmp
            )
        except (MlflowException, OSError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(
                f"run {run_id} has no {CHECKPOINT_DIR}/{name} ({first}): it finished no epoch, "
                "so start a new run instead of resuming"
            ) from None
        return load_checkpoint(Path(local))


def restore(
    checkpoint: dict[str, Any],
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """Load a checkpoint's state dicts into the freshly built training objects."""
    net.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    if isinstance(checkpoint.get("rng"), torch.Tensor):
        torch.set_rng_state(checkpoint["rng"])
