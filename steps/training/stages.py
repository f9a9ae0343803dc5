"""The two ways to train, as :class:`~steps.training.loop.Stage` objects.

- Head only (``--trainable-layers 0``): the frozen backbone (BatchNorm in eval mode) turns
  each image, through the eval preset, into its embedding once; every epoch then trains
  the linear head on those cached features. One forward pass over the data in all, so
  the augmentations of the train preset do not apply.
- Fine-tuning (``--trainable-layers 1`` or more): the train split decoded once into a uint8
  cache slightly larger than ``image_size``; each batch is augmented on the device by the
  batched train preset. No JPEG is decoded after the first pass.

Under DDP each rank caches only its own shard of the train and validation splits.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from marketplace_models.network import forward_features
from steps.training.config import TrainConfig
from steps.training.data import CleanData, decode_images, labels_of, shard, train_cache_size
from steps.training.distributed import Context, all_reduce_sum, wrap
from steps.training.loop import BatchSource, Stage
from steps.training.model import set_train_mode
from steps.training.transforms import eval_batch, train_transform

log = logging.getLogger(__name__)


def place(tensor: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Keep a cache on the GPU when it fits, else in pinned host memory (CPU: as is)."""
    if not ctx.cuda:
        return tensor
    try:
        return tensor.to(ctx.device)
    except torch.OutOfMemoryError:
        log.info("cache of %.1f GB stays in pinned host memory", tensor.nbytes / 1e9)
        return tensor.pin_memory()


def eval_images(inputs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cached eval-preset images to model inputs (the transform of eval batches)."""
    return eval_batch(inputs)


def eval_source(images: torch.Tensor, labels: torch.Tensor, batch_size: int, ctx: Context):
    """Batches of eval-preset images, in order (validation and test)."""
    return BatchSource(
        place(images, ctx),
        labels.to(ctx.device) if ctx.cuda else labels,
        batch_size * 2,
        ctx.device,
        transform=eval_images,
        channels_last=ctx.channels_last,
    )


@torch.inference_mode()
def compute_features(net: nn.Module, source: BatchSource, ctx: Context) -> torch.Tensor:
    """Backbone features ``(N, D)`` of every image in ``source``, float32, on the device."""
    net.eval()
    features = []
    for inputs, _ in source.batches():
        with ctx.autocast():
            features.append(forward_features(net, inputs).float())  # (B, D)
    return torch.cat(features)


def _shard_split(data: CleanData, split: str, cfg: TrainConfig, ctx: Context):
    frame = shard(data.split(split), ctx.rank, ctx.world_size, cfg.seed)
    return frame, data.paths(frame), labels_of(frame)


def _per_epoch(ctx: Context, count: int) -> int | None:
    """Train images per epoch on every rank: the smallest shard's size under DDP."""
    if not ctx.distributed:
        return None
    sizes = all_reduce_sum(ctx, [count if r == ctx.rank else 0 for r in range(ctx.world_size)])
    return int(min(sizes))


def head_only_stage(net: nn.Module, data: CleanData, cfg: TrainConfig, ctx: Context) -> Stage:
    """Train the head over backbone features computed once per image."""
    start = time.perf_counter()
    _, train_paths, train_labels = _shard_split(data, "train", cfg, ctx)
    _, val_paths, val_labels = _shard_split(data, "val", cfg, ctx)
    train_images = decode_images(train_paths, cfg.image_size, cfg.num_workers)
    val_images = decode_images(val_paths, cfg.image_size, cfg.num_workers)
    decoded = time.perf_counter()
    if ctx.channels_last:
        net.to(memory_format=torch.channels_last)
    train_features = compute_features(
        net, eval_source(train_images, train_labels, cfg.batch_size, ctx), ctx
    )
    val_features = compute_features(
        net, eval_source(val_images, val_labels, cfg.batch_size, ctx), ctx
    )
    seconds = time.perf_counter() - start
    log.info(
        "head only: decoded %d images in %.1f s, backbone features (%d-d) in %.1f s, once",
        len(train_paths) + len(val_paths),
        decoded - start,
        train_features.shape[1],
        seconds - (decoded - start),
    )
    device_labels = train_labels.to(ctx.device)
    head = wrap(ctx, net.fc)
    return Stage(
        module=head,
        train=BatchSource(
            train_features,
            device_labels,
            cfg.batch_size,
            ctx.device,
            shuffle=True,
            seed=cfg.seed + ctx.rank,
            per_epoch=_per_epoch(ctx, len(train_labels)),
        ),
        val=BatchSource(val_features, val_labels.to(ctx.device), cfg.batch_size * 2, ctx.device),
        train_mode=head.train,
        setup_seconds=seconds,
        notes={"cache_size": cfg.image_size, "train_images": len(train_labels)},
    )


def finetune_stage(net: nn.Module, data: CleanData, cfg: TrainConfig, ctx: Context) -> Stage:
    """Train the unfrozen blocks end to end on batch-augmented cached images."""
    start = time.perf_counter()
    size = train_cache_size(cfg.image_size, cfg.clean_size)
    _, train_paths, train_labels = _shard_split(data, "train", cfg, ctx)
    _, val_paths, val_labels = _shard_split(data, "val", cfg, ctx)
    train_images = decode_images(train_paths, size, cfg.num_workers)
    val_images = decode_images(val_paths, cfg.image_size, cfg.num_workers)
    seconds = time.perf_counter() - start
    log.info(
        "decoded %d images once in %.1f s (train cache %d px, %.0f MB)",
        len(train_paths) + len(val_paths),
        seconds,
        size,
        (train_images.nbytes + val_images.nbytes) / 1e6,
    )
    if ctx.channels_last:
        net.to(memory_format=torch.channels_last)
    module = wrap(ctx, net)
    augment = train_transform(cfg.image_size).to(ctx.device)
    return Stage(
        module=module,
        train=BatchSource(
            place(train_images, ctx),
            train_labels.to(ctx.device) if ctx.cuda else train_labels,
            cfg.batch_size,
            ctx.device,
            transform=augment,
            shuffle=True,
            seed=cfg.seed + ctx.rank,
            per_epoch=_per_epoch(ctx, len(train_labels)),
            channels_last=ctx.channels_last,
        ),
        val=eval_source(val_images, val_labels, cfg.batch_size, ctx),
        train_mode=lambda: set_train_mode(net, cfg.trainable_layers),
        setup_seconds=seconds,
        notes={"cache_size": size, "train_images": len(train_labels)},
    )


def build_stage(net: nn.Module, data: CleanData, cfg: TrainConfig, ctx: Context) -> Stage:
    """Head-only or fine-tuning stage for ``cfg.trainable_layers``."""
    if cfg.head_only:
        return head_only_stage(net, data, cfg, ctx)
    return finetune_stage(net, data, cfg, ctx)
