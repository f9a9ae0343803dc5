"""What every step shares: the tracking store and one MLflow run per step.

The command-line convention (the parser, the argparse types, one-line errors with exit code
2 through :func:`cli`) and the one error type are :mod:`registry.cli`'s, re-exported here so
that a step imports everything it runs with from one place. ``StepError`` is
:class:`registry.cli.UserError` under the name the steps use. Nothing here runs at import
time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from registry.cli import (
    EXIT_USER_ERROR,
    ArgumentParser,
    UserError,
    auto_or_positive_int,
    cli,
    configure_logging,
    existing_dir,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    str_to_bool,
    whole_number,
)
from registry.store import RegistryError, check_server, tracking_uri

__all__ = [
    "EXIT_USER_ERROR",
    "ArgumentParser",
    "RegistryError",
    "StepError",
    "auto_or_positive_int",
    "check_tracking_server",
    "cli",
    "configure_logging",
    "existing_dir",
    "fraction",
    "log_params",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "start_run",
    "str_to_bool",
    "tracking_uri",
    "whole_number",
]

DEFAULT_EXPERIMENT = "marketplace-search"

log = logging.getLogger("steps")

StepError = UserError


def check_tracking_server(uri: str | None = None, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when an HTTP tracking server does not answer.

    MLflow's own client retries for minutes before it gives up; a step should say at once
    that the server is down and how to start it.
    """
    check_server(uri or tracking_uri(), timeout)


def start_run(run_name: str, **kwargs):
    """Start (or, under ``mlflow run``, attach to) this step's MLflow run.

    Outside ``mlflow run`` the experiment comes from MLFLOW_EXPERIMENT_NAME (default
    ``marketplace-search``) and the store from :func:`tracking_uri`.
    """
    import mlflow

    uri = tracking_uri()
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    if "MLFLOW_RUN_ID" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ:
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
    return mlflow.start_run(run_name=run_name, **kwargs)


def log_params(params: Mapping[str, object]) -> None:
    """Log the params the active run does not have yet.

    ``mlflow run`` logs the entry point's parameters as it received them (``true``,
    ``100000``); logging them again as Python values (``True``, ``100000.0``) would be a
    change of value, which MLflow refuses.
    """
    import mlflow

    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    fresh = {key: value for key, value in params.items() if key not in existing}
    if fresh:
        mlflow.log_params(fresh)
