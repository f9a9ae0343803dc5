"""baselines_report: print the latest baselines results as the README's markdown tables.

Finds the newest finished run tagged ``step=baselines`` in any experiment of the tracking
store (or the run given by ``--run-id``), reads its ``results.json`` and prints the tables
that :func:`steps.baselines.results_markdown` makes: the same run, the same text, so the
README's table is produced by a command (``make results``), not typed.

Reads: the tracking store (MLFLOW_TRACKING_URI, default ``sqlite:///mlflow.db``). Writes:
the tables to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cli import UserError
from steps import runtime
from steps.baselines import results_markdown
from steps.runtime import check_tracking_server, cli, tracking_uri

log = logging.getLogger(__name__)

STEP_TAG = "step"
STEP_NAME = "baselines"
RESULTS_FILE = "results.json"


def _check_store(uri: str) -> None:
    """A UserError when the store is a sqlite file that does not exist (MLflow would make it)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise UserError(
                f"no tracking store at {path}: run `mlflow run . -e baselines --env-manager local` "
                "first, or set MLFLOW_TRACKING_URI to the store that holds its runs"
            )
    check_tracking_server(uri)


def latest_baselines_run(client, uri: str):
    """The newest finished run tagged ``step=baselines`` across all experiments."""
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(
        experiment_ids,
        filter_string=f"tags.{STEP_TAG} = '{STEP_NAME}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise UserError(
            f"no finished baselines run in {uri}: run "
            "`mlflow run . -e baselines --env-manager local` first"
        )
    return runs[0]


def load_results(run_id: str | None = None) -> dict[str, Any]:
    """``results.json`` of ``run_id``, or of the latest finished baselines run."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    _check_store(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    if not run_id:
        run_id = latest_baselines_run(client, uri).info.run_id
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{RESULTS_FILE}")
    except (MlflowException, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"cannot read {RESULTS_FILE} of run {run_id} ({message[:200]}): is it a finished "
            "baselines run?"
        ) from None


def get_args_parser() -> argparse.ArgumentParser:
    parser = runtime.ArgumentParser(
        prog="python -m steps.baselines_report", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--run-id", default="", help="a baselines run (default: the latest finished one)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    args = get_args_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stdout is the table
    table = results_markdown(load_results(args.run_id or None))
    print(table)
    return table


run = cli(main)

if __name__ == "__main__":
    run()
