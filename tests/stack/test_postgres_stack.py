"""The MLflow stack in its production shape: `python -m stack start` on PostgreSQL with S3.

A throwaway PostgreSQL (tests/helpers/postgres.py), moto's S3, and the stack started with
``BACKEND_STORE_URI=postgresql+psycopg2://...`` and ``ARTIFACTS_DESTINATION=s3://...``.
Clients hold only ``MLFLOW_TRACKING_URI``: the pipeline's steps, promotions, a rollback and
the service following the alias all go through the server. Every server binds 127.0.0.1 on
a free port and is stopped in teardown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cli.processes import LOOPBACK, free_port
from tests.helpers.mlflow_run import mlflow_run, project_env
from tests.helpers.postgres import PostgresServer, find_binaries, start_postgres
from tests.helpers.servers import MotoS3, without_s3_credentials

ROOT = Path(__file__).resolve().parents[2]
NAME = "marketplace-classifier"
LOCK_NAME = "pg-lock-classifier"
STEP_TIMEOUT_S = 900  # generous: a busy CI machine
needs_postgres = pytest.mark.skipif(
    find_binaries() is None,
    reason="needs Debian's postgresql: apt-get install postgresql (.ci/run installs it)",
)


@dataclass(frozen=True)
class Stack:
    url: str
    bucket: str
    env: dict[str, str]


def stack(command: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stack", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stack_settings(state: Path, backend: str, artifacts: str) -> dict[str, str]:
    """The settings `python -m stack start` gets here, as docker-compose.yml gives them."""
    return {
        "STACK_DIR": str(state),
        "STACK_HOST": LOOPBACK,
        "STACK_PORT": str(free_port()),
        "STACK_WORKERS": "2",  # two server processes share the database, as replicas would
        "STACK_START_TIMEOUT": "400",
        "BACKEND_STORE_URI": backend,
        "ARTIFACTS_DESTINATION": artifacts,
    }


def client_env(tracking_uri: str) -> dict[str, str]:
    """A client's environment: the tracking URI, no S3 settings, this checkout's code."""
    return project_env(
        without_s3_credentials(), tracking=tracking_uri, drop=("MLFLOW_EXPERIMENT_NAME",)
    )


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    # Not under pytest's tmp folders: those are private to us, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="test-postgres-"))
    server = start_postgres(folder, find_binaries())
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_stack(
    postgres: PostgresServer, moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    postgres.create_database("mlflow")
    bucket = moto_s3.create_bucket(f"pg-stack-{uuid.uuid4().hex[:8]}")
    settings = stack_settings(
        tmp_path_factory.mktemp("pg-stack"), postgres.uri("mlflow"), f"s3://{bucket}/artifacts"
    )
    env = {**without_s3_credentials(), **moto_s3.env(), **settings}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = stack("start", env)
    assert started.returncode == 0, started.stderr
    url = f"http://{LOOPBACK}:{settings['STACK_PORT']}"
    yield Stack(url=url, bucket=bucket, env=env)
    stack("stop", env, timeout=60)


def pg_run(entry: str, env: dict[str, str], cwd: Path, **params: object) -> None:
    mlflow_run(entry, params, cwd=cwd, env=env, experiment="pg-stack", timeout=STEP_TIMEOUT_S)


def registry_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "registry", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )


def served_version(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url + "/model", timeout=5) as reply:
            return int(json.loads(reply.read())["version"])
    except OSError:
        return None


# --------------------------------------------------------------------------- the pipeline


@needs_postgres
@pytest.mark.slow
def test_pipeline_promotion_rollback_and_service_on_postgres_and_s3(
    pg_stack: Stack, moto_s3: MotoS3, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from tests.helpers.served_versions import PHOTOS, running_service, wait_until

    env = client_env(pg_stack.url)
    raw, clean = tmp_path / "raw", tmp_path / "clean"
    pg_run("demo_data", env, tmp_path, out=raw, products=40)
    pg_run("clean_tabular", env, tmp_path, raw=raw, out=clean)
    pg_run("clean_images", env, tmp_path, raw=raw, out=clean, size=32)
    for seed in (0, 1):
        pg_run(
            "train",
            env,
            tmp_path,
            clean=clean,
            epochs=1,
            arch="resnet18",
            weights="none",
            image_size=32,
            batch_size=16,
            trainable_layers="all",
            num_workers=0,
            seed=seed,
        )

    client = MlflowClient(pg_stack.url)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))
    assert versions == [1, 2]
    experiment = client.get_experiment_by_name("pg-stack")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 5 and all(run.info.status == "FINISHED" for run in runs)
    assert all(run.info.artifact_uri.startswith("mlflow-artifacts:") for run in runs)
    keys = moto_s3.keys(pg_stack.bucket, "artifacts/")
    assert any(key.endswith("/MLmodel") for key in keys), "the models' files are in S3"

    promoted = registry_cli(env, "promote", "--version", "1", "--clean", str(clean))
    assert promoted.returncode == 0, promoted.stderr
    service_env = {**env, "SERVE_RELOAD_INTERVAL": "0.5"}
    with running_service(tmp_path / "serve", service_env) as service:
        wait_until(lambda: served_version(service.url) == 1, what="serving version 1")
        request = urllib.request.Request(
            service.url + "/predict",
            data=_multipart(PHOTOS[0]),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            assert reply.headers["X-Model-Version"] == "1"
            assert json.loads(reply.read())["model"]["version"] == 1

        forced = registry_cli(env, "promote", "--version", "2", "--force", "--clean", str(clean))
        assert forced.returncode == 0, forced.stderr
        wait_until(lambda: served_version(service.url) == 2, what="following to version 2")

        back = registry_cli(env, "rollback", "--reason", "postgres stack test")
        assert back.returncode == 0, back.stderr
        wait_until(lambda: served_version(service.url) == 1, what="following the rollback")

    aliases = client.get_registered_model(NAME).aliases
    assert aliases == {"production": "1", "previous-production": "2"}


BOUNDARY = "pg-stack-boundary"


def _multipart(photo: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + photo + f"\r\n--{BOUNDARY}--\r\n".encode()


# --------------------------------------------------------------------------- the promotion lock


@pytest.fixture(scope="module")
def lock_versions(pg_stack: Stack) -> str:
    """Three small versions of LOCK_NAME logged through the server; returns the name."""
    import mlflow

    from marketplace_models.image import log_classifier
    from marketplace_models.network import ClassifierConfig
    from registry.register import register_classifier
    from tests.helpers.served_versions import CATEGORIES, IMAGE_SIZE, PHOTOS, _network

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(pg_stack.url)
    try:
        experiment = mlflow.set_experiment("pg-lock")
        config = ClassifierConfig(arch="resnet18", categories=CATEGORIES, image_size=IMAGE_SIZE)
        for seed in range(3):
            with mlflow.start_run(experiment_id=experiment.experiment_id):
                mlflow.log_metric("test_accuracy", 0.5 + seed / 10)
                info = log_classifier(_network(seed), config, example_image=PHOTOS[0], onnx=False)
            register_classifier(info.model_uri, model_name=LOCK_NAME)
    finally:
        mlflow.set_tracking_uri(previous)
    return LOCK_NAME


@needs_postgres
@pytest.mark.slow
def test_two_promote_processes_at_once_leave_one_production(
    pg_stack: Stack, lock_versions: str, tmp_path: Path
) -> None:
    """Two processes sharing nothing but the server: one holder, both decisions recorded."""
    from mlflow import MlflowClient

    client = MlflowClient(pg_stack.url)
    client.set_registered_model_alias(lock_versions, "production", "1")
    env = client_env(pg_stack.url)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "registry", "promote", "--model-name", lock_versions]
            + ["--version", version, "--force", "--by", f"client-{version}"]
            + ["--clean", str(tmp_path / "none")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for version in ("2", "3")
    ]
    results = [process.communicate(timeout=STEP_TIMEOUT_S) for process in processes]

    assert [p.returncode for p in processes] == [0, 0], results
    aliases = {k: int(v) for k, v in client.get_registered_model(lock_versions).aliases.items()}
    assert {aliases["production"], aliases["previous-production"]} == {2, 3}
    holders = [
        v
        for v in ("1", "2", "3")
        if "production" in client.get_model_version(lock_versions, v).aliases
    ]
    assert len(holders) == 1
    for version in ("2", "3"):  # each decision is on its version, with who made it
        tags = client.get_model_version(lock_versions, version).tags
        assert tags["promotion.by"] == f"client-{version}", tags
    winner = client.get_model_version(lock_versions, str(aliases["production"])).tags
    assert winner["promotion.previous_version"] == str(aliases["previous-production"])
    assert lock_versions + ".promotion-lock" not in {
        m.name for m in client.search_registered_models()
    }, "the lock is released"


@needs_postgres
@pytest.mark.slow
def test_a_crashed_holders_lock_is_broken_on_postgres(pg_stack: Stack, lock_versions: str) -> None:
    from mlflow import MlflowClient

    from cli import UserError
    from registry.promotion import LOCK_SUFFIX, promotion_lock

    client = MlflowClient(pg_stack.url)
    lock = lock_versions + LOCK_SUFFIX
    client.create_registered_model(lock)  # what a crashed holder leaves behind
    with (
        pytest.raises(UserError, match="in progress"),
        promotion_lock(client, lock_versions, timeout=0.5),
    ):
        pass  # a fresh lock is respected
    with promotion_lock(client, lock_versions, timeout=30, stale_after=-1.0):
        assert client.get_registered_model(lock).tags.get("holder"), "now ours"
    assert lock not in {m.name for m in client.search_registered_models()}


# --------------------------------------------------------------------------- settings


def test_a_missing_postgres_driver_names_the_extra(tmp_path: Path) -> None:
    """Without psycopg2 the stack says which extra to install, before starting anything."""
    shim = tmp_path / "no-driver" / "psycopg2"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg2'\", name='psycopg2')\n"
    )
    env = {
        **without_s3_credentials(),
        "PYTHONPATH": f"{shim.parent}{os.pathsep}{ROOT}",
        **stack_settings(
            tmp_path / "stack", "postgresql+psycopg2://mlflow@127.0.0.1:1/mlflow", "artifacts"
        ),
    }
    result = stack("start", env)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "driver (psycopg2) is not installed: pip install '.[postgres]'" in line
    assert not (tmp_path / "stack" / "mlflow.pid").exists()


def test_compose_runs_the_settings_this_test_runs() -> None:
    """docker-compose.yml's server: the stack's command, with the settings used above."""
    from stack.run import StackSettings, server_command

    text = (ROOT / "docker-compose.yml").read_text()
    defaults = re.sub(r"(?<!\$)\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)  # as with no .env
    mlflow = yaml.safe_load(defaults)["services"]["mlflow"]
    environment = mlflow["environment"]
    backend, artifacts = environment["BACKEND_STORE_URI"], environment["ARTIFACTS_DESTINATION"]
    assert backend.startswith("postgresql+psycopg2://")
    assert artifacts.startswith("s3://")
    settings = StackSettings(
        BACKEND_STORE_URI=backend,
        ARTIFACTS_DESTINATION=artifacts,
        host="0.0.0.0",
        port=5000,
        workers=4,
    )
    assert [str(part) for part in mlflow["command"]] == server_command(settings)[2:]
    assert environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    tested = set(stack_settings(Path("."), backend, artifacts)) | set(MotoS3("", None).env())
    shared = {"BACKEND_STORE_URI", "ARTIFACTS_DESTINATION", "MLFLOW_S3_ENDPOINT_URL"}
    assert shared <= set(environment) & tested
