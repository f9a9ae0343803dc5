"""What the HTTP benchmarks share: servers in their own process group, their CPU time,
readiness polling, multipart bodies, and writing the results.

``bench/serve.py`` and ``bench/search.py`` start real servers (``python -m serve``,
``mlflow models serve``) on a free loopback port, measure the CPU seconds of every process
of the server's group from /proc (uvicorn workers included), and stop the whole group
afterwards, SIGKILL for anything that lingers.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cli.processes import LOOPBACK, free_port, log_tail, start_in_group, stop_group

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 300.0
BOUNDARY = "bench-boundary-7f3a9c"
MULTIPART_HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
PHOTO_SIDES = (640, 1024)  # long side of a real listing photo, in pixels


@dataclass
class Server:
    """A server subprocess in its own process group."""

    name: str
    url: str
    process: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the whole group, SIGKILL if it lingers (uvicorn workers included)."""
        stop_group(self.process.pid, timeout, self.process)

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log, lines)


def group_cpu_seconds(group: int) -> float:
    """User + system CPU seconds of the live processes of process group ``group`` (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == group:  # fields[0] is the state (field 3 of stat)
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def server_environment(
    tracking_uri: str,
    extra: dict[str, str],
    drop_prefixes: tuple[str, ...] = (),
    drop_names: Iterable[str] = (),
) -> dict[str, str]:
    """This environment without the variables that would change a server's defaults
    (``drop_prefixes``, ``drop_names``), this Python's bin first on PATH, the repo on
    PYTHONPATH, ``tracking_uri``, then ``extra``."""
    names = set(drop_names)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(drop_prefixes) and key not in names
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


def launch(name: str, command: list[str], env: dict[str, str], url: str, folder: Path) -> Server:
    """Start ``command`` in ``folder`` in a new session, its output in ``folder/<name>.log``."""
    log_path = folder / f"{name}.log"
    process = start_in_group(command, log=log_path, env=env, cwd=folder)
    return Server(name=name, url=url, process=process, log=log_path)


def start_service(name: str, env: dict[str, str], folder: Path) -> Server:
    """``python -m serve`` on a free loopback port, with ``env`` (see server_environment)."""
    port = free_port()
    env = {**env, "SERVE_HOST": LOOPBACK, "SERVE_PORT": str(port)}
    command = [sys.executable, "-m", "serve"]
    return launch(name, command, env, f"http://{LOOPBACK}:{port}", folder)


def wait_ready(
    server: Server,
    path: str,
    accept: Callable[[bytes], bool] | None = None,
    timeout: float = START_TIMEOUT_S,
    what: str = "ready",
) -> bytes:
    """Poll ``path`` until it answers 200 (and ``accept`` takes its body); the body.

    Fails early, with the server's log, when the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited early:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + path, timeout=5) as reply:
                body = reply.read()
                if reply.status == 200 and (accept is None or accept(body)):
                    return body
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{server.name} not {what} within {timeout:.0f} s:\n{server.log_tail()}")


def multipart_body(photo: bytes, field: str = "image") -> bytes:
    """A multipart body with one JPEG in ``field``, to send with MULTIPART_HEADERS."""
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="photo.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + photo + f"\r\n--{BOUNDARY}--\r\n".encode()


def read_photo(path: Path) -> bytes | None:
    """The file's bytes when it decodes fully and its long side is a real photo's, else None."""
    from PIL import Image

    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            long_side = max(image.size)
    except OSError:  # the export's deliberately truncated files
        return None
    return data if PHOTO_SIDES[0] <= long_side <= PHOTO_SIDES[1] else None


@dataclass
class Sent:
    """Each request's latency (seconds), how many failed, and the first failure."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None


async def send(
    client, url: str, bodies: list[bytes], headers: dict[str, str], count: int, concurrency: int
) -> Sent:
    """``count`` POSTs of ``bodies`` in turn to ``url``, ``concurrency`` in flight, with
    an httpx ``AsyncClient``; a reply other than 200 counts as an error."""
    sent = Sent()
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < count:
            index, issued = issued, issued + 1
            started = time.perf_counter()
            reply = await client.post(url, content=bodies[index % len(bodies)], headers=headers)
            sent.latencies.append(time.perf_counter() - started)
            if reply.status_code != 200:
                sent.errors += 1
                sent.first_error = sent.first_error or f"{reply.status_code}: {reply.text[:300]}"

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent


def write_results(results: dict, path: Path) -> None:
    """``results`` as JSON at ``path``, replaced at once (never half written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(partial, path)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that every server is stopped on the way out."""

    def handler(signum: int, frame) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
