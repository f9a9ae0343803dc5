"""Where training runs: the device, mixed precision, and PyTorch DDP under ``torchrun``.

The device is chosen automatically: CUDA (bf16 or fp16 autocast, channels_last, pinned
memory), Apple MPS, else the CPU with all its cores (shared between the processes of a
``torchrun`` job; bf16 autocast and channels_last where the CPU has bf16 instructions,
detected at run time). Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group uses NCCL on
CUDA and gloo otherwise; rank 0 alone talks to MLflow.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cli import UserError
from steps.training.config import AUTO, BF16, FP32, PRECISIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """This process's place in the job and the device it computes on."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype | None = None
    precision_reason: str = ""

    @property
    def precision(self) -> str:
        """The precision the forward passes run in: ``fp32``, ``bf16`` or ``fp16``."""
        return {torch.bfloat16: BF16, torch.float16: "fp16"}.get(self.amp_dtype, FP32)

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


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags Linux reports for this CPU (empty where it reports none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_support() -> str | None:
    """What makes this CPU fast in bf16 (AMX tiles or AVX-512 BF16), None when neither is
    there: without them bf16 is emulated and slower than fp32."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    return None


def choose_precision(device: torch.device, asked: str = AUTO) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for ``asked`` (``auto``, ``fp32`` or ``bf16``) on ``device``, and why.

    ``auto`` is bf16 on a CUDA GPU that has it (else fp16) and on a CPU with bf16
    instructions, fp32 elsewhere (Apple MPS, older CPUs): never slower than fp32.
    """
    if asked not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {asked!r}")
    if asked == FP32:
        return None, "asked for fp32"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if asked == BF16:
            raise UserError("this GPU has no bf16: train with --precision auto (fp16) or fp32")
        return torch.float16, "GPU without bf16: fp16 autocast with loss scaling"
    if asked == BF16:
        return torch.bfloat16, "asked for bf16"
    if device.type == "cuda":
        return torch.bfloat16, "GPU has bf16"
    if device.type == "cpu" and (support := cpu_bf16_support()):
        return torch.bfloat16, f"CPU has {support}"
    if device.type == "cpu":
        return None, "CPU has neither AMX nor AVX-512 BF16 (bf16 would be emulated)"
    return None, f"no autocast on {device.type}"


def setup(precision: str = AUTO) -> Context:
    """Start this process's share of the job (alone, or one rank under ``torchrun``),
    computing in ``precision`` (see :func:`choose_precision`)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(local_rank)
    amp_dtype, reason = choose_precision(device, precision)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend, device_id=device if device.type == "cuda" else None
        )
    return Context(device, rank, local_rank, world_size, amp_dtype, reason)


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
