"""``s4seg predict``'s worker processes: each builds its own model connection or sessions once
(``Backend.build``), then segments one image at a time. An image that passes its deadline has its
worker killed and replaced, so a stalled image fails alone and the run goes on (issue 36): a
thread could not be stopped, and one that held the GIL would have stopped the whole run.

Workers are spawned, not forked: the parent may hold runtime threads (ONNX Runtime, OpenVINO)
that a fork would copy in an unknown state.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pebble import ProcessExpired, ProcessPool

from s4seg.errors import S4segError

__all__ = [
    "ImageFailed",
    "ProcessExpired",
    "ProcessPool",
    "SegmenterFactory",
    "WorkerLoadError",
    "segment_in_worker",
    "start_pool",
]


class SegmenterFactory(Protocol):
    """Plain, picklable data that builds ``segment(path) -> bytes`` in a worker
    (``clients.backends.Backend``)."""

    def build(self) -> Callable[[Path], bytes]: ...


class ImageFailed(Exception):
    """One image could not be segmented; the reason, as a plain string (any exception a worker
    raised crosses the process boundary as this)."""


class WorkerLoadError(S4segError):
    """A worker could not build its segmenter: no image can be run."""


_segment: Callable[[Path], bytes] | None = None
_load_error = ""


def _start_worker(factory: SegmenterFactory) -> None:
    global _segment, _load_error
    try:
        _segment = factory.build()
    except Exception as error:  # reported with the first image this worker is given
        _load_error = str(error) or type(error).__name__


def segment_in_worker(path: str) -> bytes:
    """Run in a worker: the output's bytes, or ``ImageFailed`` with the reason."""
    if _segment is None:
        raise WorkerLoadError(f"a predict worker could not load the model: {_load_error}")
    try:
        return _segment(Path(path))
    except Exception as error:
        raise ImageFailed(str(error) or type(error).__name__) from None


def usable_cpus() -> int:
    """The cores this process may run on (its affinity, as a container's cpuset sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def start_pool(factory: SegmenterFactory, workers: int) -> ProcessPool:
    """``workers`` processes, each with its own segmenter from ``factory``."""
    return ProcessPool(
        max_workers=workers,
        initializer=_start_worker,
        initargs=(factory,),
        context=multiprocessing.get_context("spawn"),
    )
