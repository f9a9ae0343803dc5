"""The logged listing classifier: a pyfunc that takes a photo and its listing's text.

This module is what a registered ``marketplace-listing-classifier`` version *is*. It holds
three parts and runs them in one call:

1. the image network of a registered ``marketplace-classifier`` version (the same state
   dict and config files as ``marketplace_models/image.py`` writes), which embeds the photo: the
   pooled penultimate layer, L2-normalised, ``(N, D)``;
2. a text classifier (``marketplace_models/text.py``), whose class probabilities ``(N, C)``
   are the text's features;
3. the fusion head (:class:`FusionHead`): the two side by side ``(N, D + C)``, through a
   small MLP, to class probabilities.

Training (``steps/train_combined.py``) builds the head and calls
:func:`log_listing_classifier`. What a logged model holds (no pickles):
``artifacts/classifier.pt`` + ``classifier.json`` (the image network),
``artifacts/text/`` (the text classifier), ``artifacts/fusion.pt`` (the head's state dict),
``fusion.npz`` (the same weights as plain arrays, what the service reads without torch:
:mod:`marketplace_models.fusion`) + ``fusion.json`` (its sizes, categories and where the
image network came from),
``code/marketplace_models/`` and the entry file ``marketplace_listing_classifier.py``.

Input: a DataFrame with columns ``image`` (bytes, or base64 text) and ``text``, one row
per photo. Output: ``category``, ``probability``, ``probabilities`` (category order).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from torch import nn

from marketplace_models import image as image_model
from marketplace_models import network
from marketplace_models import text as text_model
from marketplace_models.fusion import (
    FUSION_ARRAYS_ARTIFACT,
    FUSION_ARRAYS_FILE,
    FUSION_ARTIFACT,
    FUSION_CONFIG_ARTIFACT,
    FUSION_CONFIG_FILE,
    FUSION_FILE,
    FusionConfig,
    HeadWeights,
    fusion_features,
)
from marketplace_models.kinds import IMAGE_COLUMN, TEXT_COLUMN
from marketplace_models.pyfunc import entry_code, log_from_code
from marketplace_models.text import TextClassifier, answer_frame, column_values

ENTRY_CODE = entry_code(
    "marketplace_models.listing", "MarketplaceListingClassifier", "listing classifier"
)
ENTRY_FILE = "marketplace_listing_classifier.py"


class FusionHead(nn.Module):
    """Image embedding and text probabilities side by side, through a small MLP."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(config.image_dim + config.text_dim, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)  # (B, D + C) -> (B, C)


def head_weights(head: FusionHead) -> HeadWeights:
    """The head's two linear layers as numpy arrays (what the service runs)."""
    return HeadWeights.from_state(head.state_dict())


def head_probabilities(head: FusionHead, features: np.ndarray) -> np.ndarray:
    """Class probabilities ``(N, C)`` of the head (as in eval mode: no dropout) for fused
    features, computed with numpy from its weights (:class:`HeadWeights`)."""
    return head_weights(head).probabilities(features)


class MarketplaceListingClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: ``image`` and ``text`` in; category, probability, probabilities out."""

    def __init__(
        self,
        image: image_model.MarketplaceClassifier | None = None,
        text: TextClassifier | None = None,
        head: FusionHead | None = None,
        config: FusionConfig | None = None,
    ) -> None:
        self.image, self.text, self.head, self.config = image, text, head, config

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        self.image = image_model.MarketplaceClassifier()
        self.image.load_context(context)  # the same "weights" and "config" artifacts
        self.text = TextClassifier.load(Path(artifacts[text_model.TEXT_ARTIFACT]))
        self.config = FusionConfig.from_json(
            Path(artifacts[FUSION_CONFIG_ARTIFACT]).read_text(encoding="utf-8")
        )
        self.head = FusionHead(self.config)
        state = torch.load(artifacts[FUSION_ARTIFACT], map_location="cpu", weights_only=True)
        self.head.load_state_dict(state)
        self.head.eval()

    @property
    def categories(self) -> list[str]:
        return list(self._require().categories)

    def _require(self) -> FusionConfig:
        if self.config is None or self.head is None or self.image is None or self.text is None:
            raise RuntimeError("the listing classifier has no weights: load it with mlflow.pyfunc")
        return self.config

    def predict_proba(self, images: Sequence[Any], texts: Sequence[Any]) -> np.ndarray:
        """Class probabilities ``(N, C)`` for photos and their listings' texts, row by row."""
        config = self._require()
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts: one of each per row")
        if len(images) == 0:
            return np.zeros((0, config.num_classes))
        embeddings = self.image.embed(list(images))  # (N, D)
        features = fusion_features(embeddings, self.text.predict_proba(list(texts)))
        return head_probabilities(self.head, features)

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        images = column_values(model_input, IMAGE_COLUMN)
        texts = column_values(model_input, TEXT_COLUMN)
        return answer_frame(self.predict_proba(images, texts), self.categories)


# ---------------------------------------------------------------------------- logging


def pip_requirements(encoder: str = text_model.TFIDF) -> list[str]:
    """The image classifier's requirements and the text classifier's, once each."""
    merged: dict[str, str] = {}
    for requirement in image_model.pip_requirements() + text_model.pip_requirements(encoder):
        merged.setdefault(requirement.split(">=")[0], requirement)
    return list(merged.values())


def model_signature():
    """Input: ``image`` (binary) and ``text`` (string) columns; output: the prediction."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", IMAGE_COLUMN), ColSpec("string", TEXT_COLUMN)]),
        outputs=text_model.answer_schema(),
    )


def log_listing_classifier(
    net: nn.Module,
    image_config: network.ClassifierConfig,
    text: TextClassifier,
    head: FusionHead,
    config: FusionConfig,
    *,
    example_image: bytes,
    example_text: str,
    name: str = "model",
):
    """Log the three parts as one pyfunc model in the active run; return its ``ModelInfo``.

    The image network is also exported to ONNX (``artifacts/classifier.onnx``, kept only
    when it matches torch on ``example_image``, as the image classifier's is), so the
    service runs it on the same engine as the photo model.
    """
    from marketplace_models.onnx import ONNX_ARTIFACT, ONNX_FILE, export_onnx

    with tempfile.TemporaryDirectory(prefix="listing-classifier-") as tmp:
        folder = Path(tmp)
        artifacts = image_model.write_model_files(net, image_config, folder / "files")
        pixels = np.stack([network.preprocess_image(example_image, image_config.image_size)])
        if export_onnx(net, image_config, folder / "files" / ONNX_FILE, pixels).passed:
            artifacts[ONNX_ARTIFACT] = str(folder / "files" / ONNX_FILE)
        artifacts[text_model.TEXT_ARTIFACT] = str(text.save(folder / text_model.TEXT_ARTIFACT))
        torch.save(
            {k: v.detach().to("cpu") for k, v in head.state_dict().items()},
            folder / "files" / FUSION_FILE,
        )
        head_weights(head).save(folder / "files" / FUSION_ARRAYS_FILE)
        artifacts[FUSION_ARRAYS_ARTIFACT] = str(folder / "files" / FUSION_ARRAYS_FILE)
        (folder / "files" / FUSION_CONFIG_FILE).write_text(config.to_json(), encoding="utf-8")
        artifacts[FUSION_ARTIFACT] = str(folder / "files" / FUSION_FILE)
        artifacts[FUSION_CONFIG_ARTIFACT] = str(folder / "files" / FUSION_CONFIG_FILE)
        return log_from_code(
            folder,
            entry_file=ENTRY_FILE,
            entry=ENTRY_CODE,
            name=name,
            artifacts=artifacts,
            signature=model_signature(),
            input_example=pd.DataFrame(
                {IMAGE_COLUMN: [example_image], TEXT_COLUMN: [example_text]}
            ),
            pip_requirements=pip_requirements(text.config.encoder),
        )
