"""The network to train: architecture, starting weights (``--weights``) and frozen layers.

``--weights`` is one of ``auto`` (ImageNet weights from the torch hub cache or a download,
else random initialisation with a warning), ``imagenet`` (the same, but an error when they
cannot be had), ``none`` (random initialisation), or a path or URI (``runs:/``,
``models:/``, ``s3://``, ``mlflow-artifacts:/``, ``http(s)://``) to a state dict, a
training checkpoint or a logged classifier. The head (``fc``) of a loaded state dict is
kept when its shape fits and dropped otherwise; every other key must fit the arch.

``simplecnn`` always starts from random weights with every layer trained
(:func:`fit_to_arch`): there are no pretrained weights for it, and a network that small
learns nothing useful with parts of it frozen at random values.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from cli import UserError
from marketplace_models.image import WEIGHTS_FILE
from marketplace_models.network import ARCHS, SIMPLE_CNN, build_network
from steps.training.config import ALL_LAYERS, TrainConfig

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 20.0
# Blocks from the head backwards: --trainable-layers N unfreezes the first N + 1 of them.
BLOCKS_FROM_HEAD = ("fc", "layer4", "layer3", "layer2", "layer1", "stem")
STEM = ("conv1", "bn1")
FROM_SCRATCH_NOTE = (
    "simplecnn trains from scratch (weights none) with every layer trainable: --weights and "
    "--trainable-layers do not apply to it"
)


def parse_trainable_layers(value: str) -> int | None:
    """``0`` (head only) .. ``5``, ``all`` (= 5; larger numbers mean all), or ``auto``
    (None: decided by the starting weights, see ``auto_trainable_layers``)."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if text == "all":
        return ALL_LAYERS
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if number < 0 or not number.is_integer():
        raise UserError(
            f"--trainable-layers must be auto, 0 (head only), 1 (+layer4) .. 5, or all; "
            f"got {value!r}"
        )
    return min(int(number), ALL_LAYERS)


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise UserError(f"unknown --arch {arch!r}: use one of {', '.join(ARCHS)}")
    return arch


def fit_to_arch(cfg: TrainConfig) -> tuple[TrainConfig, str | None]:
    """``cfg`` with the settings its arch imposes, and why (logged as the ``arch_note`` param).

    Only simplecnn imposes any: random weights, all layers trained. Weights it cannot use
    (ImageNet, a file) are an error rather than silently ignored.
    """
    if cfg.arch != SIMPLE_CNN:
        return cfg, None
    if cfg.weights.strip().lower() not in ("auto", "none", "random", ""):
        raise UserError(
            f"--weights {cfg.weights} does not apply to simplecnn, which always trains from "
            "scratch: drop --weights (or pass none), or pick a resnet --arch"
        )
    return replace(cfg, weights="none", trainable_layers=ALL_LAYERS), FROM_SCRATCH_NOTE


# ------------------------------------------------------------------------- weights


