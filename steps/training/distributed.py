"""Where training runs: the device, mixed precision, and PyTorch DDP under ``torchrun``.

The device is chosen automatically: CUDA (bf16 or fp16 autocast, channels_last, pinned
memory), Apple MPS, else the CPU with all its cores (shared between the processes of a
``torchrun`` job). Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group uses NCCL on
CUDA and gloo otherwise; rank 0 alone talks to MLflow.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """This process's place in the job and the device it computes on."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def channels_last(self) -> bool:
        return self.device.type in ("cuda", "cpu")

    def autocast(self) -> AbstractContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16 autocast (bf16 needs none)."""
        if self.amp_dtype == torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None

    def describe(self) -> str:
        amp = f", autocast {str(self.amp_dtype).removeprefix('torch.')}" if self.amp_dtype else ""
        threads = f", {torch.get_num_threads()} threads" if self.device.type == "cpu" else ""
        ddp = f", rank {self.rank}/{self.world_size}" if self.distributed else ""
        return f"{self.device}{amp}{threads}{ddp}"


def pick_device(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def setup() -> Context:
    """Start this process's share of the job (alone, or one rank under ``torchrun``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(local_rank)
    amp_dtype = None
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend, device_id=device if device.type == "cuda" else None
        )
    return Context(device, rank, local_rank, world_size, amp_dtype)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: Context, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks."""
    if not ctx.distributed:
        return values
    device = ctx.device if ctx.cuda else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_object(ctx: Context, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.cuda else None)
    return box[0]


def broadcast_module(ctx: Context, module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def wrap(ctx: Context, module: nn.Module) -> nn.Module:
    """``module`` under DistributedDataParallel when the job has several ranks."""
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[ctx.device.index] if ctx.cuda else None)
