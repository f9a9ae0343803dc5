"""The training loop in pieces: batches, one epoch, evaluation, optimiser, schedule, stopping.

Nothing here reads files or talks to MLflow: :func:`fit` calls ``on_epoch_end`` after each
epoch and the caller logs and checkpoints there.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cli import UserError
from steps.training.distributed import Context, all_reduce_sum

log = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
WARMUP_FRACTION = 0.05
LR_FLOOR = 0.01  # the cosine ends at 1 % of --lr


def as_is(inputs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The transform for inputs that need none (cached features)."""
    return inputs


@dataclass
class BatchSource:
    """Batches of (inputs, labels) from tensors held in memory.

    ``inputs`` are cached uint8 images ``(N, 3, S, S)`` or cached features ``(N, D)``, on
    the host (pinned on CUDA) or already on the device; ``transform`` runs on the device.
    With ``shuffle`` each epoch sees a permutation seeded by ``(seed, epoch)``, so a resumed
    run sees the same batches it would have seen. ``per_epoch`` caps the samples per epoch
    (DDP ranks must all take the same number of steps); a partial last batch is dropped
    when shuffling.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    device: torch.device
    transform: Transform = as_is
    shuffle: bool = False
    seed: int = 0
    per_epoch: int | None = None
    channels_last: bool = False

    @property
    def size(self) -> int:
        return len(self.labels) if self.per_epoch is None else min(self.per_epoch, len(self.labels))

    def __len__(self) -> int:
        if not self.shuffle:
            return math.ceil(self.size / self.batch_size)
        return max(1, self.size // self.batch_size)

    @property
    def images_per_epoch(self) -> int:
        return min(self.size, len(self) * self.batch_size)

    def batches(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        count = len(self.labels)
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        order = order[: self.images_per_epoch]
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self._to_device(index, generator)

    def _to_device(self, index: torch.Tensor, generator: torch.Generator):
        inputs = self.inputs[index.to(self.inputs.device)]
        labels = self.labels[index.to(self.labels.device)]
        if inputs.device != self.device:
            if self.device.type == "cuda":
                inputs = inputs.pin_memory()
            inputs = inputs.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
        inputs = self.transform(inputs, generator)
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, labels


@dataclass(frozen=True)
class EpochResult:
    loss: float
    accuracy: float
    images: int
    seconds: float
    lr: float = 0.0  # mean learning rate over the epoch's steps (training only)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch logs (``step=epoch``)."""

    epoch: int
    train: EpochResult
    val: EpochResult
    seconds: float

    def metrics(self) -> dict[str, float]:
        """``train/loss``, ``train/accuracy``, ``val/loss``, ``val/accuracy``, and ungrouped
        ``lr``, ``epoch_seconds`` and ``images_per_second`` (training throughput).

        The MLflow UI charts each ``<split>/`` group as a section, sorted by name: the train
        and val sections each hold accuracy then loss, so val's loss sits under train's. The
        throughput stays out of the train section so that the two line up."""
        return {
            "train/loss": self.train.loss,
            "train/accuracy": self.train.accuracy,
            "val/loss": self.val.loss,
            "val/accuracy": self.val.accuracy,
            "lr": self.train.lr,
            "epoch_seconds": self.seconds,
            "images_per_second": self.train.images_per_second,
        }

    def summary(self, epochs: int) -> str:
        return (
            f"epoch {self.epoch}/{epochs}: train loss {self.train.loss:.4f} "
            f"acc {self.train.accuracy:.3f} | val loss {self.val.loss:.4f} "
            f"acc {self.val.accuracy:.3f} | lr {self.train.lr:.2e} | {self.seconds:.1f} s, "
            f"{self.train.images_per_second:.0f} img/s"
        )


def _progress(source: BatchSource, ctx: Context, description: str, epoch: int):
    return tqdm(
        source.batches(epoch),
        total=len(source),
        desc=description,
        leave=False,
        disable=not (ctx.is_main and sys.stderr.isatty()),  # logs get the epoch summary
        mininterval=0.5,
        file=sys.stderr,
    )


