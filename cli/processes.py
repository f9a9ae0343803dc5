"""Child processes the project starts: each in its own process group, polled until it
answers, stopped as a group (SIGTERM, then SIGKILL for whatever lingers).

Used by ``python -m stack``, ``python -m serve.try_it``, ``bench/`` and the tests, so that a
server started by any of them (uvicorn and its workers, ``mlflow server`` and its children)
never outlives the command that started it. Linux semantics; on a system without ``/proc`` a
group is taken to be alive while it accepts signals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
POLL_INTERVAL_S = 0.25


class ProcessExited(RuntimeError):
    """The child process ended while it was being waited on."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path | None, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ("(no log)" when there is none)."""
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def start_in_group(
    command: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    append: bool = False,
) -> subprocess.Popen:
    """Start ``command`` in a new session (its own process group), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab" if append else "wb") as handle:
        return subprocess.Popen(
            list(command),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None where it cannot be read."""
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


def stop_group(pgid: int, timeout: float = 20.0, process: subprocess.Popen | None = None) -> bool:
    """SIGTERM process group ``pgid``; SIGKILL what is left after ``timeout`` seconds.

    ``process`` (the group's leader, when this process started it) is reaped. Returns
    whether the group stopped on SIGTERM alone.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    graceful = False
    while time.monotonic() < deadline:
        if process is not None:
            process.poll()  # reap the leader, or it stays a zombie member of the group
        if not group_alive(pgid):
            graceful = True
            break
        time.sleep(POLL_INTERVAL_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)  # children that outlive the leader, too
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    return graceful


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    process: subprocess.Popen | None = None,
    what: str = "the process to be ready",
) -> None:
    """Poll ``ready()`` until it returns True.

    Raises :class:`ProcessExited` as soon as ``process`` ends, and ``TimeoutError`` after
    ``timeout`` seconds, each naming ``what`` was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ProcessExited(f"exited with code {process.returncode} while waiting for {what}")
        if ready():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(POLL_INTERVAL_S)
