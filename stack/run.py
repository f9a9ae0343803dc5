"""Start, stop and inspect the local MLflow tracking server (``make stack``, ``make stack-down``).

``python -m stack start`` runs ``mlflow server`` in the background with a sqlite backend
and proxied artifact storage (``--artifacts-destination``): clients then need only
``MLFLOW_TRACKING_URI=http://127.0.0.1:5000``; the server alone talks to the artifact store
and holds its credentials. It returns once ``/health`` answers, and refuses to start a
second copy. ``python -m stack stop`` stops it; ``python -m stack status`` says whether it runs.

Settings (environment variables):

* ``STACK_HOST`` (127.0.0.1), ``STACK_PORT`` (5000), ``STACK_WORKERS`` (2),
  ``STACK_START_TIMEOUT`` (seconds to wait for /health, 90).
* ``BACKEND_STORE_URI``: default ``sqlite:///<repo>/.stack/mlflow.db``.
* ``ARTIFACTS_DESTINATION``: default the folder ``<repo>/.stack/artifacts``; or
  ``s3://bucket/prefix``, with the usual AWS variables (``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``) and, for MinIO or another
  S3-compatible store, ``MLFLOW_S3_ENDPOINT_URL``.
* ``STACK_DIR``: the state folder (default ``<repo>/.stack``).

Writes under the state folder: ``mlflow.pid``, ``mlflow.log``, ``mlflow.json`` (what
was started), ``mlflow.db`` and ``artifacts/`` (with the defaults).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from cli import ArgumentParser, UserError, check_server, cli
from cli.processes import (
    ProcessExited,
    is_alive,
    log_tail,
    start_in_group,
    stop_group,
    wait_until,
)

log = logging.getLogger("stack")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_WORKERS = 2
DEFAULT_START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 25


class StackSettings(BaseSettings):
    """Everything ``start`` needs, read from the environment (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="STACK_", extra="ignore", frozen=True)

    dir: Path = Field(REPO_ROOT / ".stack", description="The state folder.")
    host: str = Field(DEFAULT_HOST, description="Address the server binds.")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="Port the server binds.")
    workers: int = Field(DEFAULT_WORKERS, ge=1, description="The server's worker processes.")
    start_timeout: float = Field(
        DEFAULT_START_TIMEOUT_S, gt=0, description="Seconds to wait for /health at start."
    )
    backend_store_uri: str = Field(
        "",
        validation_alias="BACKEND_STORE_URI",
        description="Tracking and registry database (default: sqlite in the state folder).",
    )
    artifacts_destination: str = Field(
        "",
        validation_alias="ARTIFACTS_DESTINATION",
        description="Where the server keeps artifacts: a folder or s3://bucket/prefix "
        "(default: artifacts/ in the state folder).",
    )

    @property
    def state_dir(self) -> Path:
        return self.dir.expanduser().resolve()

    @property
    def backend(self) -> str:
        return self.backend_store_uri or f"sqlite:///{self.state_dir / 'mlflow.db'}"

    @property
    def artifacts(self) -> str:
        destination = self.artifacts_destination or str(self.state_dir / "artifacts")
        if "://" in destination:
            return destination
        return str(Path(destination).expanduser().resolve())

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "mlflow.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "mlflow.log"

    @property
    def info_file(self) -> Path:
        return self.state_dir / "mlflow.json"

    @property
    def url(self) -> str:
        return server_url(self.host, self.port)


def server_url(host: str, port: int) -> str:
    """The URL a client on this machine uses (a wildcard bind is reached on loopback)."""
    reachable = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://{reachable}:{port}"


def load_settings() -> StackSettings:
    """The stack's settings from the environment; a bad value is a one-line UserError."""
    try:
        return StackSettings()
    except ValidationError as exc:
        problems = "; ".join(f"{_env_name(error['loc'])}: {error['msg']}" for error in exc.errors())
        raise UserError(f"bad stack setting ({problems})") from None


def _env_name(loc: tuple) -> str:
    name = str(loc[0]) if loc else "?"
    field = StackSettings.model_fields.get(name)
    alias = field.validation_alias if field is not None else None
    return str(alias) if isinstance(alias, str) else f"STACK_{name.upper()}"


