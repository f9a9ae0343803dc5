"""The logged image classifier: a pyfunc that takes image bytes and returns a category.

This module is what a registered ``marketplace-classifier`` version *is*. Training builds the
network (:mod:`marketplace_models.network`), then calls :func:`log_classifier`; the registry
registers it. The service reads a downloaded version with :func:`read_logged_classifier` and
its own code, never with ``mlflow.pyfunc.load_model`` (that reading lives in
:mod:`marketplace_models.logged`, which needs no torch).

What a logged model holds (no pickled training objects):

- ``artifacts/classifier.pt``: the network's ``state_dict`` (tensors only, loaded with
  ``torch.load(weights_only=True)``),
- ``artifacts/classifier.json``: arch, category names, image size, mean/std,
- ``artifacts/classifier.onnx``: the served graph, when it matched torch at export,
- ``code/marketplace_models/``: this package, so the model loads outside this repository,
- ``marketplace_classifier.py``: the "models from code" entry file (it only calls
  ``mlflow.models.set_model(MarketplaceClassifier())``).

Input: a DataFrame with a column ``image`` of bytes (JPEG, PNG, anything Pillow reads) or
base64 text (what ``mlflow models serve`` receives as JSON). Output: ``category``,
``probability`` and ``probabilities`` (in category order); with ``params={"embedding":
True}`` also ``embedding`` (the penultimate layer). ``unwrap_python_model().embed(images)``
returns the embeddings as an ``(N, D)`` array.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from torch import nn

from marketplace_models.logged import (  # re-exported: reading a version needs no torch
    CONFIG_ARTIFACT,
    CONFIG_FILE,
    INPUT_COLUMN,
    WEIGHTS_ARTIFACT,
    WEIGHTS_FILE,
    LoggedClassifier,
    NotAClassifier,
    decode_image_value,
    read_logged_classifier,
)
from marketplace_models.network import (
    ClassifierConfig,
    build_network,
    embedding_dim,
    forward_features,
    normalize_batch,
    preprocess_image,
    stack_images,
)
from marketplace_models.onnx import ONNX_ARTIFACT, ONNX_FILE, export_onnx
from marketplace_models.pyfunc import entry_code, installed_lower_bounds, log_from_code

__all__ = [
    "CONFIG_ARTIFACT",
    "CONFIG_FILE",
    "INPUT_COLUMN",
    "WEIGHTS_ARTIFACT",
    "WEIGHTS_FILE",
    "LoggedClassifier",
    "MarketplaceClassifier",
    "NotAClassifier",
    "decode_image_value",
    "load_network",
    "log_classifier",
    "read_logged_classifier",
]

PREDICT_BATCH_SIZE = 32

# The "models from code" entry file written next to the model at log time (see .pyfunc).
ENTRY_CODE = entry_code(
    "marketplace_models.image", "MarketplaceClassifier", "marketplace classifier"
)
ENTRY_FILE = "marketplace_classifier.py"


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
    ``marketplace_models.onnx.PARITY_ATOL``; the run gets the metric ``onnx_max_abs_diff``.
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
    pixels = np.stack([preprocess_image(data, config.image_size) for data in images])
    report = export_onnx(net, config, folder / ONNX_FILE, pixels)
    if mlflow.active_run() is not None:
        mlflow.log_metric("onnx_max_abs_diff", report.max_abs_diff)
    return {ONNX_ARTIFACT: str(folder / ONNX_FILE)} if report.passed else {}


def load_network(logged: LoggedClassifier) -> nn.Module:
    """The logged classifier's network with its weights, on the CPU, in eval mode."""
    state = torch.load(logged.weights, map_location="cpu", weights_only=True)
    net = build_network(logged.config.arch, logged.config.num_classes)
    net.load_state_dict(state)
    return net.eval()
