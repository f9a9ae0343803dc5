"""Versions registered by the code before the packages were split still serve and promote.

The old code is this project's own ``registry/`` package at :data:`LEGACY_COMMIT` (the last
commit of that layout), taken from the git history: it logs and registers an image
classifier in a throwaway store exactly as it did, its code carried as ``code/registry/``.
Today's service then answers from that version, and today's ``python -m registry promote``
smoke-checks it and moves ``production`` to it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.served_versions import jpeg, running_service, wait_until

ROOT = Path(__file__).resolve().parents[2]
LEGACY_COMMIT = "d2befe9"  # the last commit whose logged models carry code/registry/
NAME = "legacy-classifier"

REGISTER_WITH_OLD_CODE = """
import io, sys, mlflow, torch
from PIL import Image
from registry.model import ClassifierConfig, build_network, log_classifier, register_classifier

image = io.BytesIO()
Image.new("RGB", (40, 30), (200, 30, 30)).save(image, format="JPEG")
torch.manual_seed(0)
config = ClassifierConfig(arch="resnet18", categories=["Red", "Green", "Blue"], image_size=32)
mlflow.set_experiment("legacy")
with mlflow.start_run():
    mlflow.log_metric("test_accuracy", 0.4)
    net = build_network("resnet18", 3).eval()
    info = log_classifier(net, config, example_image=image.getvalue())
print(register_classifier(info.model_uri, model_name=sys.argv[1]).version)
"""


@pytest.fixture(scope="module")
def old_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The old ``registry/`` package, extracted from the project's history."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", LEGACY_COMMIT, "registry"], capture_output=True
    )
    assert archive.returncode == 0, (
        f"this test reads the old code from git history (commit {LEGACY_COMMIT}): run it in a "
        f"clone with its history ({archive.stderr.decode(errors='replace').strip()})"
    )
    folder = tmp_path_factory.mktemp("old-code")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


@pytest.fixture(scope="module")
def legacy_store(old_code: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store holding version 1 of NAME, logged and registered by the old code."""
    folder = tmp_path_factory.mktemp("legacy-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(old_code)}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    done = subprocess.run(
        [sys.executable, "-c", REGISTER_WITH_OLD_CODE, NAME],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "1"
    return uri


def _model_files(uri: str) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    source = client.get_model_version_download_uri(NAME, "1")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=uri))
    return sorted(p.name for p in (local / "code").iterdir())


@pytest.mark.slow
def test_an_old_layout_version_is_served_by_todays_service(legacy_store: str, tmp_path) -> None:
    assert _model_files(legacy_store) == ["registry"], "the fixture logs the old layout"
    env = {"MLFLOW_TRACKING_URI": legacy_store, "MODEL_URI": f"models:/{NAME}/1"}
    with running_service(tmp_path, env) as service:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(service.url + "/ready", timeout=5) as reply:
                    return reply.status == 200
            except OSError:
                return False

        wait_until(ready, timeout=180, what="the old version to load")
        boundary = "legacy-boundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                'filename="red.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
            ).encode()
            + jpeg((210, 20, 20))
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            service.url + "/predict",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            answer = json.loads(reply.read())
            assert reply.headers["X-Model-Version"] == "1"
    assert answer["category"] in ("Red", "Green", "Blue")
    assert answer["model"]["version"] == 1


@pytest.mark.slow
def test_an_old_layout_version_passes_todays_smoke_check_and_promotion(
    legacy_store: str, tmp_path: Path
) -> None:
    import mlflow

    env = {**os.environ, "MLFLOW_TRACKING_URI": legacy_store, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "registry", "promote", "--model-name", NAME]
    command += ["--version", "1", "--reason", "the old layout still serves"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    client = mlflow.MlflowClient(tracking_uri=legacy_store, registry_uri=legacy_store)
    assert {k: int(v) for k, v in client.get_registered_model(NAME).aliases.items()} == {
        "production": 1
    }
