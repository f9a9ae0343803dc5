"""The service from ``pip install '.[serve]'`` alone: no torch, and the same answers.

A virtual environment gets this checkout's packages with the serve extra only (a copy of
them, so the build leaves nothing in the checkout); ``import torch`` fails there. Its
``python -m serve`` serves the store of ``tests.helpers.served_versions``: an image version
with its ONNX export, the TF-IDF text model and the listing model (its photo network on
ONNX Runtime, its head in numpy), and answers as the full install's service does; an image
version without an ONNX export answers 503 there naming the extra that would serve it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from fastapi.testclient import TestClient

from registry.kinds import LISTING_MODEL_NAME, TEXT_MODEL_NAME
from serve.app import create_app
from serve.settings import Settings
from tests.helpers.served_versions import (
    GOOD,
    NAME,
    NO_ONNX,
    PHOTOS,
    Service,
    add_listing_models,
    make_store,
    running_service,
    wait_until,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PIP_TIMEOUT_S = 1200
TOLERANCE = 1e-5
TEXT = "Corner sofa, barely used"
# (route, form fields, with a photo): one request for each kind of model.
REQUESTS = {
    "image": ("/predict", {}, True),
    "text": ("/predict/text", {"text": TEXT}, False),
    "listing": ("/predict/combined", {"text": TEXT}, True),
}


def _project_files(into: Path) -> Path:
    """A copy of what ``pip install .`` reads: pyproject.toml, its readme and license, and
    the packages it lists."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    into.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, into / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        shutil.copytree(ROOT / package, into / package, ignore=ignore)
    return into


@pytest.fixture(scope="module")
def serve_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The interpreter of a fresh virtual environment holding ``.[serve]`` and nothing else."""
    folder = tmp_path_factory.mktemp("serve-extra")
    source = _project_files(folder / "source")
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{source}[serve]"],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return str(python)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The test store with the image version with an ONNX export, the text model and the
    listing model all in production."""
    uri = make_store(tmp_path_factory.mktemp("serve-extra-store"))
    add_listing_models(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in (NAME, TEXT_MODEL_NAME, LISTING_MODEL_NAME):
        client.set_registered_model_alias(name, "production", str(GOOD if name == NAME else 1))
    return uri


def _ask(post, kind: str):
    route, data, photo = REQUESTS[kind]
    files = {"image": ("photo.jpg", PHOTOS[1], "image/jpeg")} if photo else None
    return post(route, data=data, files=files)


def _answers(post) -> dict[str, dict]:
    """Each kind's answer, once every kind answers 200."""
    found = {}
    for kind in REQUESTS:

        def answered(kind=kind):
            reply = _ask(post, kind)
            return reply if reply.status_code == 200 else None

        found[kind] = wait_until(answered, 180.0, f"the {kind} model answering").json()
    return found


@pytest.fixture(scope="module")
def full_install_answers(store: str) -> dict[str, dict]:
    """What the service answers in this (full) install, in-process."""
    with TestClient(create_app(Settings(tracking_uri=store, reload_interval=0.5))) as client:
        answers = _answers(client.post)
        answers["engine"] = client.get("/model").json()["engine"]
    return answers


@pytest.fixture(scope="module")
def extra_service(
    serve_python: str, store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    env = {"SERVE_TRACKING_URI": store, "SERVE_RELOAD_INTERVAL": "0.5"}
    workdir = tmp_path_factory.mktemp("serve-extra-run")
    with running_service(workdir, env, python=serve_python) as service:
        yield service


def test_the_serve_extra_installs_no_torch(serve_python: str) -> None:
    for module in ("torch", "torchvision"):
        found = subprocess.run(
            [serve_python, "-c", f"import {module}"], capture_output=True, text=True, timeout=120
        )
        assert found.returncode != 0
        assert f"No module named '{module}'" in found.stderr
    version = subprocess.run(
        [serve_python, "-c", "import serve, onnxruntime; print(serve.__file__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert version.returncode == 0, version.stderr
    assert not version.stdout.strip().startswith(str(ROOT))  # the installed copy


def test_every_kind_answers_as_in_the_full_install(
    extra_service: Service, full_install_answers: dict[str, dict]
) -> None:
    with httpx.Client(base_url=extra_service.url, timeout=60) as http:
        answers = _answers(http.post)
        engine = http.get("/model").json()["engine"]
    assert engine == full_install_answers["engine"] == "onnx"
    for kind in REQUESTS:
        ours, full = answers[kind], full_install_answers[kind]
        assert ours["model"]["name"] == full["model"]["name"], kind
        assert ours["model"]["version"] == full["model"]["version"], kind
        assert ours["category"] == full["category"], kind
        np.testing.assert_allclose(
            ours["Probabilities"], full["Probabilities"], atol=TOLERANCE, err_msg=kind
        )
    assert answers["listing"]["model"]["name"] == LISTING_MODEL_NAME
    assert answers["text"]["model"]["name"] == TEXT_MODEL_NAME


def test_a_version_without_an_onnx_export_is_a_503_naming_the_train_extra(
    serve_python: str, store: str, tmp_path: Path
) -> None:
    env = {
        "SERVE_TRACKING_URI": store,
        "SERVE_MODEL_URI": f"models:/{NAME}/{NO_ONNX}",
        "SERVE_TEXT_MODEL_URI": f"models:/{TEXT_MODEL_NAME}/1",
        "SERVE_LISTING_MODEL_URI": f"models:/{LISTING_MODEL_NAME}/1",
    }
    with (
        running_service(tmp_path, env, python=serve_python) as service,
        httpx.Client(base_url=service.url, timeout=60) as http,
    ):

        def refused():
            reply = _ask(http.post, "image")
            return reply if "torch is not installed" in reply.text else None

        reply = wait_until(refused, 180.0, "the version without an ONNX export refused")
        assert reply.status_code == 503
        detail = reply.json()["detail"]
        assert f"version {NO_ONNX} of {NAME}" in detail and "no usable ONNX export" in detail
        assert "pip install 'marketplace-search[train]'" in detail
        ready = http.get("/ready")
        assert ready.status_code == 503 and "torch is not installed" in ready.text
        assert _ask(http.post, "text").status_code == 200  # the other kinds still answer
