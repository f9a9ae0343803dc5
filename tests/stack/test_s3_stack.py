"""The MLflow stack: proxied artifacts land in S3 (moto); `python -m stack` starts and stops.

Every server binds 127.0.0.1 on a free port and is stopped in teardown.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.processes import group_alive
from steps.raw_export import INGEST_MARKER
from tests.helpers.fixtures_servers import S3TrackingServer
from tests.helpers.mlflow_run import mlflow_run, project_env
from tests.helpers.servers import (
    LAYOUT,
    LOOPBACK,
    MotoS3,
    free_port,
    make_tiny_export,
    without_s3_credentials,
)

ROOT = Path(__file__).resolve().parents[2]


def client_env(tracking_uri: str) -> dict[str, str]:
    """A client's environment in proxied mode: the tracking URI, and no S3 settings at all."""
    return project_env(
        without_s3_credentials(), tracking=tracking_uri, drop=("MLFLOW_EXPERIMENT_NAME",)
    )


@pytest.mark.slow
def test_step_artifacts_reach_s3_through_the_server(
    s3_tracking_server: S3TrackingServer, moto_s3: MotoS3, tmp_path: Path
) -> None:
    """`mlflow run . -e ingest` with only MLFLOW_TRACKING_URI set: its manifest lands in S3."""
    from mlflow.tracking import MlflowClient

    export = make_tiny_export(tmp_path / "export")
    out = tmp_path / "raw"
    params = {"source": export, "out": out, "workers": 2}
    env = client_env(s3_tracking_server.url)

    result = mlflow_run("ingest", params, cwd=tmp_path, env=env, experiment="s3-stack", check=False)

    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted([*LAYOUT, INGEST_MARKER]), "the export, and ingest's manifest"
    client = MlflowClient(s3_tracking_server.url)
    experiment = client.get_experiment_by_name("s3-stack")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "proxied, not direct S3"
    key = (
        f"{s3_tracking_server.prefix}/{experiment.experiment_id}/{run.info.run_id}"
        "/artifacts/manifest.json"
    )
    keys = moto_s3.keys(s3_tracking_server.bucket, s3_tracking_server.prefix + "/")
    assert key in keys, sorted(keys)
    body = moto_s3.client().get_object(Bucket=s3_tracking_server.bucket, Key=key)["Body"].read()
    manifest = json.loads(body)
    assert sorted(f["path"] for f in manifest["files"]) == sorted(LAYOUT)
    assert run.data.metrics["files_downloaded"] == len(LAYOUT)


# --------------------------------------------------------------------------- python -m stack


def stack(command: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stack", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings for a stack in ``tmp_path`` on a free port; stopped in teardown."""
    env = {
        **os.environ,
        "STACK_DIR": str(tmp_path / "stack"),
        "STACK_HOST": LOOPBACK,
        "STACK_PORT": str(free_port()),
        "STACK_WORKERS": "1",
        "STACK_START_TIMEOUT": "400",  # generous: a busy CI machine can take minutes
    }
    for name in ("ARTIFACTS_DESTINATION", "BACKEND_STORE_URI", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    yield env
    stack("stop", env, timeout=60)


@pytest.mark.slow
def test_stack_starts_refuses_a_second_copy_and_stops(stack_env: dict[str, str]) -> None:
    from mlflow.tracking import MlflowClient

    state = Path(stack_env["STACK_DIR"])
    url = f"http://{LOOPBACK}:{stack_env['STACK_PORT']}"

    started = stack("start", stack_env)

    assert started.returncode == 0, started.stderr
    assert f"export MLFLOW_TRACKING_URI={url}" in started.stdout
    assert health(url), "start returns only once /health answers"
    pid = int((state / "mlflow.pid").read_text())
    assert (state / "mlflow.log").stat().st_size > 0
    assert "running" in stack("status", stack_env).stdout

    second = stack("start", stack_env)
    assert second.returncode == 2
    assert f"already running (pid {pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1

    # Artifacts are proxied into the default local destination, .stack/artifacts.
    client = MlflowClient(url)
    experiment_id = client.create_experiment("stack")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_text(run_id, "hello", "notes/hello.txt")
    stored = state / "artifacts" / experiment_id / run_id / "artifacts" / "notes" / "hello.txt"
    assert stored.read_text() == "hello"
    assert (state / "mlflow.db").is_file()

    stopped = stack("stop", stack_env)

    assert stopped.returncode == 0, stopped.stderr
    assert not (state / "mlflow.pid").exists()
    assert not health(url)
    assert not group_alive(pid), "the whole process group (uvicorn included) is gone"
    assert "not running" in stack("status", stack_env).stdout
    assert stack("stop", stack_env).returncode == 0, "stopping a stopped stack is fine"


def test_stack_refuses_a_taken_port(stack_env: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind((LOOPBACK, int(stack_env["STACK_PORT"])))
        busy.listen()
        result = stack("start", stack_env)
    assert result.returncode == 2
    assert f"port {stack_env['STACK_PORT']} on {LOOPBACK} is already in use" in result.stderr
    assert not (Path(stack_env["STACK_DIR"]) / "mlflow.pid").exists()


@pytest.mark.slow
def test_stack_reports_a_server_that_dies_at_start(stack_env: dict[str, str]) -> None:
    env = {**stack_env, "BACKEND_STORE_URI": "nosuchscheme://nowhere"}
    result = stack("start", env)
    assert result.returncode == 2
    assert "mlflow server exited at start" in result.stderr
    assert "nosuchscheme" in result.stderr, "the log tail is shown"
    assert not (Path(stack_env["STACK_DIR"]) / "mlflow.pid").exists()


def test_stack_checks_the_s3_bucket_before_starting(
    stack_env: dict[str, str], moto_s3: MotoS3
) -> None:
    env = {
        **stack_env,
        **moto_s3.env(),
        "ARTIFACTS_DESTINATION": "s3://no-such-bucket-for-mlflow/artifacts",
    }
    result = stack("start", env)
    assert result.returncode == 2
    assert "bucket 'no-such-bucket-for-mlflow'" in result.stderr
    assert "does not exist" in result.stderr
    assert not (Path(stack_env["STACK_DIR"]) / "mlflow.pid").exists()


# --------------------------------------------------------------------------- docker compose


def test_compose_file_has_the_production_shape() -> None:
    """docker-compose.yml (not run in CI) parses and wires PostgreSQL, MinIO and the server."""
    import re

    import yaml

    text = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    assert {"postgres", "minio", "create-bucket", "mlflow"} <= set(services)
    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"])
    assert "--backend-store-uri postgresql+psycopg2://" in command
    assert "--artifacts-destination s3://" in command
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing" in " ".join(services["create-bucket"]["command"])
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port}: publish on loopback only"
    # Every ${VAR} has a default, so `docker compose up` works without a .env file.
    variables = re.findall(r"(?<!\$)\$\{([^}]*)\}", text)
    assert variables and all(":-" in variable for variable in variables), variables
    dockerfile = (ROOT / mlflow["build"]["context"] / "Dockerfile").read_text()
    assert "psycopg2" in dockerfile and "boto3" in dockerfile
