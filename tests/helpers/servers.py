"""Throwaway servers for tests (moto's S3, a real ``mlflow server``) and a tiny export for them.

The pytest fixtures that wrap these live in ``tests/helpers/fixtures_servers.py``. Everything binds
127.0.0.1 and is stopped by its owner's teardown; nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cli.processes import (
    LOOPBACK,
    ProcessExited,
    free_port,
    log_tail,
    start_in_group,
    stop_group,
    wait_until,
)

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
MLFLOW_START_TIMEOUT_S = 400.0  # generous: a busy CI machine can take minutes

TINY_IMAGE_IDS = ("0a1b", "2c3d", "4e5f")
LAYOUT = ("Products.csv", "Images.csv", *(f"images/{i}.jpg" for i in TINY_IMAGE_IDS))


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (12, 8), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_tiny_export(folder: Path) -> Path:
    """Two small CSVs and three JPEGs in the raw layout, plus files that are not part of it."""
    (folder / "images").mkdir(parents=True)
    (folder / "Products.csv").write_bytes(
        b",id,product_name,category,product_description,price,location,url,page_id,"
        b"create_time\r\n"
        b'0,p1,"Mirror | in Leeds, West Yorkshire | Gumtree",Home & Garden / Mirrors,'
        b'Nice\rmirror,\xc2\xa35.00,"Leeds, West Yorkshire",https://x/1,1,2022-02-26\n'
    )
    (folder / "Images.csv").write_bytes(
        b",id,product_id,bucket_link,image_ref,create_time\r\n"
        + b"".join(f"{n},{i},p1,b,r,2022-02-26\n".encode() for n, i in enumerate(TINY_IMAGE_IDS))
    )
    for n, image_id in enumerate(TINY_IMAGE_IDS):
        (folder / "images" / f"{image_id}.jpg").write_bytes(_jpeg((80 * n, 40, 200)))
    (folder / "notes.txt").write_text("not part of the layout")
    (folder / "images" / ".DS_Store").write_bytes(b"junk")
    return folder


def closed_endpoint() -> str:
    """An http:// endpoint on loopback where nothing listens (connections are refused)."""
    return f"http://{LOOPBACK}:{free_port()}"


def wait_for_http(
    url: str,
    *,
    timeout: float = MLFLOW_START_TIMEOUT_S,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    """Poll ``url`` until it answers 200; fail early (with the log tail) if ``process`` dies."""

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_until(answers, timeout=timeout, process=process, what=url)
    except (ProcessExited, TimeoutError) as exc:
        raise RuntimeError(f"{exc}\n{log_tail(log)}") from None


def without_s3_credentials(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` with every AWS_* and MLFLOW_S3_* variable removed.

    Also turns off the EC2 metadata lookup, so that "no credentials" is found at once.
    """
    base = dict(os.environ if env is None else env)
    clean = {k: v for k, v in base.items() if not k.startswith(("AWS_", "MLFLOW_S3_"))}
    clean["AWS_EC2_METADATA_DISABLED"] = "true"
    clean["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    clean["AWS_CONFIG_FILE"] = os.devnull
    return clean


# --------------------------------------------------------------------------- moto S3


@dataclass
class MotoS3:
    """A moto S3 server running in a thread of this process."""

    endpoint: str
    server: object

    def env(self) -> dict[str, str]:
        """Variables that point boto3 (AWS_ENDPOINT_URL) and MLflow at this server."""
        return {
            **FAKE_AWS,
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
            region_name=FAKE_AWS["AWS_DEFAULT_REGION"],
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix``: key -> size."""
        found: dict[str, int] = {}
        for page in (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        ):
            found.update({obj["Key"]: obj["Size"] for obj in page.get("Contents", [])})
        return found

    def upload_folder(self, folder: Path, bucket: str, prefix: str = "") -> int:
        """Upload every file under ``folder`` to ``s3://bucket/prefix/...``; return the count."""
        client = self.client()
        count = 0
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                relative = path.relative_to(folder).as_posix()
                key = f"{prefix.strip('/')}/{relative}" if prefix.strip("/") else relative
                client.upload_file(str(path), bucket, key)
                count += 1
        return count

    def stop(self) -> None:
        self.server.stop()


def start_moto() -> MotoS3:
    """Start moto's S3 server on a free loopback port (in-process thread, ready on return)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return MotoS3(endpoint=f"http://{host}:{port}", server=server)


# --------------------------------------------------------------------------- mlflow server


@dataclass
class MlflowServer:
    """A real ``mlflow server`` subprocess in its own process group."""

    url: str
    process: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the whole group (mlflow starts uvicorn children), SIGKILL if it lingers."""
        stop_group(self.process.pid, timeout, self.process)


def start_mlflow_server(
    workdir: Path,
    *,
    artifacts_destination: str,
    env: dict[str, str] | None = None,
    backend_store_uri: str | None = None,
    timeout: float = MLFLOW_START_TIMEOUT_S,
) -> MlflowServer:
    """Start ``mlflow server`` (sqlite in ``workdir``, proxied artifacts) and wait for /health.

    ``env`` is added to this process's environment (e.g. ``MotoS3.env()`` for S3).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "mlflow-server.log"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    full_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    process = start_in_group(command, log=log, env=full_env, cwd=workdir)
    server = MlflowServer(url=f"http://{LOOPBACK}:{port}", process=process, log=log)
    try:
        wait_for_http(server.url + "/health", timeout=timeout, process=process, log=log)
    except BaseException:
        server.stop()
        raise
    return server


# --------------------------------------------------------------------------- a store that stalls


class StallingProxy:
    """A TCP proxy to ``upstream`` (an ``mlflow server``) that stalls artifact downloads.

    Every request passes through until one starts with ``stall_prefix`` (by default a
    download from the proxied artifact store, ``GET /api/2.0/mlflow-artifacts/artifacts/``):
    that connection is then held open and never answered, as by an artifact store that
    stopped answering mid-download. :attr:`stalled` is set once that happens.
    """

    DOWNLOAD = b"GET /api/2.0/mlflow-artifacts/artifacts/"

    def __init__(self, upstream: str, stall_prefix: bytes = DOWNLOAD) -> None:
        import threading

        host, port = upstream.removeprefix("http://").rstrip("/").split(":")
        self.upstream = (host, int(port))
        self.stall_prefix = stall_prefix
        self.stalled = threading.Event()
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server((LOOPBACK, 0))
        self.url = f"http://{LOOPBACK}:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._pump_requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump_requests(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if chunk.startswith(self.stall_prefix):
                    self.stalled.set()
                    self._closing.wait()  # never forwarded, never answered
                    return
                sink.sendall(chunk)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


UI_READY_LINE = "The MLflow UI is ready"  # what stack.ui prints once warmed up


@dataclass
class RunningUI:
    """A ``python -m stack.ui`` started by :func:`running_ui`: its address, its output so far
    and its process (its return code is set once stopped)."""

    url: str
    lines: list[str]
    process: subprocess.Popen


@contextlib.contextmanager
def running_ui(backend_uri: str, cwd: Path, *, merge_stderr: bool = False) -> Iterator[RunningUI]:
    """``python -m stack.ui`` (make ui's command) on a free loopback port over
    ``backend_uri``, yielded once it says it is ready; stopped by SIGINT to its process
    group, as Ctrl-C in make ui's terminal would."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-m", "stack.ui", "--port", str(port)]
    command += ["--backend-store-uri", backend_uri]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else None,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if UI_READY_LINE in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(timeout=300), "".join(lines)[-3000:]
        yield RunningUI(f"http://{LOOPBACK}:{port}", lines, process)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
