"""Where a run executes: device, precision, memory format, and the distributed process group."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from s4seg.errors import ConfigError

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"


M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def place(self, module: M) -> M:
        """``module`` on this device, in this memory format."""
        module.to(self.device)
        return module.to(memory_format=self.memory_format())

    def varying_shapes(self) -> contextlib.AbstractContextManager:
        """For whole images of many sizes (evaluation): no cuDNN autotuning per new shape."""
        if not self.on_cuda:
            return contextlib.nullcontext()
        cudnn = torch.backends.cudnn
        return cudnn.flags(
            enabled=cudnn.enabled,
            benchmark=False,
            deterministic=cudnn.deterministic,
            allow_tf32=cudnn.allow_tf32,
        )

    def synchronize(self) -> None:
        """Wait for queued GPU work (timings); nothing to wait for on the CPU."""
        if self.on_cuda:
            torch.cuda.synchronize(self.device)


def resolve_device(device: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """``train.device`` -> a concrete device; a CUDA device always carries its index.

    ``cuda`` (and ``auto`` on a CUDA machine) is the GPU of this process: ``LOCAL_RANK`` under
    torchrun, 0 otherwise. ``cuda:N`` pins one GPU and is refused under torchrun, where every
    process would land on the same card.
    """
    text = str(device).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise ConfigError(f"train.device '{device}' is not one of {DEVICE_FORMS}")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device is '{device}' but no CUDA device is available")
    if match.group(1) is None:
        index = local_rank
    elif world_size > 1:
        raise ConfigError(
            f"train.device '{device}' under torchrun would put every process on GPU "
            f"{match.group(1)}: use 'cuda' or 'auto' (each process takes GPU LOCAL_RANK)"
        )
    else:
        index = int(match.group(1))
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"train.device '{device}' needs GPU {index}, but this machine shows {count} "
            f"(indices 0..{count - 1})"
        )
    return torch.device("cuda", index)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 autocast on a GPU that supports it, off otherwise (and on the CPU)."""
    if amp == "off":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        if amp == "bf16" and not supported:
            name = torch.cuda.get_device_name(device)
            raise ConfigError(f"train.amp=bf16 but {name} does not support bf16")
        return torch.bfloat16 if supported else None
    return torch.bfloat16 if amp == "bf16" else None


def setup_runtime(
    device: str = "auto",
    amp: str = "auto",
    channels_last: str = "auto",
    fixed_shapes: bool = True,
    distributed: bool = True,
) -> Runtime:
    """Join the process group when started by torchrun, pick the device and precision.

    ``distributed=False`` (evaluation): one process on this process's device, even under
    torchrun, where rank 0 evaluates alone after the ranks trained together.

    ``fixed_shapes`` (training crops): let cuDNN time its kernels once per shape and keep the
    fastest. Off for whole images of many sizes, where it would re-time every new size.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if distributed else 1
    rank = int(os.environ.get("RANK", "0")) if distributed else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device, local_rank, world_size)
    on_cuda = torch_device.type == "cuda"
    if on_cuda:
        torch.cuda.set_device(torch_device)
        torch.backends.cudnn.benchmark = fixed_shapes
    if world_size > 1 and not dist.is_initialized():
        if on_cuda:  # bound to this process's GPU: NCCL need not guess it from the rank
            dist.init_process_group("nccl", device_id=torch_device)
        else:
            dist.init_process_group("gloo")
    use_cl = channels_last == "on" or (channels_last == "auto" and on_cuda)
    return Runtime(
        torch_device, rank, local_rank, world_size, resolve_amp(amp, torch_device), use_cl
    )


def teardown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