def _imagenet_state(arch: str, *, download: bool) -> tuple[dict, str]:
    """ImageNet weights from the torch hub cache, or downloaded with a short timeout."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(arch).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True), str(weights)
    if not download:
        raise OSError(f"not in {cached.parent}")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=False)
    finally:
        socket.setdefaulttimeout(previous)
    return state, str(weights)


def _fetch_weights_file(spec: str) -> Path:
    """A local path for ``spec``: a file, or an MLflow/S3/HTTP URI downloaded first."""
    if spec.startswith(("http://", "https://")):
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / Path(spec.split("?")[0]).name
        if not target.is_file():
            torch.hub.download_url_to_file(spec, str(target), progress=False)
        return target
    if "://" in spec or spec.startswith(("runs:/", "models:/")):
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
    else:
        local = Path(spec)
    if local.is_dir():  # a logged classifier: its state dict artifact
        found = sorted(local.rglob(WEIGHTS_FILE))
        if not found:
            raise UserError(f"--weights {spec} is a folder without a {WEIGHTS_FILE}")
        local = found[0]
    if not local.is_file():
        raise UserError(f"--weights {spec}: no such file; pass a state dict, auto or none")
    return local


def _read_state_dict(path: Path, spec: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a state dict"
        raise UserError(f"--weights {spec} is not a PyTorch state dict ({exc})") from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # a training checkpoint
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise UserError(f"--weights {spec} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def fit_state_dict(
    state: Mapping[str, torch.Tensor], net: nn.Module, arch: str, source: str
) -> dict[str, torch.Tensor]:
    """``state`` ready for ``net``: all backbone keys must fit; a different head is dropped."""
    expected = net.state_dict()
    head = {k for k in expected if k.startswith("fc.")}
    head_fits = all(k in state and state[k].shape == expected[k].shape for k in head)
    state = {k: v for k, v in state.items() if head_fits or not k.startswith("fc.")}
    missing = [k for k in expected if k not in state and (head_fits or k not in head)]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        sample = (missing or unexpected or wrong)[:3]
        raise UserError(
            f"the weights from {source} do not fit {arch} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} wrong-shaped keys, e.g. "
            f"{', '.join(sample)}): pass --arch matching the file, or --weights auto/none"
        )
    if not head_fits:
        log.info("weights from %s: new %d-class head", source, expected["fc.weight"].shape[0])
    return state


def resolve_weights(spec: str, arch: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The starting state dict for ``--weights spec`` (None: random) and what was used."""
    kind = spec.strip().lower()
    if kind in ("none", "random", ""):
        return None, "none"
    if kind in ("auto", "imagenet"):
        try:
            state, name = _imagenet_state(arch, download=True)
        except Exception as exc:  # offline, timeouts, proxies, corrupt files: all "unavailable"
            if kind == "imagenet":
                raise UserError(
                    f"ImageNet weights for {arch} could not be had ({exc}); put them in "
                    f"{Path(torch.hub.get_dir()) / 'checkpoints'} or use --weights auto or none"
                ) from None
            log.warning(
                "no ImageNet weights for %s (%s): training from random initialisation "
                "(put them in the torch hub cache, or pass --weights <file>)",
                arch,
                exc,
            )
            return None, "random (imagenet unavailable)"
        return state, f"imagenet:{name}"
    path = _fetch_weights_file(spec)
    return _read_state_dict(path, spec), f"file:{spec}"


def build_model(arch: str, num_classes: int, weights: str) -> tuple[nn.Module, str]:
    """The network to train and a description of its starting weights."""
    check_arch(arch)
    net = build_network(arch, num_classes)
    state, used = resolve_weights(weights, arch)
    if state is not None:
        net.load_state_dict(fit_state_dict(state, net, arch, weights), strict=False)
    return net, used


# ------------------------------------------------------------------------- freezing


def auto_trainable_layers(weights_used: str) -> tuple[int, str]:
    """What ``--trainable-layers auto`` trains, and why (logged with it): layer4 and the head
    over pretrained weights (their lower layers already see), everything over random ones
    (frozen random layers would only add noise)."""
    if weights_used.startswith(("imagenet:", "file:")):
        return 1, f"layer4 and the head: the other layers keep the pretrained {weights_used}"
    return ALL_LAYERS, f"all layers: the weights are random ({weights_used}), none worth freezing"


def blocks(net: nn.Module, trainable_layers: int) -> Iterator[tuple[nn.Module, bool]]:
    """Each top-level block of ``net`` and whether it is trained."""
    trained = set(BLOCKS_FROM_HEAD[: trainable_layers + 1])
    for name, module in net.named_children():
        block = "stem" if name in STEM else name if name in BLOCKS_FROM_HEAD else "fc"
        yield module, block in trained


def freeze(net: nn.Module, trainable_layers: int) -> None:
    """Turn off gradients outside the trained blocks."""
    for module, trained in blocks(net, trainable_layers):
        for param in module.parameters():
            param.requires_grad_(trained)


def set_train_mode(net: nn.Module, trainable_layers: int) -> None:
    """``train()`` for trained blocks; frozen blocks (their BatchNorm too) stay in eval."""
    for module, trained in blocks(net, trainable_layers):
        module.train(trained)


def trainable_parameters(net: nn.Module) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]
