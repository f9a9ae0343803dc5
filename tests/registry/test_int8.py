"""The int8 export: its accuracy gate, ``python -m registry quantize``, and serving it.

A tiny real version (resnet18 at 32 px, random weights) with its fp32 ONNX export, and a
cleaned-data folder of noise photos: the training split calibrates, the test split gates.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from registry.descriptions import with_registration_line
from registry.quantize import INT8_GATE_TAG, INT8_LINE, INT8_TAG, gate, quantize_version
from serve.app import create_app
from serve.settings import Settings
from tests.helpers.served_versions import (
    CATEGORIES,
    IMAGE_SIZE,
    NAME,
    PHOTOS,
    _network,
    serve_tests_experiment,
    set_alias,
    wait_until,
)

WITH_ONNX, WITHOUT_ONNX = 1, 2
# The random-weights network's top-1 margins are thin, so int8 flips a few of its answers:
# the tests gate at thresholds it meets with a sound calibration, not the production 99 %.
LOOSE = {"min_agreement": 0.75, "max_accuracy_drop": 0.25}


def write_clean(folder: Path, train: int = 48, test: int = 40) -> Path:
    """A cleaned-data folder (tables, categories, ``images/32/``) of noise photos."""
    from clean_data import complete_marker, image_folder

    rng = np.random.default_rng(0)
    images = image_folder(folder, IMAGE_SIZE)
    images.mkdir(parents=True)
    rows = []
    for i in range(train + test):
        pixels = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"img{i:03d}.jpg", quality=95)
        label = int(rng.integers(0, len(CATEGORIES)))
        split = "train" if i < train else "test"
        rows.append((f"img{i:03d}", f"p{i}", CATEGORIES[label], label, split))
    columns = ["image_id", "product_id", "root_category", "label", "split"]
    pd.DataFrame(rows, columns=columns).to_parquet(folder / "images.parquet")
    (folder / "categories.json").write_text(json.dumps(CATEGORIES), encoding="utf-8")
    complete_marker(folder, IMAGE_SIZE).write_text("{}", encoding="utf-8")
    return folder


def make_int8_store(folder: Path) -> str:
    """A store with version 1 (fp32 ONNX export) and version 2 (none); its URI."""
    import mlflow

    from marketplace_models.image import log_classifier
    from marketplace_models.network import ClassifierConfig
    from registry.register import register_classifier

    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = serve_tests_experiment(mlflow.MlflowClient(tracking_uri=uri), uri)
        config = ClassifierConfig(arch="resnet18", categories=CATEGORIES, image_size=IMAGE_SIZE)
        for onnx in (True, False):
            with mlflow.start_run(experiment_id=experiment_id):
                info = log_classifier(
                    _network(0), config, example_image=PHOTOS[0], onnx=onnx, parity_images=PHOTOS
                )
            register_classifier(info.model_uri)
    finally:
        mlflow.set_tracking_uri(previous)
    return uri


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clean(tmp_path_factory.mktemp("int8-clean"))


@pytest.fixture
def store(tmp_path: Path) -> str:
    return make_int8_store(tmp_path / "store")


def registry_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# ----------------------------------------------------------------------------- the gate


@pytest.mark.parametrize(
    ("agreement", "fp32", "int8", "kept"),
    [
        (1.0, 0.80, 0.80, True),
        (0.99, 0.80, 0.79, True),  # both at their limits
        (0.985, 0.80, 0.80, False),  # agrees too little
        (1.0, 0.80, 0.785, False),  # loses more than one point
        (0.995, 0.50, 0.52, True),  # int8 may be the luckier one
    ],
)
def test_the_gate_needs_99_percent_agreement_and_at_most_one_point_lost(
    agreement, fp32, int8, kept
):
    verdict, reason = gate(agreement, fp32, int8)
    assert verdict is kept
    assert "agreement" in reason and f"{int8:.4f}" in reason


def test_the_int8_line_replaces_the_last_one_and_keeps_the_history():
    description = "Not promoted yet.\n\n**resnet18** at 32 px.  \nTest split: accuracy 0.5."
    once = with_registration_line(description, INT8_LINE, f"{INT8_LINE}: not kept: a.")
    history = once + "\n\n**Promotion history**\n\n- 2026-12-01, **promoted**: fine"
    twice = with_registration_line(history, INT8_LINE, f"{INT8_LINE}: kept: b.")
    assert twice.count(INT8_LINE) == 1 and f"{INT8_LINE}: kept: b." in twice
    assert twice.endswith("- 2026-12-01, **promoted**: fine")
    assert twice.startswith(description)


# ----------------------------------------------------------------------------- quantize


def test_quantize_command_adds_a_gated_int8_export_to_the_version(store, clean, capsys):
    from cli import run_cli
    from registry.__main__ import main

    argv = ["--tracking-uri", store, "quantize", "--model-name", NAME, "--version", "1"]
    argv += ["--clean", str(clean), "--min-agreement", "0.75", "--max-accuracy-drop", "0.25"]
    assert run_cli(main, argv) == 0
    assert "kept" in capsys.readouterr().out
    client = registry_client(store)
    version = client.get_model_version(NAME, "1")
    assert version.tags[INT8_TAG] == f"runs:/{version.run_id}/int8/classifier.int8.onnx"
    assert version.tags[INT8_GATE_TAG].startswith("passed")
    assert f"{INT8_LINE}: kept" in version.description
    metrics = client.get_run(version.run_id).data.metrics
    assert metrics["int8/calibration_images"] == 48 and metrics["int8/test_images"] == 40
    assert metrics["int8/agreement"] >= 0.75
    assert metrics["int8/images_per_second"] > 0 and metrics["onnx/images_per_second"] > 0
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2, "no new version"


def test_a_calibration_that_breaks_the_int8_model_is_refused(store, clean):
    client = registry_client(store)
    blank = np.zeros((16, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)  # every range collapses
    report = quantize_version(client, NAME, 1, clean, calibration=blank, **LOOSE)
    assert not report.kept and report.agreement < LOOSE["min_agreement"]
    version = client.get_model_version(NAME, "1")
    assert INT8_TAG not in version.tags
    assert version.tags[INT8_GATE_TAG].startswith("refused: top-1 agreement")
    assert f"{INT8_LINE}: not kept" in version.description
    assert not client.list_artifacts(version.run_id, "int8")


def test_quantize_says_why_a_version_without_onnx_gets_no_int8(store, clean, capsys):
    from cli import run_cli
    from registry.__main__ import main

    argv = ["--tracking-uri", store, "quantize", "--model-name", NAME, "--version", "2"]
    assert run_cli(main, [*argv, "--clean", str(clean)]) == 0
    assert "no fp32 ONNX export" in capsys.readouterr().out
    assert run_cli(main, [*argv, "--clean", str(clean / "nowhere")]) == 2
    assert "no clean data folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- serving


def photo(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def serve(store: str, engine: str) -> TestClient:
    return TestClient(create_app(Settings(tracking_uri=store, reload_interval=0.2, engine=engine)))


def wait_ready(client: TestClient) -> dict:
    return wait_until(
        lambda: (r := client.get("/ready")).status_code == 200 and r.json(),
        what="the service ready",
    )


def test_auto_serves_the_int8_export_and_says_so(store, clean):
    quantize_version(registry_client(store), NAME, 1, clean, **LOOSE)
    set_alias(store, WITH_ONNX)
    with serve(store, "auto") as client:
        wait_ready(client)
        info = client.get("/model").json()
        assert info["engine"] == "onnx-int8"
        assert "int8" in info["engine_reason"] and "gate" in info["engine_reason"]
        reply = client.post("/predict", files={"image": ("a.jpg", photo(1), "image/jpeg")})
        assert reply.status_code == 200 and reply.json()["category"] in CATEGORIES
        assert 'engine="onnx-int8"' in client.get("/metrics").text
    with serve(store, "onnx") as client:  # the fp32 export is still there to force
        wait_ready(client)
        assert client.get("/model").json()["engine"] == "onnx"


def test_a_version_without_int8_serves_as_before_and_onnx_int8_says_why(store):
    set_alias(store, WITH_ONNX)
    with serve(store, "auto") as client:
        wait_ready(client)
        info = client.get("/model").json()
        assert info["engine"] == "onnx"
        assert "registered before int8 exports" in info["engine_reason"]
    with serve(store, "onnx-int8") as client:
        reply = wait_until(
            lambda: (
                (r := client.get("/ready")).status_code == 503
                and "no int8 export" in r.json()["detail"]
                and r
            ),
            what="/ready saying the version has no int8 export",
        )
        assert "python -m registry quantize" in reply.json()["detail"]
        assert client.post("/predict", files={"image": ("a.jpg", photo(1))}).status_code == 503