# --------------------------------------------------------------------------- processes


def looks_like_mlflow(pid: int) -> bool:
    """Whether ``pid`` runs mlflow (guards against a pid reused since the pid file was written)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the pid file
    return b"mlflow" in cmdline


def read_pid(config: StackSettings) -> int | None:
    """The pid of the running server, or None; a stale pid file is removed."""
    try:
        pid = int(config.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if is_alive(pid) and looks_like_mlflow(pid):
        return pid
    log.info("removing stale pid file %s (pid %d is not running)", config.pid_file, pid)
    config.pid_file.unlink(missing_ok=True)
    return None


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (bind test, as the server would)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def health_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        check_server(url, timeout)
    except UserError:
        return False
    return True


def indented_log_tail(path: Path) -> str:
    return "\n".join("    " + line for line in log_tail(path, LOG_TAIL_LINES).splitlines())


def stop_server(pgid: int) -> None:
    """Stop the server's process group (SIGKILL after STOP_TIMEOUT_S, with a warning)."""
    if not stop_group(pgid, STOP_TIMEOUT_S):
        log.warning(
            "mlflow server (pid %d) ignored SIGTERM for %.0f s: killed", pgid, STOP_TIMEOUT_S
        )


# --------------------------------------------------------------------------- checks

# SQLAlchemy dialect (+driver) -> (the module it imports, how to install it).
BACKEND_DRIVERS = {
    "postgresql": ("psycopg2", "pip install '.[postgres]'"),
    "postgresql+psycopg2": ("psycopg2", "pip install '.[postgres]'"),
    "postgresql+psycopg": ("psycopg", "pip install 'psycopg[binary]'"),
    "mysql": ("MySQLdb", "pip install mysqlclient"),
    "mysql+pymysql": ("pymysql", "pip install pymysql"),
    "mssql+pyodbc": ("pyodbc", "pip install pyodbc"),
}


def check_backend_driver(backend: str) -> None:
    """Fail at start, in one line, when the backend's database driver is not installed.

    Without this the server dies inside SQLAlchemy with a traceback in its log.
    """
    scheme = backend.split("://", 1)[0].lower()
    if scheme not in BACKEND_DRIVERS:
        return
    module, install = BACKEND_DRIVERS[scheme]
    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"BACKEND_STORE_URI is a {scheme}:// database but its driver ({module}) is not "
            f"installed: {install}"
        ) from None


