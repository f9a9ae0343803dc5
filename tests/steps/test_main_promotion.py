"""The pipeline's promotions: only what this pipeline run trained is proposed, so a re-run
never undoes a person's decision (a forced hotfix, a rollback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.mlflow_run import STEP_TIMEOUT_S, TINY_PIPELINE, mlflow_run, project_env

TEXT = "marketplace-text-classifier"


def _production(client, name: str) -> str:
    return str(client.get_model_version_by_alias(name, "production").version)


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_an_unchanged_rerun_of_main_leaves_a_forced_hotfix_in_production(
    tmp_path: Path, tracking: str
) -> None:
    """main trains and promotes text version 1; a person trains version 2 and forces it in
    (a hotfix); main again, nothing changed: its skipped train_text proposes nothing, so
    version 2 stays (it used to hand version 1 back to promotion, at least as good as 2)."""
    from mlflow.tracking import MlflowClient

    env = project_env(tracking=tracking, MLFLOW_EXPERIMENT_NAME="pipeline")
    params = {"raw": str(tmp_path / "raw"), "clean": str(tmp_path / "clean"), **TINY_PIPELINE}
    client = MlflowClient(tracking)

    mlflow_run("main", params, cwd=tmp_path, env=env)
    assert _production(client, TEXT) == "1"
    image = _production(client, "marketplace-classifier")

    _run([sys.executable, "-m", "steps.train_text", "--clean", params["clean"]], env, tmp_path)
    hotfix = [sys.executable, "-m", "registry", "promote", "--model-name", TEXT]
    _run([*hotfix, "--version", "2", "--force", "--reason", "hotfix"], env, tmp_path)
    assert _production(client, TEXT) == "2"

    again = mlflow_run("main", params, cwd=tmp_path, env=env)

    assert _production(client, TEXT) == "2"
    assert "skipping train_text" in again.stderr
    assert "comes from a skipped training: not proposed" in again.stderr
    assert _production(client, "marketplace-classifier") == image
    assert (
        "replaced in production by version 2"
        in client.get_model_version(TEXT, "1").tags["promotion.blocked"]
    )
