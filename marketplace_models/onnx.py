"""The served network, and its ONNX export checked against torch.

:class:`ServingNetwork` is the one inference graph of a logged classifier: uint8 images
``(B, 3, S, S)`` in, ``probabilities (B, C)`` and the ``embedding (B, D)`` out, with the
evaluation preset's mean/std inside. The service runs it with torch, or, exported by
:func:`export_onnx` at logging time, with ONNX Runtime; both see the same pixels because
both are fed by :func:`marketplace_models.network.preprocess_image`.

:func:`export_onnx` writes ``classifier.onnx`` (batch size dynamic) and checks it against
the torch network on a batch of images: the export is kept only when the largest absolute
difference between the two models' probabilities is at most :data:`PARITY_ATOL`.
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

from marketplace_models.network import ClassifierConfig, forward_features

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
