"""The service from ``pip install '.[serve]'`` alone: no torch, and the same answers.

A virtual environment gets this checkout's packages with the serve extra only (a copy of
them, so the build leaves nothing in the checkout); ``import torch`` fails there. Its
``python -m serve`` serves the store of ``tests.helpers.served_versions``: an image version
with its ONNX export, the TF-IDF text model and the listing model (its photo network on
ONNX Runtime, its head in numpy), and answers as the full install's service does; an image
version without an ONNX export answers 503 there naming the extra that would serve it
(slow: the environment is built with pip). The engine's choice without torch is checked
fast, here, with ``import torch`` made to fail.
"""

from __future__ import annotations

import os
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


def _in_venv(python: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` with the venv's interpreter, on its own install (no PYTHONPATH, and a
    working folder away from the checkout)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [python, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )


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


def _probabilities(answer: dict) -> list[float]:
    """Every category's probability (the capstone shape's ``Probabilities`` where the
    route gives it), else the ``top_k`` ones, best first."""
    if "Probabilities" in answer:
        return answer["Probabilities"]
    return [entry["probability"] for entry in answer["top_k"]]


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
    env = {"MLFLOW_TRACKING_URI": store, "SERVE_RELOAD_INTERVAL": "0.5"}
    workdir = tmp_path_factory.mktemp("serve-extra-run")
    with running_service(workdir, env, python=serve_python) as service:
        yield service


@pytest.mark.slow
def test_the_serve_extra_installs_no_torch(serve_python: str, tmp_path: Path) -> None:
    for module in ("torch", "torchvision"):
        found = _in_venv(serve_python, f"import {module}", tmp_path)
        assert found.returncode != 0
        assert f"No module named '{module}'" in found.stderr
    served = _in_venv(
        serve_python, "import serve.app, onnxruntime; print(serve.__file__)", tmp_path
    )
    assert served.returncode == 0, served.stderr
    assert "site-packages" in served.stdout and str(ROOT) not in served.stdout  # its own copy


@pytest.mark.slow
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
        assert [e["category"] for e in ours["top_k"]] == [e["category"] for e in full["top_k"]]
        np.testing.assert_allclose(_probabilities(ours), _probabilities(full), atol=TOLERANCE)
    assert answers["listing"]["model"]["name"] == LISTING_MODEL_NAME
    assert answers["text"]["model"]["name"] == TEXT_MODEL_NAME


@pytest.mark.slow
def test_a_version_without_an_onnx_export_is_a_503_naming_the_train_extra(
    serve_python: str, store: str, tmp_path: Path
) -> None:
    env = {
        "MLFLOW_TRACKING_URI": store,
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
        wait_until(  # the other kinds still answer
            lambda: _ask(http.post, "text").status_code == 200, 180.0, "the text model answering"
        )


def test_without_torch_the_engine_is_onnx_and_a_version_without_an_export_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from marketplace_models.config import ClassifierConfig
    from marketplace_models.logged import LoggedClassifier
    from marketplace_models.network import build_network
    from marketplace_models.onnx import export_onnx
    from serve.engines import EngineUnavailable, build_engine

    config = ClassifierConfig(arch="simplecnn", categories=["a", "b"], image_size=32)
    assert export_onnx(build_network("simplecnn", 2), config, tmp_path / "m.onnx").passed
    exported = LoggedClassifier(tmp_path, config, tmp_path / "classifier.pt", tmp_path / "m.onnx")
    logged = LoggedClassifier(tmp_path, config, tmp_path / "classifier.pt", onnx=None)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails from here on
    engine = build_engine(exported, "auto")
    assert engine.name == "onnx"
    probabilities, embedding = engine.forward(np.zeros((3, 32, 32, 3), dtype=np.uint8))
    assert probabilities.shape == (3, 2) and embedding.shape == (3, 256)
    for choice in ("auto", "torch"):
        with pytest.raises(EngineUnavailable) as refused:
            build_engine(logged, choice)
        assert "torch is not installed: pip install 'marketplace-search[train]'" in str(
            refused.value
        )
    with pytest.raises(EngineUnavailable, match="no usable ONNX export and torch is not"):
        build_engine(logged, "auto")
