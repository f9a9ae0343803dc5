"""The served network, and its ONNX export checked against torch.

:class:`ServingNetwork` is the one inference graph of a logged classifier: uint8 images
``(B, 3, S, S)`` in, ``probabilities (B, C)`` and the ``embedding (B, D)`` out, with the
evaluation preset's mean/std inside. The service runs it with torch, or, exported by
:func:`export_onnx` at registration, with ONNX Runtime; both see the same pixels because
both are fed by :func:`registry.model.preprocess_image`.

:func:`export_onnx` writes ``classifier.onnx`` (batch size dynamic) and checks it against
the torch network on a batch of images: the export is kept only when the largest absolute
difference between the two models' probabilities is at most :data:`PARITY_ATOL`.

:func:`read_logged_classifier` reads a downloaded model folder (what
``mlflow.artifacts.download_artifacts("models:/<name>/<version>")`` returns) without
``mlflow.pyfunc.load_model``: it finds the config, the state dict and the ONNX file from
the ``MLmodel`` file, so a long-lived process loads versions logged by older code with its
own code (loading a pyfunc would swap this package on ``sys.path`` for the model's copy).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from registry.model import (
    CONFIG_ARTIFACT,
    WEIGHTS_ARTIFACT,
    ClassifierConfig,
    build_network,
    forward_features,
)

log = logging.getLogger(__name__)

ONNX_ARTIFACT = "onnx"
ONNX_FILE = "classifier.onnx"
ONNX_INPUT = "images"
ONNX_OUTPUTS = ("probabilities", "embedding")
ONNX_OPSET = 17
# Largest allowed |p_onnx - p_torch| over a batch of probabilities. Float32 kernels differ
# in summation order, which moves probabilities by ~1e-6; 1e-4 still catches a wrong graph.
PARITY_ATOL = 1e-4
PARITY_BATCH = 4


class ServingNetwork(nn.Module):
    """A classifier network as served: uint8 pixels in, probabilities and embedding out."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("scale", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images.float() / 255.0 - self.shift) / self.scale  # (B, 3, S, S)
        features = forward_features(self.net, x)  # (B, D)
        logits = self.net.fc(features)  # (B, C)
        return torch.softmax(logits.float(), dim=1), features.float()


def serving_network(net: nn.Module, config: ClassifierConfig) -> ServingNetwork:
    """Wrap ``net`` (in eval mode) with ``config``'s mean and std."""
    return ServingNetwork(net.eval(), config.mean, config.std).eval()


@dataclass(frozen=True)
class ParityReport:
    """How far the ONNX model's answers are from torch's on the same batch."""

    max_abs_diff: float
    images: int
    passed: bool


def export_onnx(
    net: nn.Module, config: ClassifierConfig, path: Path, images: np.ndarray | None = None
) -> ParityReport:
    """Export ``net`` to ONNX at ``path`` and check it against torch on ``images``.

    ``images`` is a uint8 batch ``(B, S, S, 3)`` (random pixels when None). The file is
    removed again when the check fails; the report says by how much.
    """
    import onnxruntime

    module = serving_network(net.cpu(), config)
    size = config.image_size
    if images is None:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (PARITY_BATCH, size, size, 3), dtype=np.uint8)
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    dynamic = {ONNX_INPUT: {0: "batch"}, **{name: {0: "batch"} for name in ONNX_OUTPUTS}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (batch[:1],),
            str(path),
            dynamo=False,
            input_names=[ONNX_INPUT],
            output_names=list(ONNX_OUTPUTS),
            dynamic_axes=dynamic,
            opset_version=ONNX_OPSET,
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_probs, _ = session.run(None, {ONNX_INPUT: batch.numpy()})
    with torch.inference_mode():
        torch_probs, _ = module(batch)
    diff = float(np.abs(onnx_probs - torch_probs.numpy()).max())
    report = ParityReport(max_abs_diff=diff, images=len(batch), passed=diff <= PARITY_ATOL)
    if not report.passed:
        path.unlink(missing_ok=True)
        log.warning(
            "ONNX export differs from torch by %.2e (> %.0e): not kept; the version is served "
            "with torch",
            diff,
            PARITY_ATOL,
        )
    return report


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


def load_network(logged: LoggedClassifier) -> nn.Module:
    """The logged classifier's network with its weights, on the CPU, in eval mode."""
    state = torch.load(logged.weights, map_location="cpu", weights_only=True)
    net = build_network(logged.config.arch, logged.config.num_classes)
    net.load_state_dict(state)
    return net.eval()
