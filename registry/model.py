"""The logged classifier: a pyfunc that takes image bytes and returns a category.

This module is what a registered ``marketplace-classifier`` version *is*. Training
(``steps/train.py``) builds the network with :func:`build_network`, preprocesses evaluation
images with :func:`preprocess_image` + :func:`normalize_batch` (together
:func:`eval_transform`, the evaluation preset), then calls :func:`log_classifier` and
:func:`register_classifier`. The service loads the version with
``mlflow.pyfunc.load_model`` and never imports ``steps/``.

What a logged model holds (no pickled training objects):

- ``artifacts/classifier.pt``: the network's ``state_dict`` (tensors only, loaded with
  ``torch.load(weights_only=True)``),
- ``artifacts/classifier.json``: arch, category names, image size, mean/std,
- ``code/registry/``: this package, so the model loads outside this repository,
- ``marketplace_classifier.py``: the "models from code" entry file (it only calls
  ``mlflow.models.set_model(MarketplaceClassifier())``).

Input: a DataFrame with a column ``image`` of bytes (JPEG, PNG, anything Pillow reads) or
base64 text (what ``mlflow models serve`` receives as JSON). Output: ``category``,
``probability`` and ``probabilities`` (in category order); with ``params={"embedding":
True}`` also ``embedding`` (the penultimate layer). ``unwrap_python_model().embed(images)``
returns the embeddings as an ``(N, D)`` array.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from torch import nn

from registry.clean_data import CATEGORIES_FILE, IMAGES_FILE
from registry.imaging import load_normalized
from registry.pyfunc import entry_code, installed_lower_bounds, log_from_code

MODEL_NAME = "marketplace-classifier"
ARCHS = ("resnet18", "resnet34", "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_COLUMN = "image"
WEIGHTS_ARTIFACT = "weights"
CONFIG_ARTIFACT = "config"
WEIGHTS_FILE = "classifier.pt"
CONFIG_FILE = "classifier.json"
PREDICT_BATCH_SIZE = 32
DATA_DIGEST_TAG = "data_digest"
FORMAT_VERSION = 1

# The "models from code" entry file written next to the model at log time (registry.pyfunc).
ENTRY_CODE = entry_code("registry.model", "MarketplaceClassifier", "marketplace classifier")
ENTRY_FILE = "marketplace_classifier.py"


# --------------------------------------------------------------------------- network


def build_network(arch: str, num_classes: int) -> nn.Module:
    """A torchvision ResNet with a ``num_classes`` head and no pretrained weights."""
    import torchvision

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: expected one of {', '.join(ARCHS)}")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def forward_features(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The image embedding: a ResNet's pooled penultimate layer, ``(B, D)``."""
    x = net.conv1(images)  # (B, 64, H/2, W/2)
    x = net.maxpool(net.relu(net.bn1(x)))  # (B, 64, H/4, W/4)
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))  # (B, D, H/32, W/32)
    return torch.flatten(net.avgpool(x), 1)  # (B, D)


def embedding_dim(net: nn.Module) -> int:
    """Width of :func:`forward_features` (512 for resnet18/34, 2048 for resnet50)."""
    return int(net.fc.in_features)


# --------------------------------------------------------------------- preprocessing


def preprocess_image(source: bytes | str | Path, image_size: int) -> np.ndarray:
    """First half of the evaluation preset: the shared normalisation, as uint8 ``(S, S, 3)``.

    Raises ``OSError`` when ``source`` is not a readable image.
    """
    return np.array(load_normalized(source, image_size), dtype=np.uint8)


def normalize_batch(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Second half of the evaluation preset: uint8 ``(B, 3, S, S)`` to normalised float."""
    mean_t = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


def stack_images(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``(S, S, 3)`` arrays to one uint8 ``(B, 3, S, S)`` tensor."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def eval_transform(
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
):
    """The evaluation preset for one image: shared normalisation, tensor, mean/std.

    Returns a callable ``source -> float tensor (3, S, S)``. Training evaluates and the
    logged model predicts through exactly these steps (batched).
    """

    def transform(source: bytes | str | Path) -> torch.Tensor:
        batch = stack_images([preprocess_image(source, image_size)])
        return normalize_batch(batch, mean, std)[0]

    return transform


# ------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything besides the weights that a logged classifier needs, stored as JSON."""

    arch: str
    categories: list[str]
    image_size: int
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "num_classes": self.num_classes}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClassifierConfig:
        data = json.loads(text)
        return cls(
            arch=data["arch"],
            categories=list(data["categories"]),
            image_size=int(data["image_size"]),
            mean=[float(v) for v in data["mean"]],
            std=[float(v) for v in data["std"]],
            format_version=int(data.get("format_version", FORMAT_VERSION)),
        )


