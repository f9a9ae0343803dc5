"""Resuming an interrupted training: on the run's own data, with its checkpoints and its
registered version consistent whatever point a kill hit.

The kills are real: the first session runs in a subprocess whose ``python -c`` wrapper
monkeypatches one function so that the process SIGKILLs itself at the named point (between
the two checkpoint uploads, inside registration), then runs ``steps.train`` as the command
line would. The resumes go through the commands a user runs (``python -m steps.train
--resume <id>``, ``mlflow run . -e train -P resume=<id>``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from clean_data import data_digest
from steps.train import main
from steps.training import loop
from tests.helpers.mlflow_run import mlflow_run, project_env
from tests.helpers.training import make_tiny_clean, subprocess_env, tiny_args

NAME = "marketplace-classifier"

KILL_BETWEEN_CHECKPOINT_UPLOADS = """
import os, signal, sys

from steps.training import checkpoint, loop

real = checkpoint.log_checkpoint
real_update = loop.EarlyStopping.update


def update(self, loss, epoch):
    # Epoch 2 counts as an improvement whatever its loss, so the kill point comes anywhere.
    return real_update(self, min(loss, self.best_loss - 1.0) if epoch == 2 else loss, epoch)


loop.EarlyStopping.update = update


def log_checkpoint(path):
    if path.name == checkpoint.BEST and checkpoint.load_checkpoint(path)["epoch"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # epoch 2's last.pt is uploaded, its best.pt not
    real(path)


checkpoint.log_checkpoint = log_checkpoint
from steps.train import main

main(sys.argv[1:])
"""

KILL_DURING_REGISTRATION = """
import os, signal, sys

import mlflow


def update_model_version(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # the version exists; its description is not written


mlflow.MlflowClient.update_model_version = update_model_version
from steps.train import main

main(sys.argv[1:])
"""


def _python(argv: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _only_run() -> mlflow.entities.Run:
    runs = mlflow.search_runs(
        experiment_names=["tests"],
        filter_string="attributes.run_name LIKE 'train %'",
        output_format="list",
    )
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _interrupted_run(monkeypatch: pytest.MonkeyPatch, clean: Path, *extra: str) -> str:
    """A training of ``clean`` stopped by SIGTERM in epoch 2 (KILLED, epoch 1's checkpoint)."""
    real_epoch = loop.train_one_epoch

    def signalled_in_epoch_2(*args, **kwargs):
        if args[6] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", signalled_in_epoch_2)
    with pytest.raises(SystemExit):
        main(tiny_args(clean, "--epochs", "2", "--weights", "none", *extra))
    monkeypatch.setattr(loop, "train_one_epoch", real_epoch)
    run = _only_run()
    assert run.info.status == "KILLED"
    return run.info.run_id


@pytest.mark.slow
@pytest.mark.parametrize("given", ["no --clean", "another --clean"])
def test_resume_trains_on_the_runs_own_data(tmp_path, tracking, monkeypatch, given) -> None:
    """The documented `python -m steps.train --resume <id>`, from another folder, with no
    `--clean` (it would fall back to data/clean) or with another clean folder (another
    split): the run goes on with the data it began on, and its data_digest stays that."""
    own = make_tiny_clean(tmp_path / "own" / "clean")
    other = make_tiny_clean(tmp_path / "other" / "clean", per_split=(6, 6, 16), seed=1)
    run_id = _interrupted_run(monkeypatch, Path("own/clean"))  # relative, as typed in tmp_path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    extra = ["--clean", str(other)] if given == "another --clean" else []

    resumed = _python(["-m", "steps.train", "--resume", run_id, *extra], cwd=elsewhere)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["data_digest"] == data_digest(own) != data_digest(other)
    [version] = mlflow.MlflowClient().search_model_versions(f"name = '{NAME}'")
    assert version.tags["data_digest"] == data_digest(own)


@pytest.mark.slow
def test_resume_on_changed_data_is_an_error_unless_allowed_and_then_recorded(
    tmp_path, tracking, monkeypatch
) -> None:
    clean = make_tiny_clean(tmp_path / "clean")
    started = data_digest(clean)
    run_id = _interrupted_run(monkeypatch, clean, "--register", "false")
    images = pd.read_parquet(clean / "images.parquet")
    images.loc[images["split"] == "test", "split"] = "train"  # test images leak into training
    images.to_parquet(clean / "images.parquet")

    resume = ["-m", "steps.train", "--resume", run_id, "--clean", str(clean)]
    refused = _python(resume, cwd=tmp_path)

    assert refused.returncode == 2, refused.stderr[-3000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert "Traceback" not in refused.stderr
    assert last.startswith("error: ") and "images.parquet changed" in last, last
    assert "categories.json" not in last.split("changed")[0]  # says what differs, only that
    assert f"data digest {started}" in last and "--allow-data-change true" in last
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["data_digest"] == started

    params = {"resume": run_id, "allow_data_change": "true"}
    allowed = mlflow_run(
        "train",
        params,
        cwd=tmp_path,
        env=project_env(subprocess_env()),
        experiment="tests",
        check=False,
    )

    assert allowed.returncode == 0, allowed.stderr[-3000:]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["data_digest"] == started  # what the run began on, not overwritten
    assert run.data.tags["resumed_data_digest"] == data_digest(clean) != started


@pytest.mark.slow
def test_a_kill_between_the_checkpoint_uploads_keeps_best_and_best_epoch_together(
    tmp_path, tracking
) -> None:
    """Killed after epoch 2's last.pt and before its best.pt (epoch 2 the best, and the last:
    nothing is left to train), then resumed: the registered weights are best.pt's, and
    best.pt, the run and the version all say epoch 2."""
    clean = make_tiny_clean(tmp_path / "clean")
    argv = tiny_args(clean, "--epochs", "2", "--patience", "0", "--weights", "none")
    killed = _python(["-c", KILL_BETWEEN_CHECKPOINT_UPLOADS, *argv], cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_id = _only_run().info.run_id

    resume = ["-m", "steps.train", "--resume", run_id, "--clean", str(clean)]
    resumed = _python(resume, cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = mlflow.MlflowClient()
    best = torch.load(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="checkpoints/best.pt", dst_path=str(tmp_path / "dl")
        ),
        weights_only=True,
    )
    [version] = client.search_model_versions(f"name = '{NAME}'")
    assert best["epoch"] == 2
    assert client.get_run(run_id).data.metrics["best_epoch"] == 2
    assert version.tags["best_epoch"] == "2"
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/{version.version}")
    weights = served.unwrap_python_model().net.state_dict()
    assert all(torch.equal(weights[key], value) for key, value in best["model"].items())


@pytest.mark.slow
def test_a_kill_during_registration_is_completed_by_the_resume_not_registered_twice(
    tmp_path, tracking
) -> None:
    clean = make_tiny_clean(tmp_path / "clean")
    argv = tiny_args(clean, "--epochs", "1", "--weights", "none")
    killed = _python(["-c", KILL_DURING_REGISTRATION, *argv], cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = _only_run()
    client = mlflow.MlflowClient()
    [half] = client.search_model_versions(f"name = '{NAME}'")
    assert half.run_id == run.info.run_id and not half.description

    params = {"resume": run.info.run_id, "clean": clean}
    resumed = mlflow_run(
        "train",
        params,
        cwd=tmp_path,
        env=project_env(subprocess_env()),
        experiment="tests",
        check=False,
    )

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    [version] = client.search_model_versions(f"name = '{NAME}'")  # one version, completed
    assert version.version == half.version
    assert version.description.startswith("Not promoted yet: registered by training")
    assert {"best_epoch", "data_digest", "test/accuracy"} <= set(version.tags)
    logged = client.search_logged_models([run.info.experiment_id])
    mine = [f"models:/{m.model_id}" for m in logged if m.source_run_id == run.info.run_id]
    assert mine == [version.source]  # the resume logged no second model
    [tied] = [m for m in logged if m.source_run_id == run.info.run_id]
    assert "test/accuracy" in {metric.key for metric in tied.metrics}
    assert client.get_run(run.info.run_id).data.tags["registered_version"] == str(version.version)