def check_s3_destination(destination: str) -> None:
    """Fail at start, not at the first logged artifact, when the S3 bucket is unusable."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket = destination[len("s3://") :].split("/", 1)[0]
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    config = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2})
    where = f" at {endpoint}" if endpoint else ""
    try:
        boto3.client("s3", endpoint_url=endpoint, config=config).head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise UserError(
            f"no AWS credentials for {destination}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (the server holds them; clients do not need them)"
        ) from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        if code in ("404", "NoSuchBucket"):
            raise UserError(
                f"bucket {bucket!r}{where} does not exist: create it first "
                f"(aws s3 mb s3://{bucket}, or the MinIO console)"
            ) from None
        raise UserError(
            f"cannot use bucket {bucket!r}{where} ({code}): check the AWS credentials"
        ) from None
    except BotoCoreError as exc:
        raise UserError(
            f"cannot reach S3{where} for {destination} ({exc}); check MLFLOW_S3_ENDPOINT_URL"
        ) from None


# --------------------------------------------------------------------------- commands


def server_command(config: StackSettings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        config.backend,
        "--artifacts-destination",
        config.artifacts,
        "--host",
        config.host,
        "--port",
        str(config.port),
        "--workers",
        str(config.workers),
    ]


def server_env() -> dict[str, str]:
    """The server's environment: ours, minus MLflow's background job workers unless asked.

    Job execution (GenAI features this project does not use) starts eight more processes.
    """
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def start(config: StackSettings) -> int:
    """Start the server in the background and wait until it answers; return its pid."""
    pid = read_pid(config)
    if pid is not None:
        raise UserError(
            f"the MLflow stack is already running (pid {pid}, log {config.log_file}); "
            "stop it first with `make stack-down`"
        )
    if port_in_use(config.host, config.port):
        raise UserError(
            f"port {config.port} on {config.host} is already in use by another program: "
            "stop it or pick another port, e.g. STACK_PORT=5001 make stack"
        )
    check_backend_driver(config.backend)
    if config.artifacts.startswith("s3://"):
        check_s3_destination(config.artifacts)
    elif "://" not in config.artifacts:
        Path(config.artifacts).mkdir(parents=True, exist_ok=True)
    config.state_dir.mkdir(parents=True, exist_ok=True)

    with config.log_file.open("ab") as log_handle:
        log_handle.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start\n".encode())
    # Its own process group: it survives the shell that started it, and stops as one.
    process = start_in_group(
        server_command(config),
        log=config.log_file,
        env=server_env(),
        cwd=config.state_dir,
        append=True,
    )
    config.pid_file.write_text(f"{process.pid}\n")
    config.info_file.write_text(
        json.dumps({"pid": process.pid, "url": config.url, **_public(config)}, indent=2) + "\n"
    )
    wait_until_healthy(config, process)
    return process.pid


def _public(config: StackSettings) -> dict:
    return {
        "state_dir": str(config.state_dir),
        "host": config.host,
        "port": config.port,
        "workers": config.workers,
        "backend_store_uri": config.backend,
        "artifacts_destination": config.artifacts,
        "start_timeout": config.start_timeout,
    }


def wait_until_healthy(config: StackSettings, process: subprocess.Popen) -> None:
    """Return once /health answers; stop the server and fail with its log tail otherwise."""
    try:
        wait_until(
            lambda: health_ok(config.url),
            timeout=config.start_timeout,
            process=process,
            what=f"{config.url}/health",
        )
    except ProcessExited:
        config.pid_file.unlink(missing_ok=True)
        raise UserError(
            f"mlflow server exited at start (exit code {process.returncode}); last lines of "
            f"{config.log_file}:\n{indented_log_tail(config.log_file)}"
        ) from None
    except TimeoutError:
        stop_server(process.pid)
        config.pid_file.unlink(missing_ok=True)
        raise UserError(
            f"mlflow server did not answer {config.url}/health within "
            f"{config.start_timeout:.0f} s (raise STACK_START_TIMEOUT?); last lines of "
            f"{config.log_file}:\n{indented_log_tail(config.log_file)}"
        ) from None


def stop(config: StackSettings) -> bool:
    """Stop the server if it runs; return whether there was one to stop."""
    pid = read_pid(config)
    if pid is None:
        return False
    stop_server(pid)
    config.pid_file.unlink(missing_ok=True)
    return True


def status(config: StackSettings) -> int | None:
    """The running server's pid, or None."""
    return read_pid(config)


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m stack",
        description=(
            "Run the local MLflow tracking server (sqlite backend, proxied artifacts to a "
            "folder or S3). Settings come from STACK_HOST, STACK_PORT, STACK_WORKERS, "
            "BACKEND_STORE_URI, ARTIFACTS_DESTINATION, MLFLOW_S3_ENDPOINT_URL, STACK_DIR."
        ),
    )
    parser.add_argument("command", choices=("start", "stop", "status"))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    config = load_settings()
    if args.command == "start":
        pid = start(config)
        log.info(
            "MLflow server up at %s (pid %d); artifacts -> %s; log %s",
            config.url,
            pid,
            config.artifacts,
            config.log_file,
        )
        print(f"export MLFLOW_TRACKING_URI={config.url}")
    elif args.command == "stop":
        if stop(config):
            log.info("MLflow server stopped")
        else:
            log.info("MLflow server is not running")
    else:
        pid = status(config)
        if pid is None:
            print("mlflow server: not running")
        else:
            info = _read_info(config)
            print(
                f"mlflow server: running, pid {pid}, {info.get('url', config.url)}, "
                f"artifacts -> {info.get('artifacts_destination', '?')}, log {config.log_file}"
            )


def _read_info(config: StackSettings) -> dict:
    try:
        return json.loads(config.info_file.read_text())
    except (OSError, ValueError):
        return {}


run = cli(main)

if __name__ == "__main__":
    run()
