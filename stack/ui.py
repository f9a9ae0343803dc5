"""``make ui``: the MLflow UI on the local store, warmed up before its address is printed.

Why the warm-up (MLflow 3.17): the UI's first GraphQL request imports ``mlflow.server.auth``
lazily (``mlflow/server/handlers.py``, ``_get_graphql_auth_middleware``; without Flask-WTF
the import then fails and is ignored). That import executes
``mlflow/server/auth/db/models.py`` in the request's thread. When another first request
(the registered model's page: ``/registered-models/get``) runs its first ORM query at that
moment, SQLAlchemy's ``configure_mappers()`` configures every declarative registry, the auth
models' half-defined one included, and fails with ``NameError: name 'SqlUserRoleAssignment'
is not defined``; once the module has been imported, it never happens again (why a reload
works). So the UI runs one worker, and before anyone opens it one GraphQL request and then
one registry request go through it, one after the other.

    python -m stack.ui --backend-store-uri sqlite:///mlflow.db --port 5000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

STARTUP_TIMEOUT_S = 180.0
WARM_UP = (
    # (path, JSON body or None for a GET): the lazy auth import first, then the ORM's first query
    ("/graphql", {"query": "{ __typename }"}),
    ("/ajax-api/2.0/mlflow/registered-models/search?max_results=1", None),
    ("/ajax-api/2.0/mlflow/experiments/search?max_results=1", None),
)


def request(url: str, body: dict | None = None, timeout: float = 30.0) -> int:
    """The HTTP status of one GET (or JSON POST when ``body`` is given)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_until_up(base: str, process: subprocess.Popen, timeout: float = STARTUP_TIMEOUT_S):
    """Poll ``/health`` until the UI answers; an error if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"mlflow ui exited with code {process.returncode} before it answered")
        try:
            if request(f"{base}/health", timeout=5.0) == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"mlflow ui did not answer on {base} within {timeout:.0f} s")


def warm_up(base: str) -> None:
    """The warm-up requests, one after another (see the module docstring)."""
    for path, body in WARM_UP:
        request(base + path, body)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m stack.ui", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend-store-uri", default="sqlite:///mlflow.db")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    args = p.parse_args(argv)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri"]
    command += [args.backend_store_uri, "--host", args.host, "--port", str(args.port)]
    process = subprocess.Popen([*command, "--workers", "1"])
    base = f"http://{args.host}:{args.port}"
    try:
        wait_until_up(base, process)
        warm_up(base)
        print(f"The MLflow UI is ready: {base}", flush=True)
        print(f"  the runs: {base}/#/experiments/1/runs?workflowType=machine_learning", flush=True)
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
