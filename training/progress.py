"""Periodic progress lines with rate and ETA (readable in a terminal and in CI logs alike)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Measures the rate since the first reported step so start-up cost does not skew the ETA."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True) -> None:
        self.total, self.enabled = total, enabled
        self._t0, self._i0 = time.perf_counter(), start

    def seconds_per_step(self, step: int) -> float:
        done = step - self._i0
        return (time.perf_counter() - self._t0) / done if done > 0 else float("nan")

    def report(self, step: int, **values: float | str) -> None:
        if not self.enabled:
            return
        rate = self.seconds_per_step(step)
        eta = format_duration(rate * (self.total - step)) if rate == rate else "?"
        shown = "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
        )
        print(
            f"[{step:>{len(str(self.total))}}/{self.total}] {shown}  {rate:.2f} s/it  ETA {eta}",
            file=sys.stderr,
            flush=True,
        )


class LoaderClock:
    """Time the loop spends waiting for batches, against wall time: the share of each step that
    the data loader failed to hide (near 0 when loading overlaps the GPU's work)."""

    def __init__(self) -> None:
        self.waited = 0.0
        self._mark_time, self._mark_waited = time.perf_counter(), 0.0

    def timed(self, iterator: Iterator[T]) -> Iterator[T]:
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self.waited += time.perf_counter() - start
            yield item

    def share_since_last(self) -> float:
        """Waiting / wall time since the previous call (or since the clock was made)."""
        now = time.perf_counter()
        wall, waited = now - self._mark_time, self.waited - self._mark_waited
        self._mark_time, self._mark_waited = now, self.waited
        return waited / wall if wall > 0 else 0.0
