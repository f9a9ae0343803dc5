"""The served network, and its ONNX export checked against torch.

:class:`~marketplace_models.network.ServingNetwork` is the one inference graph of a logged
classifier: uint8 images ``(B, 3, S, S)`` in, ``probabilities (B, C)`` and the
``embedding (B, D)`` out, with the evaluation preset's mean/std inside. The service runs it
with torch, or, exported by
:func:`export_onnx` at logging time, with ONNX Runtime; both see the same pixels because
both are fed by :func:`marketplace_models.network.preprocess_image`.

:func:`export_onnx` writes ``classifier.onnx`` (batch size dynamic) and checks it against
the torch network on a batch of images: the export is kept only when the largest absolute
difference between the two models' probabilities is at most :data:`PARITY_ATOL`.

:func:`quantize_onnx` makes the int8 twin of that file (static quantization, QDQ format,
per-channel weights) calibrated on uint8 photos prepared as the service prepares them;
:func:`onnx_probabilities` and :func:`images_per_second` are what the accuracy gate and the
speed figures run (the gate itself lives with whoever decides: training and the registry).

Only the export needs torch, and imports it when called: the service runs the exports in an
environment without it (``pip install '.[serve]'``).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from marketplace_models.config import ClassifierConfig

if TYPE_CHECKING:
    from torch import nn

    from marketplace_models.network import ServingNetwork

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
INT8_FILE = "classifier.int8.onnx"
CALIBRATION_BATCH = 16
SPEED_BATCH = 16


def serving_network(net: nn.Module, config: ClassifierConfig) -> ServingNetwork:
    """Wrap ``net`` (in eval mode) with ``config``'s mean and std."""
    from marketplace_models.network import ServingNetwork

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
    import torch

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


class PixelCalibration:
    """An ONNX Runtime ``CalibrationDataReader`` (its ``get_next``/``rewind`` protocol)
    over uint8 photos ``(N, S, S, 3)``.

    Feeds the served graph's input (``images``, ``(B, 3, S, S)`` uint8) in batches, so the
    calibrator sees exactly the pixels the service will send.
    """

    def __init__(self, pixels: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self.pixels = pixels
        self.batch = batch
        self._batches: Iterator[dict[str, np.ndarray]] | None = None

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.pixels), self.batch):
            chunk = self.pixels[start : start + self.batch]
            yield {ONNX_INPUT: np.ascontiguousarray(chunk.transpose(0, 3, 1, 2))}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = self._iterate()
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = None


def quantize_onnx(fp32_path: Path, int8_path: Path, calibration: np.ndarray) -> Path:
    """Write the static int8 (QDQ, per-channel weights) version of ``fp32_path``.

    ``calibration`` is a uint8 batch ``(N, S, S, 3)`` of photos prepared as served; the
    activations' ranges come from it. Returns ``int8_path``.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ValueError("no calibration photos: the int8 export needs a few hundred")
    reader = PixelCalibration(calibration)
    prepared = int8_path.with_suffix(".prepared.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=_float_head(prepared),
        )
    finally:
        prepared.unlink(missing_ok=True)
    return int8_path


def _float_head(path: Path) -> list[str]:
    """The nodes left in float: the classifier head (its Gemm) and the softmax, so that
    the logits are not rounded to 256 levels and the probabilities still sum to 1."""
    import onnx

    graph = onnx.load(str(path)).graph
    return [node.name for node in graph.node if node.op_type in ("Gemm", "Softmax")]


def onnx_session(path: Path):
    """An ONNX Runtime CPU session of ``path``, fully optimised."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_probabilities(session, pixels: np.ndarray, batch: int = SPEED_BATCH) -> np.ndarray:
    """The probabilities ``(N, C)`` ``session`` gives uint8 photos ``(N, S, S, 3)``."""
    rows = []
    for start in range(0, len(pixels), batch):
        chunk = np.ascontiguousarray(pixels[start : start + batch].transpose(0, 3, 1, 2))
        rows.append(session.run([ONNX_OUTPUTS[0]], {ONNX_INPUT: chunk})[0])
    return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def images_per_second(session, pixels: np.ndarray, repeats: int = 3) -> float:
    """Throughput of ``session`` on one batch ``pixels`` (best of ``repeats`` after a warm-up)."""
    batch = {ONNX_INPUT: np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))}
    session.run(None, batch)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, batch)
        best = min(best, time.perf_counter() - started)
    return len(pixels) / best if best > 0 else float("inf")