def decode_image_value(value: Any, row: int) -> bytes:
    """One cell of the ``image`` column as raw bytes (bytes, or base64 text)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, np.bytes_):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError):
            raise ValueError(f"row {row}: image text is not valid base64") from None
    raise ValueError(f"row {row}: expected image bytes or base64 text, got {type(value).__name__}")


class MarketplaceClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: image bytes in; category, probability, probabilities out.

    Built empty by the entry file; :meth:`load_context` reads the state dict and config.
    In-process (training, tests) use :meth:`from_network` instead.
    """

    def __init__(self) -> None:
        self.net: nn.Module | None = None
        self.config: ClassifierConfig | None = None
        self.device = torch.device("cpu")

    # -- construction
    def load_context(self, context) -> None:
        config = ClassifierConfig.from_json(
            Path(context.artifacts[CONFIG_ARTIFACT]).read_text(encoding="utf-8")
        )
        state = torch.load(
            context.artifacts[WEIGHTS_ARTIFACT], map_location="cpu", weights_only=True
        )
        self._attach(state, config)

    @classmethod
    def from_network(cls, net: nn.Module, config: ClassifierConfig) -> MarketplaceClassifier:
        """An in-process classifier holding a copy of ``net``'s weights."""
        model = cls()
        state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
        model._attach(state, config)
        return model

    def _attach(self, state: Mapping[str, torch.Tensor], config: ClassifierConfig) -> None:
        net = build_network(config.arch, config.num_classes)
        net.load_state_dict(state)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net = net.to(self.device).eval()
        self.config = config

    # -- inference
    @property
    def categories(self) -> list[str]:
        return list(self._require_config().categories)

    def _require_config(self) -> ClassifierConfig:
        if self.config is None or self.net is None:
            raise RuntimeError("the classifier has no weights: load it with mlflow.pyfunc")
        return self.config

    def _batches(self, images: Sequence[bytes]) -> Iterable[torch.Tensor]:
        config = self._require_config()
        for start in range(0, len(images), PREDICT_BATCH_SIZE):
            arrays = []
            for row, data in enumerate(images[start : start + PREDICT_BATCH_SIZE], start):
                try:
                    arrays.append(preprocess_image(data, config.image_size))
                except OSError as exc:
                    raise ValueError(f"row {row}: not a readable image ({exc})") from None
            batch = stack_images(arrays).to(self.device)
            yield normalize_batch(batch, config.mean, config.std)

    @torch.inference_mode()
    def _run(self, images: Sequence[bytes], want_embedding: bool):
        probabilities, embeddings = [], []
        for batch in self._batches(images):
            features = forward_features(self.net, batch)  # (B, D)
            logits = self.net.fc(features)  # (B, C)
            probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            if want_embedding:
                embeddings.append(features.float().cpu().numpy())
        width = self.config.num_classes
        probs = np.concatenate(probabilities) if probabilities else np.zeros((0, width))
        if not want_embedding:
            return probs, None
        dim = embedding_dim(self.net)
        return probs, (np.concatenate(embeddings) if embeddings else np.zeros((0, dim)))

    def embed(self, images: Sequence[bytes | str]) -> np.ndarray:
        """Penultimate-layer embeddings, ``(N, D)`` float32, for raw image bytes."""
        raw = [decode_image_value(value, row) for row, value in enumerate(images)]
        _, embeddings = self._run(raw, want_embedding=True)
        return embeddings.astype(np.float32)

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            if INPUT_COLUMN not in model_input.columns:
                raise ValueError(f"the input needs a column named {INPUT_COLUMN!r}")
            values = model_input[INPUT_COLUMN].tolist()
        else:
            values = list(model_input)
        raw = [decode_image_value(value, row) for row, value in enumerate(values)]
        want_embedding = bool((params or {}).get("embedding", False))
        probs, embeddings = self._run(raw, want_embedding)
        categories = self.categories
        best = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
        result = pd.DataFrame(
            {
                "category": [categories[i] for i in best],
                "probability": probs[np.arange(len(best)), best].astype(np.float64),
                "probabilities": [row.astype(np.float64).tolist() for row in probs],
            }
        )
        if embeddings is not None:
            result["embedding"] = [row.astype(np.float64).tolist() for row in embeddings]
        return result


# ---------------------------------------------------------------------------- logging


def pip_requirements() -> list[str]:
    """The served model's requirements: the installed versions as lower bounds."""
    return installed_lower_bounds(("mlflow", "torch", "torchvision", "pillow", "numpy", "pandas"))


def model_signature():
    """Input: an ``image`` binary column; params: ``embedding``; output: the prediction."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        inputs=Schema([ColSpec("binary", INPUT_COLUMN)]),
        outputs=Schema(
            [
                ColSpec("string", "category"),
                ColSpec("double", "probability"),
                ColSpec(Array("double"), "probabilities"),
                ColSpec(Array("double"), "embedding", required=False),
            ]
        ),
        params=ParamSchema([ParamSpec("embedding", "boolean", False)]),
    )


def write_model_files(net: nn.Module, config: ClassifierConfig, folder: Path) -> dict[str, str]:
    """Write the state dict and config into ``folder``; return pyfunc ``artifacts``."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    state = {k: v.detach().to("cpu") for k, v in net.state_dict().items()}
    torch.save(state, weights)
    (folder / CONFIG_FILE).write_text(config.to_json(), encoding="utf-8")
    return {WEIGHTS_ARTIFACT: str(weights), CONFIG_ARTIFACT: str(folder / CONFIG_FILE)}


