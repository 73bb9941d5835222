"""A fake CUDA runtime for the CPU: the device boundary is faked, the code behind it is real.

``torch.cuda`` says one or more GPUs exist; calls that would reach the driver are recorded and
checked the way the driver's Python layer checks them (``set_device`` refuses a device without an
index, with torch's own validator: the first GPU run crashed exactly there). Tensors and modules
sent to ``cuda:N`` are recorded and stay on the CPU; ``torch.autocast("cuda", dtype)`` is
recorded and runs as CPU autocast with the same dtype, so bf16 numerics are exercised too.

What it cannot catch: anything only real kernels do (a CUDA tensor handed to numpy, a kernel
missing for a dtype on the GPU, NCCL). Those need a GPU: ``make gpu-check``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.cuda._utils import _get_device_index


@dataclass
class FakeCuda:
    count: int = 1
    set_device_calls: list[torch.device | int] = field(default_factory=list)
    moves: list[torch.device] = field(default_factory=list)  # every cuda target of .to / factories
    autocasts: list[tuple[str, torch.dtype | None]] = field(default_factory=list)
    load_map_locations: list[Any] = field(default_factory=list)
    current: int = 0

    def cuda_indices(self) -> set[int | None]:
        return {device.index for device in self.moves}


def _as_cuda(value: Any) -> torch.device | None:
    """The CUDA device ``value`` names (a device, 'cuda[:N]', or a bare index), else None."""
    if isinstance(value, torch.device):
        return value if value.type == "cuda" else None
    if isinstance(value, str) and value.startswith("cuda"):
        return torch.device(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return torch.device("cuda", value)
    return None


def install(monkeypatch: pytest.MonkeyPatch, count: int = 1) -> FakeCuda:
    fake = FakeCuda(count=count)
    cuda = torch.cuda

    def set_device(device: Any) -> None:
        index = _get_device_index(device)  # raises for torch.device("cuda"), as the real one
        if not 0 <= index < fake.count:
            raise RuntimeError(f"CUDA error: invalid device ordinal {index}")
        fake.set_device_calls.append(device)
        fake.current = index

    def properties(device: Any = None) -> SimpleNamespace:
        return SimpleNamespace(
            name="Fake H100", total_memory=80 * 2**30, major=9, minor=0, multi_processor_count=132
        )

    for name, value in {
        "is_available": lambda: True,
        "device_count": lambda: fake.count,
        "set_device": set_device,
        "current_device": lambda: fake.current,
        "get_device_name": lambda device=None: "Fake H100",
        "get_device_properties": properties,
        "is_bf16_supported": lambda *a, **k: True,
        "synchronize": lambda device=None: None,
        "empty_cache": lambda: None,
        "reset_peak_memory_stats": lambda device=None: None,
        "max_memory_allocated": lambda device=None: 0,
        "get_rng_state_all": lambda: [torch.zeros(16, dtype=torch.uint8)],
        "set_rng_state_all": lambda states: None,
        "manual_seed_all": lambda seed: None,
    }.items():
        monkeypatch.setattr(cuda, name, value)

    # torch's own internals (optimisers' graph-capture check, loader pinning) ask the generic
    # accelerator API, which would reach the driver: to them this stays a CPU machine.
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: None)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)

    def redirect(value: Any) -> Any:
        device = _as_cuda(value)
        if device is None:
            return value
        fake.moves.append(device)
        return torch.device("cpu")

    real_to = torch.Tensor.to

    def tensor_to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # A bare int as the first argument is a device index; dtypes and tensors pass through.
        args = tuple(redirect(a) if not isinstance(a, torch.dtype) else a for a in args)
        if "device" in kwargs:
            kwargs["device"] = redirect(kwargs["device"])
        return real_to(self, *args, **kwargs)

    def tensor_cuda(self: torch.Tensor, device: Any = None, **kwargs: Any) -> torch.Tensor:
        fake.moves.append(torch.device("cuda", fake.current if device is None else device))
        return self

    monkeypatch.setattr(torch.Tensor, "to", tensor_to)
    monkeypatch.setattr(torch.Tensor, "cuda", tensor_cuda)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)

    for factory in ("randn", "rand", "randint", "zeros", "ones", "full", "empty", "arange"):
        real = getattr(torch, factory)

        def made_on(*args: Any, _real: Any = real, **kwargs: Any) -> torch.Tensor:
            if "device" in kwargs:
                kwargs["device"] = redirect(kwargs["device"])
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch, factory, made_on)

    real_autocast = torch.autocast

    def autocast(device_type: str, dtype: torch.dtype | None = None, **kwargs: Any):
        fake.autocasts.append((device_type, dtype))
        if device_type == "cuda":
            return real_autocast("cpu", dtype=dtype or torch.bfloat16, **kwargs)
        return real_autocast(device_type, dtype=dtype, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)

    real_load = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        fake.load_map_locations.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    benchmark = torch.backends.cudnn.benchmark
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", benchmark)  # restored after the test
    return fake
