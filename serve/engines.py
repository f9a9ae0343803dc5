"""Inference engines: the served network run by ONNX Runtime or by torch.

Each engine takes a uint8 batch ``(B, S, S, 3)`` (what the shared normalisation makes)
and returns ``probabilities (B, C)`` and ``embedding (B, D)`` as float32 arrays. Which one
serves a version (:func:`build_engine`):

- ``auto``: torch with CUDA (fp16 autocast) when a GPU is there; else the version's ONNX
  export with ONNX Runtime; else (a version registered before exports existed) torch on
  the CPU.
- ``onnx``: ONNX Runtime; a version without an export fails to load.
- ``torch``: torch on the GPU if there is one, else the CPU.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import numpy as np
import torch

from marketplace_models.image import LoggedClassifier, load_network
from marketplace_models.onnx import ONNX_INPUT, serving_network


class Engine(Protocol):
    """Something that runs the served network on a batch of uint8 images."""

    name: str

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class EngineUnavailable(RuntimeError):
    """The engine asked for cannot run this version here."""


class OnnxEngine:
    """The version's ONNX export in an ONNX Runtime session (CPU)."""

    name = "onnx"

    def __init__(self, path: str) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime's threads spin between and after runs by default, burning the cores
        # that the decode threads and the event loop need (bench/serve.py: up to half the
        # CPU of a request on 2 cores). Off, they sleep when idle.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            path, options, providers=["CPUExecutionProvider"]
        )

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))  # (B, 3, S, S)
        probabilities, embedding = self.session.run(None, {ONNX_INPUT: images})
        return probabilities, embedding


class TorchEngine:
    """The network in eager torch under ``inference_mode`` (fp16 autocast on CUDA)."""

    def __init__(self, logged: LoggedClassifier, device: torch.device) -> None:
        self.device = device
        module = serving_network(load_network(logged), logged.config).to(device)
        if device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        self.module = module.eval()
        self.name = f"torch-{device.type}"

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = torch.from_numpy(pixels).to(self.device, non_blocking=True)
        images = batch.permute(0, 3, 1, 2)  # (B, 3, S, S)
        autocast = (
            torch.autocast("cuda", dtype=torch.float16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            probabilities, embedding = self.module(images)
        return (
            probabilities.float().cpu().numpy(),
            embedding.float().cpu().numpy(),
        )


def build_engine(logged: LoggedClassifier, choice: str) -> Engine:
    """The engine ``choice`` (auto, onnx, torch) for the logged classifier."""
    cuda = torch.cuda.is_available()
    if choice == "torch" or (choice == "auto" and cuda):
        return TorchEngine(logged, torch.device("cuda" if cuda else "cpu"))
    if logged.onnx is not None:
        try:
            return OnnxEngine(str(logged.onnx))
        except ImportError as exc:
            if choice == "onnx":
                raise EngineUnavailable(f"onnxruntime is not installed ({exc})") from None
    elif choice == "onnx":
        raise EngineUnavailable(
            "the version has no ONNX export (registered before exports existed, or its "
            "export failed the parity check): serve it with SERVE_ENGINE=auto or torch"
        )
    return TorchEngine(logged, torch.device("cpu"))