def train_one_epoch(
    module: nn.Module,
    source: BatchSource,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    ctx: Context,
    epoch: int,
    *,
    scaler: torch.amp.GradScaler | None = None,
    description: str = "train",
) -> EpochResult:
    """One pass over ``source``; loss and accuracy are summed over all ranks."""
    start = time.perf_counter()
    total_loss = torch.zeros((), device=ctx.device, dtype=torch.float64)
    correct = torch.zeros((), device=ctx.device, dtype=torch.long)
    seen, lr_sum = 0, 0.0
    bar = _progress(source, ctx, description, epoch)
    for step, (inputs, labels) in enumerate(bar):
        with ctx.autocast():
            logits = module(inputs)  # (B, C)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        lr_sum += optimizer.param_groups[0]["lr"]
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        total_loss += loss.detach().double() * len(labels)
        correct += (logits.detach().argmax(dim=1) == labels).sum()
        seen += len(labels)
        if ctx.is_main and step % 10 == 0:
            bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", refresh=False)
    loss_sum, correct_sum, count = all_reduce_sum(ctx, [total_loss.item(), correct.item(), seen])
    if not math.isfinite(loss_sum):
        raise UserError(f"training diverged at epoch {epoch} (loss is {loss_sum}): lower --lr")
    seconds = time.perf_counter() - start
    lr = lr_sum / max(1, len(source))
    return EpochResult(loss_sum / count, correct_sum / count, int(count), seconds, lr)


@torch.inference_mode()
def predict_logits(module: nn.Module, source: BatchSource, ctx: Context) -> torch.Tensor:
    """Logits ``(N, C)`` for every input of ``source`` in order, on the CPU, as float32."""
    module.eval()
    outputs = []
    for inputs, _ in source.batches():
        with ctx.autocast():
            outputs.append(module(inputs).float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0, 0)


@torch.inference_mode()
def evaluate(
    module: nn.Module, source: BatchSource, criterion: nn.Module, ctx: Context
) -> EpochResult:
    """Loss and accuracy over ``source``, summed over all ranks."""
    start = time.perf_counter()
    module.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, labels in source.batches():
        with ctx.autocast():
            logits = module(inputs)
        total_loss += float(criterion(logits.float(), labels)) * len(labels)
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += len(labels)
    loss_sum, correct_sum, count = all_reduce_sum(ctx, [total_loss, correct, seen])
    count = max(count, 1)
    return EpochResult(
        loss_sum / count, correct_sum / count, int(count), time.perf_counter() - start
    )


def build_optimizer(
    parameters: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW; biases and BatchNorm weights (1-d parameters) get no weight decay."""
    decay = [p for p in parameters if p.ndim > 1]
    no_decay = [p for p in parameters if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=lr)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warmup over the first 5 % of steps, then cosine to 1 %."""
    warmup = max(1, round(total_steps * WARMUP_FRACTION))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class EarlyStopping:
    """Stops when validation loss has not improved for ``patience`` epochs (0: never)."""

    patience: int
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, loss: float, epoch: int) -> bool:
        """Record ``loss``; True when it is the best so far."""
        if loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss = float(state["best_loss"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])


@dataclass
class Stage:
    """What is trained (``module``), on what, and how to put it in training mode."""

    module: nn.Module
    train: BatchSource
    val: BatchSource
    train_mode: Callable[[], None]
    setup_seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


EpochCallback = Callable[[EpochRecord, bool], None]


def fit(
    stage: Stage,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    stopper: EarlyStopping,
    ctx: Context,
    *,
    first_epoch: int,
    epochs: int,
    scaler: torch.amp.GradScaler | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> list[EpochRecord]:
    """Train epochs ``first_epoch .. epochs``; stop early when ``stopper`` says so."""
    records: list[EpochRecord] = []
    for epoch in range(first_epoch, epochs + 1):
        if stopper.should_stop:
            break
        start = time.perf_counter()
        stage.train_mode()
        train = train_one_epoch(
            stage.module,
            stage.train,
            optimizer,
            scheduler,
            criterion,
            ctx,
            epoch,
            scaler=scaler,
            description=f"epoch {epoch}/{epochs}",
        )
        val = evaluate(stage.module, stage.val, criterion, ctx)
        record = EpochRecord(epoch, train, val, time.perf_counter() - start)
        improved = stopper.update(val.loss, epoch)
        records.append(record)
        if ctx.is_main:
            log.info(record.summary(epochs))
        if on_epoch_end is not None:
            on_epoch_end(record, improved)
        if stopper.should_stop:
            log.info(
                "early stop after epoch %d: val loss has not improved since epoch %d",
                epoch,
                stopper.best_epoch,
            )
    return records


def softmax_numpy(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=1).numpy()
