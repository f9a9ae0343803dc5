"""What every step shares: logging, the tracking store, one MLflow run, one-line errors.

A step's ``main`` is wrapped by :func:`cli`: a :class:`StepError` (or an unreachable
tracking server) ends the process with a one-line ``error: ...`` message and exit code 2,
never a traceback. Nothing here runs at import time.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from registry.store import RegistryError, check_server, tracking_uri

__all__ = ["RegistryError", "StepError", "cli", "log_params", "start_run", "tracking_uri"]

DEFAULT_EXPERIMENT = "marketplace-search"
EXIT_USER_ERROR = 2

log = logging.getLogger("steps")


class StepError(Exception):
    """A problem the user can fix: its message says what is wrong and what to do."""


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "alembic", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def check_tracking_server(uri: str | None = None, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when an HTTP tracking server does not answer.

    MLflow's own client retries for minutes before it gives up; a step should say at once
    that the server is down and how to start it.
    """
    try:
        check_server(uri or tracking_uri(), timeout)
    except RegistryError as exc:
        raise StepError(str(exc)) from None


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


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one-line :class:`StepError` s (exit 2 under :func:`cli`)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise StepError(f"{message}; see `{self.prog} --help`")


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


def existing_dir(value: str) -> Path:
    """argparse type: a folder that must exist."""
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {value}")
    return path


def whole_number(value: str) -> int:
    """argparse type: an integer; MLproject passes numbers as ``float`` so ``15.0`` is 15."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}")
    return int(number)


def non_negative_int(value: str) -> int:
    """argparse type: an integer >= 0."""
    number = whole_number(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {number}")
    return number


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    number = whole_number(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {number}")
    return number


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value}")
    return number


def positive_float(value: str) -> float:
    """argparse type: a finite number > 0."""
    number = _number(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value}")
    return number


def fraction(value: str) -> float:
    """argparse type: a number in [0, 1) (a share of the data, label smoothing)."""
    number = _number(value)
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {value}")
    return number


def str_to_bool(value: str | bool) -> bool:
    """argparse type: true/false, yes/no, 1/0 (MLproject passes booleans as text)."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def cli(main: Callable[[Sequence[str] | None], object]) -> Callable[[Sequence[str] | None], None]:
    """Wrap a step's ``main(argv)`` so that user errors end in one line and exit code 2."""

    def run(argv: Sequence[str] | None = None) -> None:
        configure_logging(verbose=bool(os.environ.get("STEPS_VERBOSE")))
        try:
            main(argv)
        except (StepError, RegistryError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except BrokenPipeError:  # `... | head` closed the pipe: not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0) from None
        except Exception as exc:  # an unreachable store surfaces as many exception types
            message = _connection_problem(exc)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None

    return run


def _connection_problem(exc: BaseException) -> str | None:
    """A one-line explanation when ``exc`` is the tracking store or S3 being unreachable."""
    text = f"{type(exc).__name__}: {exc}"
    if any(
        marker in text
        for marker in (
            "Max retries exceeded",
            "Connection refused",
            "EndpointConnectionError",
            "Could not connect to the endpoint",
            "NoCredentialsError",
        )
    ):
        first_line = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return (
            f"a service could not be reached ({first_line}). Check MLFLOW_TRACKING_URI "
            "(`make stack` starts the local server) and, for S3, MLFLOW_S3_ENDPOINT_URL and "
            "your AWS credentials"
        )
    return None
