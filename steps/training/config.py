"""The training run's hyperparameters: one frozen dataclass, logged as run params."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from registry.kinds import MODEL_NAME

ALL_LAYERS = 5  # stem + layer1..layer4 + head: `--trainable-layers all`
HEAD_ONLY = 0
AUTO = "auto"  # how a setting resolved at run time (clean_size, trainable_layers) is given
FP32, BF16 = "fp32", "bf16"
PRECISIONS = (AUTO, FP32, BF16)  # --precision: the autocast dtype training computes in

# Parameters a resumed run takes from its checkpoint, not from the command line: they
# define the model, the data it sees and the schedule, so changing them mid-run would
# make the continued metric history meaningless (and, for the data, let test images leak
# into training).
RESUMED_FROM_CHECKPOINT = (
    "clean",
    "epochs",
    "arch",
    "weights",
    "image_size",
    "clean_size",
    "batch_size",
    "lr",
    "weight_decay",
    "trainable_layers",
    "label_smoothing",
    "patience",
    "seed",
    "register",
    "model_name",
)


@dataclass(frozen=True)
class TrainConfig:
    """Command-line parameters of ``steps.train`` (MLproject entry point ``train``)."""

    clean: Path = Path("data/clean")
    epochs: int = 15
    arch: str = "resnet50"
    weights: str = "auto"
    image_size: int = 224
    clean_size: int | None = None  # None: auto, the smallest cleaned size that fits
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    trainable_layers: int | None = None  # None: auto (see training.model.auto_trainable_layers)
    label_smoothing: float = 0.1
    patience: int = 5
    seed: int = 0
    num_workers: int = 2
    precision: str = AUTO  # auto | fp32 | bf16 (see training.distributed.choose_precision)
    register: bool = True
    model_name: str = MODEL_NAME
    resume: str = ""
    allow_data_change: bool = False  # resume on cleaned data that changed since the run began

    @property
    def head_only(self) -> bool:
        return self.trainable_layers == HEAD_ONLY

    def as_params(self) -> dict[str, Any]:
        """Plain values (``clean`` as text), for ``mlflow.log_params`` and checkpoints."""
        params = asdict(self)
        params["clean"] = str(self.clean)
        if self.trainable_layers is None:
            params["trainable_layers"] = AUTO
        return params

    def resumed_with(
        self, checkpoint_args: dict[str, Any], clean_path: str | None = None
    ) -> TrainConfig:
        """This config with the model- and data-defining values of a checkpoint's ``args``;
        ``clean_path`` (the checkpoint's absolute clean folder) wins over its ``clean`` as
        given, so a resume from another folder reads the same data."""
        kept = {k: checkpoint_args[k] for k in RESUMED_FROM_CHECKPOINT if k in checkpoint_args}
        if clean_path:
            kept["clean"] = clean_path
        if "clean" in kept:
            kept["clean"] = Path(kept["clean"])
        return replace(self, **kept)
