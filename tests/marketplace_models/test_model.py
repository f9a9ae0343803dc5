"""The logged image classifier (marketplace_models/image.py): packaging, loading, predicting."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from marketplace_models.image import MarketplaceClassifier, log_classifier, pip_requirements
from marketplace_models.imaging import normalize_image
from marketplace_models.network import (
    ClassifierConfig,
    build_network,
    eval_transform,
    preprocess_image,
)
from registry.register import register_classifier

CATEGORIES = ["Appliances", "Baby & Kids Stuff", "Home & Garden"]
IMAGE_SIZE = 32


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Raw uploads of several kinds: JPEG, PNG with alpha, greyscale, a wide CMYK JPEG."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), mode="RGBA")
    grey = Image.fromarray(rng.integers(0, 255, (50, 30), dtype=np.uint8), mode="L")
    return [
        encode(rgb, "JPEG"),
        encode(rgba, "PNG"),
        encode(grey, "JPEG"),
        encode(rgb.resize((120, 40)).convert("CMYK"), "JPEG"),
    ]


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("resnet18", len(CATEGORIES)).eval()


@pytest.fixture
def config() -> ClassifierConfig:
    return ClassifierConfig(arch="resnet18", categories=CATEGORIES, image_size=IMAGE_SIZE)


def test_eval_preset_is_the_shared_normalisation_then_mean_std(photos):
    image = Image.open(io.BytesIO(photos[1]))
    expected = np.asarray(normalize_image(image, IMAGE_SIZE), dtype=np.float32) / 255.0
    expected = (expected - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    tensor = eval_transform(IMAGE_SIZE)(photos[1])
    assert tensor.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert np.allclose(tensor.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert preprocess_image(photos[3], IMAGE_SIZE).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_in_process_prediction_contract(network, config, photos):
    model = MarketplaceClassifier.from_network(network, config)
    out = model.predict(None, pd.DataFrame({"image": photos}))
    assert list(out.columns) == ["category", "probability", "probabilities"]
    assert len(out) == len(photos)
    for _, row in out.iterrows():
        assert len(row.probabilities) == len(CATEGORIES)
        assert sum(row.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert row.category == CATEGORIES[int(np.argmax(row.probabilities))]
        assert row.probability == pytest.approx(max(row.probabilities))
    assert model.categories == CATEGORIES


def test_base64_text_predicts_like_bytes(network, config, photos):
    model = MarketplaceClassifier.from_network(network, config)
    raw = model.predict(None, pd.DataFrame({"image": photos}))
    text = [base64.b64encode(p).decode("ascii") for p in photos]
    assert model.predict(None, pd.DataFrame({"image": text})).equals(raw)


def test_embedding_is_the_penultimate_layer(network, config, photos):
    model = MarketplaceClassifier.from_network(network, config)
    out = model.predict(None, pd.DataFrame({"image": photos}), params={"embedding": True})
    embeddings = model.embed(photos)
    assert embeddings.shape == (len(photos), 512) and embeddings.dtype == np.float32
    assert np.allclose(np.stack(out["embedding"].to_list()), embeddings, atol=1e-5)
    logits = torch.from_numpy(embeddings) @ network.fc.weight.T + network.fc.bias
    probabilities = torch.softmax(logits, dim=1).detach().numpy()
    assert np.allclose(np.stack(out["probabilities"].to_list()), probabilities, atol=1e-4)


def test_unreadable_image_names_its_row(network, config, photos):
    model = MarketplaceClassifier.from_network(network, config)
    with pytest.raises(ValueError, match="row 1: not a readable image"):
        model.predict(None, pd.DataFrame({"image": [photos[0], b"not an image"]}))
    with pytest.raises(ValueError, match="column named 'image'"):
        model.predict(None, pd.DataFrame({"photo": photos}))


def test_pip_requirements_pin_lower_bounds_of_what_is_installed():
    requirements = pip_requirements()
    names = [r.split(">=")[0] for r in requirements]
    assert names == ["mlflow", "torch", "torchvision", "pillow", "numpy", "pandas"]
    assert all("+" not in r for r in requirements)  # no local tags such as +cu130


@pytest.mark.slow
def test_registered_version_loads_and_predicts_like_the_in_process_model(
    network, config, photos, tracking
):
    mlflow.set_experiment("tests")
    with mlflow.start_run() as run:
        info = log_classifier(network, config, example_image=photos[0])
    version = register_classifier(info.model_uri, tags={"test_accuracy": 0.5, "data_digest": "ab"})
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    client = mlflow.MlflowClient()
    assert client.get_model_version("marketplace-classifier", "1").tags == {
        "test_accuracy": "0.5",
        "data_digest": "ab",
    }
    assert client.get_registered_model("marketplace-classifier").aliases == {}

    loaded = mlflow.pyfunc.load_model("models:/marketplace-classifier/1")
    frame = pd.DataFrame({"image": photos})
    expected = MarketplaceClassifier.from_network(network, config).predict(
        None, frame, params={"embedding": True}
    )
    served = loaded.predict(frame, params={"embedding": True})
    pd.testing.assert_frame_equal(served, expected)
    inner = loaded.unwrap_python_model()
    assert inner.categories == CATEGORIES
    assert np.allclose(inner.embed(photos), np.stack(expected["embedding"].to_list()), atol=1e-6)

    signature = loaded.metadata.signature
    assert signature.inputs.input_names() == ["image"]
    assert signature.params.to_dict()[0]["name"] == "embedding"


@pytest.mark.slow
def test_logged_model_holds_weights_config_and_code_but_no_pickle(
    network, config, photos, tracking, tmp_path
):
    mlflow.set_experiment("tests")
    with mlflow.start_run():
        info = log_classifier(network, config, example_image=photos[0])
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path)))
    assert not list(local.rglob("*.pkl"))
    assert (local / "code" / "marketplace_models" / "image.py").is_file()
    assert (local / "code" / "marketplace_models" / "imaging.py").is_file()
    assert sorted(p.name for p in (local / "code").iterdir()) == ["marketplace_models"]
    state = torch.load(local / "artifacts" / "classifier.pt", weights_only=True)
    assert set(state) == set(network.state_dict())
    saved = json.loads((local / "artifacts" / "classifier.json").read_text())
    assert saved["categories"] == CATEGORIES and saved["num_classes"] == 3
    requirements = (local / "requirements.txt").read_text()
    assert "torch>=" in requirements and "pillow>=" in requirements

    # What `mlflow models serve` does with a JSON request: base64 for the binary column.
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    body = {
        "dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(photos[2]).decode()]]}
    }
    loaded = mlflow.pyfunc.load_model(str(local))
    parsed = infer_and_parse_data(body, loaded.metadata.get_input_schema())
    assert parsed["image"][0] == photos[2]
    served = loaded.predict(parsed)
    direct = loaded.predict(pd.DataFrame({"image": [photos[2]]}))
    pd.testing.assert_frame_equal(served, direct)
