"""Inference engines: the served network run by ONNX Runtime or by torch.

Each engine takes a uint8 batch ``(B, S, S, 3)`` (what the shared normalisation makes)
and returns ``probabilities (B, C)`` and ``embedding (B, D)`` as float32 arrays. Which one
serves a version (:func:`build_engine`), and its ``reason``:

- ``auto``: torch with CUDA (fp16 autocast) when a GPU is there; else the version's int8
  export (``onnx-int8``) when it has one that passed its accuracy gate
  (:mod:`registry.quantize`); else its fp32 ONNX export; else (a version registered before
  exports existed) torch on the CPU.
- ``onnx-int8``: the int8 export; a version without one fails to load (the service answers
  503 saying so) rather than quietly serving another engine than the one asked for.
- ``onnx``: the fp32 ONNX export; a version without one fails to load.
- ``torch``: torch on the GPU if there is one, else the CPU.

torch is imported only when a torch engine is built (or ``auto`` asks whether a GPU is
there), so a service installed with ``pip install '.[serve]'`` (no torch) serves every
version that has an ONNX export; one without answers 503 naming the extra to install.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

import numpy as np

from marketplace_models.errors import NeedsTorch, import_torch
from marketplace_models.logged import LoggedClassifier
from marketplace_models.onnx import ONNX_INPUT

INT8 = "onnx-int8"


class Engine(Protocol):
    """Something that runs the served network on a batch of uint8 images."""

    name: str
    reason: str

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class EngineUnavailable(RuntimeError):
    """The engine asked for cannot run this version here."""


class OnnxEngine:
    """An ONNX export of the version (fp32 or int8) in an ONNX Runtime session (CPU)."""

    def __init__(self, path: str, name: str = "onnx", reason: str = "") -> None:
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
        self.name, self.reason = name, reason

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))  # (B, 3, S, S)
        probabilities, embedding = self.session.run(None, {ONNX_INPUT: images})
        return probabilities, embedding


class TorchEngine:
    """The network in eager torch under ``inference_mode`` (fp16 autocast on CUDA)."""

    def __init__(self, logged: LoggedClassifier, device: str, reason: str = "") -> None:
        import torch

        from marketplace_models.image import load_network
        from marketplace_models.onnx import serving_network

        self.device = torch.device(device)
        module = serving_network(load_network(logged), logged.config).to(self.device)
        if self.device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        self.module = module.eval()
        self.name = f"torch-{self.device.type}"
        self.reason = reason

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

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


def build_engine(
    logged: LoggedClassifier, choice: str, int8: Path | None = None, int8_problem: str = ""
) -> Engine:
    """The engine ``choice`` (auto, onnx-int8, onnx, torch) for the logged classifier.

    ``int8`` is the version's int8 export when it has one that passed its gate;
    ``int8_problem`` why it has none (said in the reason ``auto`` gives).
    """
    if choice == "torch":
        cuda = _torch("SERVE_ENGINE=torch").cuda.is_available()
        return TorchEngine(logged, "cuda" if cuda else "cpu", "SERVE_ENGINE=torch")
    if choice == "auto" and _cuda():
        return TorchEngine(logged, "cuda", "auto: a GPU is here (torch, fp16)")
    if choice in (INT8, "auto") and int8 is not None:
        why = "SERVE_ENGINE=onnx-int8" if choice == INT8 else "auto: int8 export passed its gate"
        engine = _onnx(str(int8), INT8, why, required=choice == INT8)
        if engine is not None:
            return engine
    if choice == INT8:
        raise EngineUnavailable(
            f"SERVE_ENGINE=onnx-int8, but the version has no int8 export ({int8_problem or 'none'}"
            "): add one with `python -m registry quantize --version N`, or serve it with "
            "SERVE_ENGINE=auto"
        )
    no_int8 = f" (no int8 export: {int8_problem})" if int8_problem else ""
    if logged.onnx is not None:
        why = "SERVE_ENGINE=onnx" if choice == "onnx" else f"auto: fp32 ONNX export{no_int8}"
        engine = _onnx(str(logged.onnx), "onnx", why, required=choice == "onnx")
        if engine is not None:
            return engine
    elif choice == "onnx":
        raise EngineUnavailable(
            "the version has no ONNX export (registered before exports existed, or its "
            "export failed the parity check): serve it with SERVE_ENGINE=auto or torch"
        )
    _torch("this version has no usable ONNX export")
    return TorchEngine(logged, "cpu", "auto: the version has no usable ONNX export")


def _torch(why: str):
    """torch, or :class:`EngineUnavailable` saying ``why`` it is needed and how to get it."""
    try:
        return import_torch(why)
    except NeedsTorch as exc:
        raise EngineUnavailable(str(exc)) from None


def _cuda() -> bool:
    """Whether torch is installed and sees a GPU."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _onnx(path: str, name: str, reason: str, *, required: bool) -> OnnxEngine | None:
    """An ONNX Runtime engine, or None (``required``: :class:`EngineUnavailable`) without it."""
    try:
        return OnnxEngine(path, name, reason)
    except ImportError as exc:
        if required:
            raise EngineUnavailable(f"onnxruntime is not installed ({exc})") from None
        return None
