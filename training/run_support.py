"""What every trainer needs around its run, whatever it trains: where log lines go, seeding, and
the runtime (device, precision, process group) for the length of the run."""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Callable, Iterator

import numpy as np
import torch

from .config import Config
from .runtime import Runtime, setup_runtime, teardown_runtime

Log = Callable[[str], None]


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def runtime_for(cfg: Config) -> Iterator[Runtime]:
    """The runtime ``cfg.train`` asks for, torn down (process group included) when the run ends."""
    runtime = setup_runtime(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
    try:
        yield runtime
    finally:
        teardown_runtime(runtime)