def log_classifier(
    net: nn.Module,
    config: ClassifierConfig,
    *,
    example_image: bytes,
    name: str = "model",
    metadata_: Mapping[str, Any] | None = None,
    onnx: bool = True,
    parity_images: Sequence[bytes] = (),
):
    """Log ``net`` as a pyfunc model in the active run; return MLflow's ``ModelInfo``.

    ``example_image`` (one small JPEG's bytes) becomes the input example. With ``onnx``
    the network is also exported to ONNX (``artifacts/classifier.onnx``) for the service,
    kept only when it matches torch on ``parity_images`` (plus the example) to
    ``registry.export.PARITY_ATOL``; the run gets the metric ``onnx_max_abs_diff``.
    """
    with tempfile.TemporaryDirectory(prefix="classifier-") as tmp:
        folder = Path(tmp)
        artifacts = write_model_files(net, config, folder / "files")
        if onnx:
            artifacts.update(
                _export_onnx(net, config, folder / "files", [example_image, *parity_images])
            )
        return log_from_code(
            folder,
            entry_file=ENTRY_FILE,
            entry=ENTRY_CODE,
            name=name,
            artifacts=artifacts,
            signature=model_signature(),
            input_example=pd.DataFrame({INPUT_COLUMN: [example_image]}),
            pip_requirements=pip_requirements(),
            metadata_=metadata_,
        )


def _export_onnx(
    net: nn.Module, config: ClassifierConfig, folder: Path, images: Sequence[bytes]
) -> dict[str, str]:
    """Export ``net`` to ONNX in ``folder``; the pyfunc artifact when it matches torch."""
    from registry.export import ONNX_ARTIFACT, ONNX_FILE, export_onnx

    pixels = np.stack([preprocess_image(data, config.image_size) for data in images])
    report = export_onnx(net, config, folder / ONNX_FILE, pixels)
    if mlflow.active_run() is not None:
        mlflow.log_metric("onnx_max_abs_diff", report.max_abs_diff)
    return {ONNX_ARTIFACT: str(folder / ONNX_FILE)} if report.passed else {}


def register_classifier(
    model_uri: str,
    *,
    model_name: str = MODEL_NAME,
    tags: Mapping[str, Any] | None = None,
):
    """Register ``model_uri`` as a new version of ``model_name`` with ``tags``.

    Returns the ``ModelVersion``. Aliases (``production``) are never touched here:
    promotion is a separate, deliberate step.
    """
    return mlflow.register_model(
        model_uri, model_name, tags={k: str(v) for k, v in (tags or {}).items()}
    )


def register_described(
    model_uri: str,
    *,
    model_name: str,
    tags: Mapping[str, Any],
    model_text: str,
    version_text: str,
):
    """Register ``model_uri`` as a version of ``model_name`` (with ``tags``), describe it
    (the registered model once, with ``model_text``; the version with ``version_text``, see
    :mod:`registry.descriptions`), and tag the active run with the version. Every kind of
    classifier registers through here. Returns the ``ModelVersion``.

    Idempotent per run: when the active run already registered a version of
    ``model_name`` (a kill stopped it half-way and the run was resumed), that version is
    completed (its tags and description written) instead of registering a second one."""
    from registry.descriptions import set_model_description_if_empty

    client = mlflow.MlflowClient()
    run = mlflow.active_run()
    version = version_of_run(model_name, run.info.run_id) if run is not None else None
    if version is None:
        version = register_classifier(model_uri, model_name=model_name, tags=tags)
    else:
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version.version, key, str(value))
    set_model_description_if_empty(client, model_name, model_text)
    client.update_model_version(model_name, version.version, description=version_text)
    if mlflow.active_run() is not None:
        mlflow.set_tags({"registered_model": model_name, "registered_version": version.version})
    return version


def version_of_run(model_name: str, run_id: str):
    """The first version of ``model_name`` that run ``run_id`` registered, or None."""
    found = mlflow.MlflowClient().search_model_versions(
        f"name = '{model_name}' and run_id = '{run_id}'"
    )
    return min(found, key=lambda v: int(v.version)) if found else None


def data_digest(clean: Path) -> str:
    """A short digest of the cleaned data a model was trained on.

    Covers ``images.parquet`` and ``categories.json``; stored as the ``data_digest``
    version tag so a promotion can check that a version matches the current data.
    """
    sha = hashlib.sha256()
    for name in (IMAGES_FILE, CATEGORIES_FILE):
        sha.update(name.encode())
        sha.update((Path(clean) / name).read_bytes())
    return sha.hexdigest()[:16]
