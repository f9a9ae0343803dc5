"""The one command-line convention of the project: one error type, one parser, one wrapper.

Every step (``python -m steps.<name>``), ``python -m registry`` and ``python -m stack``
parse their arguments with :class:`ArgumentParser` and run their ``main`` through
:func:`cli` (or :func:`run_cli`): a :class:`UserError` (a bad argument, a missing file, an
unreachable tracking server) ends the process with one ``error: ...`` line and exit code 2,
never a traceback. Nothing here runs at import time.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from marketplace_models.errors import UserError

EXIT_USER_ERROR = 2
QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "alembic", "PIL")


def configure_logging(verbose: bool = False) -> None:
    """Log lines ``HH:MM:SS LEVEL name: message`` to stderr (DEBUG with STEPS_VERBOSE set)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one-line :class:`UserError` s (exit 2 under :func:`cli`)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message}; see `{self.prog} --help`")


# --------------------------------------------------------------------------- argparse types


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


def auto_or_positive_int(value: str) -> int | None:
    """argparse type: ``auto`` (None: decided later) or an integer >= 1."""
    if str(value).strip().lower() in ("auto", ""):
        return None
    return positive_int(value)


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


# --------------------------------------------------------------------------- running a main


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None) -> int:
    """Run ``main(argv)``; return its exit code: 0, 2 (one ``error:`` line) or 128 + signal.

    An interruption (Ctrl-C, or a :class:`KeyboardInterrupt` subclass carrying ``signum``)
    prints ``interrupted`` and returns 130 (SIGINT) or 143 (SIGTERM).
    """
    configure_logging(verbose=bool(os.environ.get("STEPS_VERBOSE")))
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    except BrokenPipeError:  # `... | head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # an unreachable store surfaces as many exception types
        message = connection_problem(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def cli(main: Callable[[Sequence[str] | None], object]) -> Callable[[Sequence[str] | None], None]:
    """Wrap ``main(argv)`` as a process entry point: :func:`run_cli`, then exit with its code."""

    def run(argv: Sequence[str] | None = None) -> None:
        code = run_cli(main, argv)
        if code:
            raise SystemExit(code)

    return run


def connection_problem(exc: BaseException) -> str | None:
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


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`UserError` at once when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as reply:
            reply.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}): start it with "
            "`make stack`, or unset MLFLOW_TRACKING_URI to use the local sqlite store"
        ) from None
