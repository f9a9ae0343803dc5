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
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cli import ArgumentParser, UserError, check_server, cli

log = logging.getLogger("stack")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_WORKERS = 2
DEFAULT_START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class StackConfig:
    """Everything ``start`` needs, read from the environment."""

    state_dir: Path
    host: str
    port: int
    workers: int
    backend_store_uri: str
    artifacts_destination: str
    start_timeout: float

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


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not a whole number") from None


def load_config(environ: dict[str, str] | None = None) -> StackConfig:
    """Read the stack's settings from the environment (see the module docstring)."""
    env = os.environ if environ is None else environ
    state_dir = Path(env.get("STACK_DIR") or REPO_ROOT / ".stack").expanduser().resolve()
    port = _env_int("STACK_PORT", DEFAULT_PORT)
    if not 0 < port < 65536:
        raise UserError(f"STACK_PORT={port} is not a TCP port (1-65535)")
    destination = env.get("ARTIFACTS_DESTINATION") or str(state_dir / "artifacts")
    if "://" not in destination:
        destination = str(Path(destination).expanduser().resolve())
    try:
        timeout = float(env.get("STACK_START_TIMEOUT") or DEFAULT_START_TIMEOUT_S)
    except ValueError:
        raise UserError("STACK_START_TIMEOUT must be a number of seconds") from None
    return StackConfig(
        state_dir=state_dir,
        host=env.get("STACK_HOST") or DEFAULT_HOST,
        port=port,
        workers=max(1, _env_int("STACK_WORKERS", DEFAULT_WORKERS)),
        backend_store_uri=env.get("BACKEND_STORE_URI") or f"sqlite:///{state_dir / 'mlflow.db'}",
        artifacts_destination=destination,
        start_timeout=timeout,
    )


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None where /proc is missing."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def is_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    return not (fields and fields[0] == "Z")


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
                return True
    return False


def looks_like_mlflow(pid: int) -> bool:
    """Whether ``pid`` runs mlflow (guards against a pid reused since the pid file was written)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the pid file
    return b"mlflow" in cmdline


def read_pid(config: StackConfig) -> int | None:
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


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) or "    (empty log)"


def stop_group(pgid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.2)
    log.warning("mlflow server (pid %d) ignored SIGTERM for %.0f s: killing it", pgid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# --------------------------------------------------------------------------- checks


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


def server_command(config: StackConfig) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        config.backend_store_uri,
        "--artifacts-destination",
        config.artifacts_destination,
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


def start(config: StackConfig) -> int:
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
    if config.artifacts_destination.startswith("s3://"):
        check_s3_destination(config.artifacts_destination)
    elif "://" not in config.artifacts_destination:
        Path(config.artifacts_destination).mkdir(parents=True, exist_ok=True)
    config.state_dir.mkdir(parents=True, exist_ok=True)

    with config.log_file.open("ab") as log_handle:
        log_handle.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start\n".encode())
        log_handle.flush()
        process = subprocess.Popen(
            server_command(config),
            cwd=config.state_dir,
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            env=server_env(),
            start_new_session=True,  # its own process group: survives the shell, stops as one
        )
    config.pid_file.write_text(f"{process.pid}\n")
    config.info_file.write_text(
        json.dumps({"pid": process.pid, "url": config.url, **_public(config)}, indent=2) + "\n"
    )
    wait_until_healthy(config, process)
    return process.pid


def _public(config: StackConfig) -> dict:
    fields = asdict(config)
    fields["state_dir"] = str(config.state_dir)
    return fields


def wait_until_healthy(config: StackConfig, process: subprocess.Popen) -> None:
    """Return once /health answers; stop the server and fail with its log tail otherwise."""
    deadline = time.monotonic() + config.start_timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            config.pid_file.unlink(missing_ok=True)
            raise UserError(
                f"mlflow server exited at start (exit code {code}); last lines of "
                f"{config.log_file}:\n{log_tail(config.log_file)}"
            )
        if health_ok(config.url):
            return
        time.sleep(0.5)
    stop_group(process.pid)
    config.pid_file.unlink(missing_ok=True)
    raise UserError(
        f"mlflow server did not answer {config.url}/health within {config.start_timeout:.0f} s "
        f"(raise STACK_START_TIMEOUT?); last lines of {config.log_file}:\n"
        f"{log_tail(config.log_file)}"
    )


def stop(config: StackConfig) -> bool:
    """Stop the server if it runs; return whether there was one to stop."""
    pid = read_pid(config)
    if pid is None:
        return False
    stop_group(pid)
    config.pid_file.unlink(missing_ok=True)
    return True


def status(config: StackConfig) -> int | None:
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
    config = load_config()
    if args.command == "start":
        pid = start(config)
        log.info(
            "MLflow server up at %s (pid %d); artifacts -> %s; log %s",
            config.url,
            pid,
            config.artifacts_destination,
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


def _read_info(config: StackConfig) -> dict:
    try:
        return json.loads(config.info_file.read_text())
    except (OSError, ValueError):
        return {}


run = cli(main)

if __name__ == "__main__":
    run()
