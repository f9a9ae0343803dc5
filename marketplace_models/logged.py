"""The files of a logged image classifier, found and read without torch.

A registered ``marketplace-classifier`` version (and a listing model's image half) holds
its network's state dict, its config JSON and, when it matched torch at export, its ONNX
export (see :mod:`marketplace_models.image`). :func:`read_logged_classifier` finds them
through the model's MLmodel file and reads the config, so the service can run a version on
ONNX Runtime in an environment without torch (``pip install '.[serve]'``); only loading the
state dict (:func:`marketplace_models.image.load_network`) needs torch.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from marketplace_models.config import ClassifierConfig
from marketplace_models.onnx import ONNX_ARTIFACT

INPUT_COLUMN = "image"
WEIGHTS_ARTIFACT = "weights"
CONFIG_ARTIFACT = "config"
WEIGHTS_FILE = "classifier.pt"
CONFIG_FILE = "classifier.json"


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


@dataclass(frozen=True)
class LoggedClassifier:
    """The files of a logged classifier, found through its MLmodel file."""

    folder: Path
    config: ClassifierConfig
    weights: Path
    onnx: Path | None


class NotAClassifier(ValueError):
    """The folder is an MLflow model, but not a marketplace classifier this code can serve."""


def read_logged_classifier(folder: Path) -> LoggedClassifier:
    """Find the config, state dict and (optional) ONNX file of the model in ``folder``.

    Raises :class:`NotAClassifier` naming what is missing.
    """
    import yaml

    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise NotAClassifier(f"{folder} has no MLmodel file")
    spec = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
    pyfunc = (spec.get("flavors") or {}).get("python_function") or {}
    artifacts = pyfunc.get("artifacts") or {}

    def artifact(key: str) -> Path | None:
        entry = artifacts.get(key)
        path = entry.get("path") if isinstance(entry, dict) else None
        return folder / path if path else None

    config_path, weights_path = artifact(CONFIG_ARTIFACT), artifact(WEIGHTS_ARTIFACT)
    if config_path is None or weights_path is None:
        flavors = ", ".join(sorted(spec.get("flavors") or {})) or "none"
        raise NotAClassifier(
            "the model is not a marketplace image classifier (no classifier config and "
            f"weights among its artifacts; flavors: {flavors})"
        )
    for path in (config_path, weights_path):
        if not path.is_file():
            raise NotAClassifier(f"the model lacks its artifact {path.name}")
    config = ClassifierConfig.from_json(config_path.read_text(encoding="utf-8"))
    onnx = artifact(ONNX_ARTIFACT)
    return LoggedClassifier(
        folder=folder,
        config=config,
        weights=weights_path,
        onnx=onnx if onnx is not None and onnx.is_file() else None,
    )
