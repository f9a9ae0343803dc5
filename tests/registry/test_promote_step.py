"""The ``promote`` entry point: its run records the decision; through ``mlflow run`` and against
an MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cli import UserError
from registry import promotion
from registry.promotion import PromotionRefused, promote
from registry.resolve import resolve_model_uri
from tests.helpers.mlflow_run import mlflow_run, project_env
from tests.helpers.registry_store import (
    COLOUR_MODEL,
    NAME,
    ROOT,
    _aliases,
    _jpeg,
    _log_version,
    _tags,
    registry_main,
)
from tests.helpers.servers import start_mlflow_server


def _step_runs(client) -> list:
    experiment = client.get_experiment_by_name("tests")
    return client.search_runs(
        [experiment.experiment_id], filter_string="attributes.run_name LIKE 'promote%'"
    )


def test_promote_step_records_the_decision_in_its_run(client, tmp_path: Path) -> None:
    from steps.promote import main as promote_step

    decision = promote_step(
        ["--version", "2", "--reason", "weekly retrain", "--by", "dana", "--clean", "nothing"]
    )

    (run,) = _step_runs(client)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "promote v2 -> production"
    assert run.data.params["version"] == "2" and run.data.params["force"] == "false"
    assert run.data.params["reason"] == "weekly retrain" and run.data.params["by"] == "dana"
    assert run.data.tags["promotion.outcome"] == "promote"
    assert run.data.tags["promotion.version"] == "2"
    assert run.data.params["by"] == "dana"
    # what the params say is not logged twice as tags
    assert not {"promotion.metric", "promotion.by", "promotion.reason"} & set(run.data.tags)
    assert _tags(client, 2)["promotion.run_id"] == run.info.run_id == decision.run_id
    assert _aliases(client) == {"production": 2}


def test_promote_step_refusal_is_a_failed_run_and_a_step_error(client) -> None:
    from steps.promote import main as promote_step

    client.set_registered_model_alias(NAME, "production", "2")
    with pytest.raises(UserError, match="refused: version 1 has test/accuracy 0.6000"):
        promote_step(["--version", "1", "--force", "false"])

    (run,) = _step_runs(client)
    assert run.info.status == "FAILED"
    assert run.info.run_name == "promote v1 refused"
    assert run.data.tags["promotion.version"] == "1"
    assert run.data.tags["promotion.outcome"] == "refused"
    assert "0.1000 below" in run.data.tags["promotion.error"]
    assert _aliases(client) == {"production": 2}


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((3, "promote"), "promote v3 -> production"),
        ((3, "promote", True), "promote v3 -> production (forced)"),
        ((3, "refused"), "promote v3 refused"),
        ((None, "refused"), "promote (no version) refused"),
        ((1, "promote", False, "marketplace-text-classifier"), "promote text v1 -> production"),
        ((2, "unchanged", False, NAME), "promote v2 (already production)"),
    ],
)
def test_promote_run_names_say_what_happened(args, name) -> None:
    from steps.promote import run_name

    assert run_name(*args) == name


def test_promote_step_by_best_names_the_version_it_chose(client) -> None:
    from steps.promote import main as promote_step

    promote_step(["--clean", "nothing"])  # --version best, --metric test/accuracy
    promote_step(["--clean", "nothing", "--metric", "test_accuracy"])  # the older spelling

    by_outcome = {run.data.tags["promotion.outcome"]: run for run in _step_runs(client)}
    first, again = by_outcome["promote"], by_outcome["unchanged"]
    assert first.info.run_name == "promote v2 -> production"
    assert again.info.run_name == "promote v2 (already production)"
    assert again.data.params["metric"] == "test/accuracy"
    assert "reason" not in first.data.params  # unset: left out, not logged as ''
    reason = first.data.tags["promotion.reason"]  # none given: the decision's own
    assert reason == "the first version in production (test/accuracy 0.7000)"


@pytest.mark.slow
def test_two_promote_processes_at_once_leave_one_production(client, tmp_path: Path) -> None:
    client.set_registered_model_alias(NAME, "production", "1")
    env = {**os.environ, "MLFLOW_TRACKING_URI": client.tracking_uri}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "registry",
                "promote",
                "--version",
                version,
                "--force",
                "--clean",
                str(tmp_path / "none"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for version in ("2", "4")
    ]
    results = [process.communicate(timeout=600) for process in processes]

    assert [p.returncode for p in processes] == [0, 0], results
    aliases = _aliases(client)
    assert {aliases["production"], aliases["previous-production"]} == {2, 4}
    holders = [
        v for v in ("1", "2", "4") if "production" in client.get_model_version(NAME, v).aliases
    ]
    assert len(holders) == 1


@pytest.mark.slow
def test_promote_and_rollback_against_an_mlflow_server(tmp_path: Path, monkeypatch) -> None:
    import mlflow
    from mlflow import MlflowClient

    server = start_mlflow_server(tmp_path / "server", artifacts_destination=str(tmp_path / "art"))
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.chdir(tmp_path)
        mlflow.set_tracking_uri(server.url)
        mlflow.set_experiment("registry-server")
        _log_version(tmp_path, COLOUR_MODEL, {"test_accuracy": 0.6}, "one")
        _log_version(tmp_path, COLOUR_MODEL, {"test_accuracy": 0.7}, "two")
        client = MlflowClient(server.url)
        scratch = tmp_path / "scratch"  # where every temporary folder goes from now on
        scratch.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))

        promote(NAME, "1", client=client)
        assert list(scratch.iterdir()) == []  # the smoke check removed the model it downloaded
        with pytest.raises(PromotionRefused):
            client.set_registered_model_alias(NAME, "production", "2")
            promote(NAME, "1", client=client)
        assert registry_main(["rollback"]) == 2  # 2 was set by hand: no previous-production
        promote(NAME, "2", force=True, client=client)  # already production: unchanged
        client.set_registered_model_alias(NAME, "production", "1")
        promote(NAME, "2", client=client)
        assert registry_main(["rollback", "--reason", "server test"]) == 0
        assert _aliases(client) == {"production": 1, "previous-production": 2}
        assert resolve_model_uri(f"models:/{NAME}@production") == f"models:/{NAME}/1"
    finally:
        server.stop()


@pytest.mark.slow
def test_mlflow_run_promote_entry_point(client, tmp_path: Path) -> None:
    params = {"version": "best", "reason": "entry point", "clean": tmp_path / "nothing"}
    env = project_env(tracking=client.tracking_uri)
    result = mlflow_run("promote", params, cwd=tmp_path, env=env, experiment="tests", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _aliases(client) == {"production": 2}
    tags = _tags(client, 2)
    assert tags["promotion.reason"] == "entry point"
    assert tags["promotion.by"] == promotion.current_user()
    assert client.get_run(tags["promotion.run_id"]).data.tags["promotion.outcome"] == "promote"


@pytest.mark.slow
def test_a_real_classifier_is_smoke_checked_on_clean_test_images(
    tracking: str, demo_clean: Path
) -> None:
    """The training helper's pyfunc (marketplace_models.image), promoted on the test split."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    from marketplace_models import image as model
    from marketplace_models.network import ClassifierConfig, build_network
    from registry.register import register_classifier

    categories = json.loads((demo_clean / "categories.json").read_text())
    torch.manual_seed(0)
    network = build_network("resnet18", len(categories)).eval()
    config = ClassifierConfig(arch="resnet18", categories=categories, image_size=32)
    mlflow.set_experiment("tests")
    with mlflow.start_run():
        mlflow.log_metric("test_accuracy", 0.3)
        info = model.log_classifier(network, config, example_image=_jpeg((90, 90, 90)))
    version = register_classifier(info.model_uri, model_name=NAME)

    decision = promote(NAME, "best", clean=demo_clean, reason="first real model")

    assert decision.version == int(version.version)
    assert f"from the test split of {demo_clean}" in decision.smoke_check
    assert resolve_model_uri(f"models:/{NAME}@production") == f"models:/{NAME}/{version.version}"
    aliases = MlflowClient().get_registered_model(NAME).aliases
    assert {k: int(v) for k, v in aliases.items()} == {"production": int(version.version)}
