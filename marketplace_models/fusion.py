"""A listing model's text half and fusion head, read and run without torch.

A logged listing classifier (:mod:`marketplace_models.listing`) holds its fusion head
twice: ``fusion.pt`` (the head's state dict, what :class:`~marketplace_models.listing.FusionHead`
loads) and ``fusion.npz`` (the same four weight arrays, plain numpy). The service serves the
photo network on ONNX Runtime and the head with two matrix products, so a listing version
answers in an environment without torch (``pip install '.[serve]'``); a version logged
before ``fusion.npz`` existed needs torch to read its head.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marketplace_models import text as text_model
from marketplace_models.errors import import_torch
from marketplace_models.text import TextClassifier

FUSION_ARTIFACT = "fusion"
FUSION_CONFIG_ARTIFACT = "fusion_config"
FUSION_ARRAYS_ARTIFACT = "fusion_arrays"
FUSION_FILE = "fusion.pt"
FUSION_CONFIG_FILE = "fusion.json"
FUSION_ARRAYS_FILE = "fusion.npz"
FORMAT_VERSION = 1
# The head's layers in its state dict (nn.Sequential: Linear, ReLU, Dropout, Linear).
STATE_KEYS = ("net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias")


@dataclass(frozen=True)
class FusionConfig:
    """The fusion head's sizes and the provenance of its parts, stored as JSON."""

    categories: list[str]
    image_dim: int
    text_dim: int
    hidden: int = 128
    dropout: float = 0.3
    image_model_uri: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FusionConfig:
        data = json.loads(text)
        return cls(
            categories=list(data["categories"]),
            image_dim=int(data["image_dim"]),
            text_dim=int(data["text_dim"]),
            hidden=int(data.get("hidden", 128)),
            dropout=float(data.get("dropout", 0.3)),
            image_model_uri=str(data.get("image_model_uri", "")),
            format_version=int(data.get("format_version", FORMAT_VERSION)),
            extra=dict(data.get("extra", {})),
        )


def fusion_features(image_embeddings: np.ndarray, text_probabilities: np.ndarray) -> np.ndarray:
    """The head's input ``(N, D + C)``: the L2-normalised embedding, then the text's
    probabilities."""
    embeddings = np.asarray(image_embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    embeddings = embeddings / np.maximum(norms, 1e-12)
    if len(embeddings) != len(text_probabilities):
        raise ValueError(f"{len(embeddings)} image embeddings but {len(text_probabilities)} texts")
    return np.hstack([embeddings, np.asarray(text_probabilities, dtype=np.float32)])


@dataclass(frozen=True)
class HeadWeights:
    """The fusion head's two linear layers as float32 arrays: ``(H, D + C)``, ``(H,)``,
    ``(C, H)``, ``(C,)``."""

    first_weight: np.ndarray
    first_bias: np.ndarray
    second_weight: np.ndarray
    second_bias: np.ndarray

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)`` for fused features (as in eval mode: no dropout).

        For the few rows a request brings, two small matrix products cost less than a
        torch call."""
        x = np.asarray(features, dtype=np.float32)  # (N, D + C)
        hidden = np.maximum(x @ self.first_weight.T + self.first_bias, 0.0)  # (N, H)
        logits = hidden @ self.second_weight.T + self.second_bias  # (N, C)
        return text_model.softmax(logits.astype(np.float64))

    def save(self, path: Path) -> Path:
        """Write the four arrays to ``path`` (an ``.npz``, no pickles); return it."""
        arrays = dict(zip(STATE_KEYS, self._arrays(), strict=True))
        np.savez(path, **{key.replace(".", "_"): value for key, value in arrays.items()})
        return path

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (self.first_weight, self.first_bias, self.second_weight, self.second_bias)

    @classmethod
    def load(cls, path: Path) -> HeadWeights:
        with np.load(path, allow_pickle=False) as data:
            return cls(*(np.asarray(data[k.replace(".", "_")], np.float32) for k in STATE_KEYS))

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> HeadWeights:
        """From the head's state dict (tensors or arrays)."""
        return cls(*(_as_array(state[key]) for key in STATE_KEYS))


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


@dataclass
class FusionParts:
    """The text half and the head of a listing model (its image network is served apart)."""

    text: TextClassifier
    head: HeadWeights
    config: FusionConfig

    def predict_proba(self, embeddings: np.ndarray, texts: Sequence[Any]) -> np.ndarray:
        """Class probabilities ``(N, C)`` from the image network's embeddings and the texts."""
        return self.combine(embeddings, self.text.predict_proba(list(texts)))

    def combine(self, embeddings: np.ndarray, text_probabilities: np.ndarray) -> np.ndarray:
        """The head's probabilities from the embeddings and the text half's probabilities
        (which a caller may compute at the same time as the embeddings)."""
        return self.head.probabilities(fusion_features(embeddings, text_probabilities))


def read_head_weights(artifacts: dict[str, Path]) -> HeadWeights:
    """The head's weights from ``fusion.npz``, or (a version logged before it) from
    ``fusion.pt`` with torch (:class:`~marketplace_models.errors.NeedsTorch` without it)."""
    arrays = artifacts.get(FUSION_ARRAYS_ARTIFACT)
    if arrays is not None and arrays.is_file():
        return HeadWeights.load(arrays)
    torch = import_torch(
        "this listing version keeps its fusion head for torch only (logged before fusion.npz)"
    )
    state = torch.load(artifacts[FUSION_ARTIFACT], map_location="cpu", weights_only=True)
    return HeadWeights.from_state(state)


def read_fusion_parts(folder: Path) -> FusionParts:
    """The text classifier, the head and its config of the logged listing model in ``folder``."""
    artifacts = text_model.logged_artifacts(folder)
    missing = [k for k in (FUSION_ARTIFACT, FUSION_CONFIG_ARTIFACT) if k not in artifacts]
    if missing:
        raise ValueError(f"the model is not a listing classifier (no {', '.join(missing)})")
    config = FusionConfig.from_json(artifacts[FUSION_CONFIG_ARTIFACT].read_text(encoding="utf-8"))
    head = read_head_weights(artifacts)
    return FusionParts(text_model.read_text_classifier(folder), head, config)
