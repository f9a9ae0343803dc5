"""step_times prints the newest pipeline run's time by step, ran or skipped, from MLflow."""

from __future__ import annotations

import re

import pytest

from steps.step_times import PIPELINE_ROLE, PIPELINE_TAG, RUNS_ARTIFACT, SECONDS_ARTIFACT, main

STEPS = ("demo_data", "clean_tabular", "clean_images", "train", "index", "train_text")


def _pipeline(
    client, experiment_id: str, skipped: set[str], old_runs: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """A pipeline run as main leaves it: nested step runs, a reused one, and a promote run."""
    import mlflow

    with mlflow.start_run(run_name="pipeline resnet18 e1 32px", experiment_id=experiment_id):
        parent = mlflow.active_run().info.run_id
        mlflow.set_tag(PIPELINE_TAG, PIPELINE_ROLE)
        run_ids = {}
        for step in STEPS:
            if step in skipped:
                run_ids[step] = old_runs[step]
                continue
            child = client.create_run(experiment_id, run_name=step)
            client.set_tag(child.info.run_id, "mlflow.parentRunId", parent)
            client.set_terminated(child.info.run_id)
            run_ids[step] = child.info.run_id
        promote = client.create_run(
            experiment_id,
            run_name="promote v1 -> production",
            tags={"mlflow.parentRunId": parent, "mlflow.project.entryPoint": "promote"},
        )
        client.set_terminated(promote.info.run_id)
        mlflow.log_dict(run_ids, RUNS_ARTIFACT)
        mlflow.log_dict({step: 1.5 + i for i, step in enumerate(STEPS)}, SECONDS_ARTIFACT)
    return parent, run_ids


def _rows(text: str) -> dict[str, tuple[float, str]]:
    found = re.findall(r"^\| (\S+) \| (\d+\.\d) \| (ran|skipped) \|$", text, flags=re.M)
    return {step: (float(seconds), status) for step, seconds, status in found}


def test_the_summary_lists_every_step_with_its_time_and_whether_it_ran(
    tracking: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    experiment_id = client.create_experiment("tests")
    _, old_runs = _pipeline(client, experiment_id, set(), {})
    newest, _ = _pipeline(client, experiment_id, {"demo_data", "clean_images"}, old_runs)

    text = main([])

    assert text in capsys.readouterr().out
    assert newest in text, "the newest pipeline run"
    rows = _rows(text)
    assert list(rows) == [*STEPS, "promote"], "every step, in order, then the promote run"
    assert rows["demo_data"] == (1.5, "skipped") and rows["clean_images"] == (3.5, "skipped")
    assert rows["train"] == (4.5, "ran") and rows["promote"][1] == "ran"
    assert re.search(r"^\| \*\*total\*\* \| \d+\.\d \| \|$", text, flags=re.M)


def test_no_pipeline_run_is_a_clear_error(tracking: str) -> None:
    from cli import UserError

    with pytest.raises(UserError, match="no pipeline run in experiment 'tests'.*make demo"):
        main([])
