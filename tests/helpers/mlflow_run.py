"""`mlflow run <project> -e <entry point>` in a fresh process, as a person types it.

``--env-manager local`` runs each step with the first python on PATH, so the environment puts
this interpreter first; this checkout goes first on PYTHONPATH; and no run or experiment id is
inherited for the step to attach to. Every call names its working directory: the Default
experiment of a new sqlite store keeps its artifacts in ``./mlruns`` of the cwd, which must
never be the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INHERITED_RUN = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")  # a step subprocess must not attach
STEP_TIMEOUT_S = 1200  # generous: a few steps side by side on a busy CI machine

# The smallest `main` that trains, registers and promotes (random weights, one epoch, 32 px).
TINY_PIPELINE = {
    "products": "40",
    "size": "48",
    "arch": "resnet18",
    "weights": "none",
    "image_size": "32",
    "epochs": "1",
    "batch_size": "16",
    "trainable_layers": "all",
    "baselines": "false",
}
# `main`'s data steps without training: train refuses this arch at once.
NO_TRAINING = {"products": "40", "size": "48", "arch": "no-such-arch", "baselines": "false"}


def project_env(
    base: Mapping[str, str] | None = None,
    *,
    tracking: str | None = None,
    drop: Iterable[str] = (),
    **variables: str,
) -> dict[str, str]:
    """``base`` (default: this process's environment) made ready for a step subprocess."""
    dropped = {*INHERITED_RUN, *drop}
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in dropped}
    python = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != python:
        env["PATH"] = f"{python}{os.pathsep}{env.get('PATH', '')}"
    if env.get("PYTHONPATH", "").split(os.pathsep)[0] != str(REPO):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if tracking is not None:
        env["MLFLOW_TRACKING_URI"] = tracking
    env.update(variables)
    return env


def mlflow_run(
    entry: str,
    params: Mapping[str, object] | None = None,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    project: Path = REPO,
    experiment: str | None = None,
    check: bool = True,
    timeout: float = STEP_TIMEOUT_S,
) -> subprocess.CompletedProcess:
    """Run one entry point; with ``check``, a failure is an assertion showing its stderr.

    ``env`` defaults to ``project_env()``; one given is used as it is (build it with
    ``project_env``)."""
    argv = [sys.executable, "-m", "mlflow", "run", str(project), "-e", entry]
    argv += ["--env-manager", "local"]
    if experiment is not None:
        argv += ["--experiment-name", experiment]
    for key, value in (params or {}).items():
        argv += ["-P", f"{key}={value}"]
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=project_env() if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert done.returncode == 0, f"mlflow run -e {entry} {params}:\n{done.stderr[-4000:]}"
    return done
