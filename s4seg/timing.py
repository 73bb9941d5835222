"""The one timing loop (warm-up outside the window) and the one percentile: every benchmark and
``publish --precision auto`` measure with these."""

from __future__ import annotations

import time
from collections.abc import Callable


def time_calls(
    call: Callable[[], object],
    repeats: int,
    warmup: int = 0,
    per: int = 1,
    synchronize: Callable[[], None] = lambda: None,
) -> list[float]:
    """Seconds of each of ``repeats`` calls (divided by ``per``: e.g. the images of a batch),
    after ``warmup`` untimed ones; ``synchronize`` waits for queued device work (CUDA) before
    each clock read."""
    for _ in range(warmup):
        call()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        synchronize()
        times.append((time.perf_counter() - start) / per)
    return times


def percentile(values: list[float], q: float) -> float:
    """The value at rank ``int(q * n)`` of the sorted values (q=0.99: p99; no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
