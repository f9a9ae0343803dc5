"""Per-epoch checkpoints as run artifacts, and resuming from them.

Every epoch writes ``checkpoints/last.pt`` (and ``checkpoints/best.pt`` when validation
loss improved) into the run's artifacts: the model, optimiser, scheduler and loss-scaler
state dicts, the epoch, the run's parameters, the early-stopping state and the RNG state.
Only tensors and plain values, so they load with ``torch.load(weights_only=True)``. An
interrupted run therefore loses at most the epoch in progress.

``last.pt`` is uploaded first: it is the commit point, and it holds the early-stopping
state, whose ``best_epoch`` says which epoch ``best.pt`` must be. A kill after ``last.pt``
of an improving epoch and before its ``best.pt`` leaves an older ``best.pt``; the resume
then uploads ``best.pt`` again from ``last.pt`` (the same state), see :func:`repair_best`.
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


def repair_best(run_id: str, last: dict[str, Any]) -> bool:
    """Make ``checkpoints/best.pt`` of ``run_id`` the epoch that ``last`` (its ``last.pt``)
    records as the best; returns True when it had to be uploaded again.

    Only ``last.pt``'s own epoch can be missing from ``best.pt`` (the two uploads are in that
    order), and then ``last`` holds that epoch's state itself.
    """
    from mlflow import MlflowClient

    best_epoch = int(last.get("early_stopping", {}).get("best_epoch", 0))
    if best_epoch != int(last["epoch"]):
        return False  # best.pt was written, whole, before this last.pt
    try:
        best = fetch_checkpoint(run_id, BEST)
    except UserError:
        best = None
    if best is not None and int(best["epoch"]) == best_epoch:
        return False
    log.warning(
        "run %s: %s/%s is not epoch %d, its best (the upload was interrupted): uploading it "
        "again from %s",
        run_id,
        CHECKPOINT_DIR,
        BEST,
        best_epoch,
        LAST,
    )
    with tempfile.TemporaryDirectory(prefix="best-") as tmp:
        path = save_checkpoint(last, Path(tmp) / BEST)
        MlflowClient().log_artifact(run_id, str(path), CHECKPOINT_DIR)
    return True


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
