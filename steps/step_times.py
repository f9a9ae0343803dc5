"""step_times: the newest pipeline run's time by step (a markdown table), read from MLflow.

``main`` logs, on its own run, which run each step used (``pipeline_runs.json``) and the
seconds each step took from its start to its end as ``main`` waited for it
(``pipeline_seconds.json``: a skipped step's is the time its cache check took). A step ran
when its run is nested under the pipeline run (``mlflow.parentRunId``), and was skipped
when ``main`` reused an older run. The runs nested under the pipeline run that no step
names (the ``promote`` runs) are listed after the steps with their own run's duration.

Reads: the tracking store (MLFLOW_TRACKING_URI, default ``sqlite:///mlflow.db``) and the
experiment MLFLOW_EXPERIMENT_NAME (default ``marketplace-search``). Writes: the table to
stdout. ``make demo`` ends with it.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cli import UserError
from steps import runtime

log = logging.getLogger(__name__)

PIPELINE_TAG = "pipeline.role"  # main tags its own run `pipeline.role = main`
PIPELINE_ROLE = "main"
RUNS_ARTIFACT = "pipeline_runs.json"
SECONDS_ARTIFACT = "pipeline_seconds.json"
PARENT_RUN_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class StepTime:
    """One row of the table: the step, its seconds, ``ran`` or ``skipped``, its run id."""

    step: str
    seconds: float
    status: str
    run_id: str


def run_seconds(run) -> float | None:
    """How long ``run`` ran (None while it runs)."""
    if run.info.end_time is None or run.info.start_time is None:
        return None
    return (run.info.end_time - run.info.start_time) / 1000.0


def _load_dict(run_id: str, name: str) -> dict:
    import mlflow

    try:
        loaded = mlflow.artifacts.load_dict(f"runs:/{run_id}/{name}")
    except Exception:  # noqa: BLE001 - an older main run logged no such artifact
        return {}
    return loaded if isinstance(loaded, dict) else {}


def step_times(client, pipeline_run) -> list[StepTime]:
    """The pipeline run's steps in the order it ran them, then its other nested runs."""
    parent = pipeline_run.info.run_id
    run_ids = _load_dict(parent, RUNS_ARTIFACT)
    seconds = _load_dict(parent, SECONDS_ARTIFACT)
    rows = []
    for step, run_id in run_ids.items():
        run = client.get_run(run_id)
        ran = run.data.tags.get(PARENT_RUN_TAG) == parent
        measured = seconds.get(step)
        if measured is None:
            measured = run_seconds(run) if ran else 0.0
        rows.append(StepTime(step, float(measured or 0.0), "ran" if ran else "skipped", run_id))
    named = set(run_ids.values())
    nested = client.search_runs(
        [pipeline_run.info.experiment_id],
        filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent}'",
        order_by=["attributes.start_time ASC"],
    )
    for run in nested:
        if run.info.run_id not in named:
            step = run.data.tags.get("mlflow.project.entryPoint") or run.info.run_name
            rows.append(StepTime(step, run_seconds(run) or 0.0, "ran", run.info.run_id))
    return rows


def latest_pipeline_run(client, experiment_name: str):
    """The newest run that ``main`` made in ``experiment_name``; a UserError when none."""
    experiment = client.get_experiment_by_name(experiment_name)
    runs = []
    if experiment is not None:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{PIPELINE_TAG}` = '{PIPELINE_ROLE}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not runs:
        raise UserError(
            f"no pipeline run in experiment {experiment_name!r} of {runtime.tracking_uri()}: "
            "run `make demo` (or `mlflow run . -e main`) first, or pass --experiment"
        )
    return runs[0]


def table(pipeline_run, rows: Sequence[StepTime]) -> str:
    """The markdown table, with the pipeline's own run time as its last row."""
    lines = [
        f"Time by step of pipeline run {pipeline_run.info.run_id} ({pipeline_run.info.run_name}):",
        "",
        "| step | seconds | status |",
        "|---|---:|---|",
    ]
    lines += [f"| {row.step} | {row.seconds:.1f} | {row.status} |" for row in rows]
    total = run_seconds(pipeline_run)
    if total is None:
        total = sum(row.seconds for row in rows)
    lines.append(f"| **total** | {total:.1f} | |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = runtime.ArgumentParser(
        prog="python -m steps.step_times", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--experiment",
        default=os.environ.get("MLFLOW_EXPERIMENT_NAME", runtime.DEFAULT_EXPERIMENT),
        help="the experiment the pipeline ran in",
    )
    parser.add_argument(
        "--run-id",
        type=runtime.optional_text,
        default="",
        help="a pipeline run's id (default: the newest pipeline run)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    args = get_args_parser().parse_args(argv)
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(runtime.tracking_uri())
    client = MlflowClient()
    if args.run_id:
        try:
            pipeline_run = client.get_run(args.run_id)
        except MlflowException:
            raise UserError(f"no run {args.run_id} in {runtime.tracking_uri()}") from None
    else:
        pipeline_run = latest_pipeline_run(client, args.experiment)
    text = table(pipeline_run, step_times(client, pipeline_run))
    print(text)
    return text


run = runtime.cli(main)

if __name__ == "__main__":
    run()
