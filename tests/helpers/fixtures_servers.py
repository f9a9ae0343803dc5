"""Pytest fixtures for the throwaway servers in ``tests/helpers/servers.py`` (a pytest plugin).

Loaded by ``pytest_plugins = ["tests.helpers.fixtures_servers"]`` in ``tests/registry/conftest.py``.

* ``moto_s3`` (session): moto's S3 server on a free loopback port (a :class:`MotoS3`).
* ``s3_bucket``: a new, empty bucket in it, named for the test.
* ``s3_env``: sets fake AWS credentials and ``AWS_ENDPOINT_URL`` to moto for this test.
* ``s3_tracking_server`` (module): a real ``mlflow server`` on sqlite whose artifacts go,
  proxied, to ``s3://<bucket>/mlartifacts`` in moto; yields an :class:`S3TrackingServer`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers.servers import MlflowServer, MotoS3, start_mlflow_server, start_moto


@dataclass(frozen=True)
class S3TrackingServer:
    url: str
    bucket: str
    prefix: str
    server: MlflowServer


def _bucket_name(label: str) -> str:
    stem = "".join(c if c.isalnum() else "-" for c in label.lower())[:30].strip("-")
    return f"{stem or 'test'}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    s3 = start_moto()
    yield s3
    s3.stop()


@pytest.fixture
def s3_bucket(moto_s3: MotoS3, request: pytest.FixtureRequest) -> str:
    return moto_s3.create_bucket(_bucket_name(request.node.name))


@pytest.fixture
def s3_env(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point boto3 at moto for this test, with fake credentials; return the variables."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    env = {key: value for key, value in moto_s3.env().items() if key != "MLFLOW_S3_ENDPOINT_URL"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return env


@pytest.fixture(scope="module")
def s3_tracking_server(
    moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3TrackingServer]:
    bucket = moto_s3.create_bucket(_bucket_name("mlflow-artifacts"))
    prefix = "mlartifacts"
    server = start_mlflow_server(
        tmp_path_factory.mktemp("mlflow-server"),
        artifacts_destination=f"s3://{bucket}/{prefix}",
        env=moto_s3.env(),
    )
    yield S3TrackingServer(url=server.url, bucket=bucket, prefix=prefix, server=server)
    server.stop()
