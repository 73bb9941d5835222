"""What ``s4seg bench serve`` is asked (``ServeBenchRequest``) and what one run measured
(``ServeResults``): measured in serve.py, rendered in serve_render.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s4seg.export.engine_choice import Candidate

from .serve_alone import ModelAlone


@dataclass
class ServeBenchRequest:
    """``s4seg bench serve``'s options (workflows/commands.py builds it from the flags)."""

    repository: Path
    images: int
    requests: int
    concurrency: list[int]
    hop_concurrency: int
    size_repeats: int
    variants: int
    window: float
    windows: int
    log_dir: Path
    write: str | None = None


@dataclass
class ServeResults:
    """What one run measured; ``render`` turns it into BENCHMARKS' section."""

    request: ServeBenchRequest
    version: int
    manifest: Any
    images: int
    alone: list[ModelAlone]
    served_engine: Candidate
    flops: dict[str, float]
    default: str
    rows: list[tuple[str, int, float, list[float]]] = field(default_factory=list)
    cpu: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    hops: list[tuple[str, float, list[float]]] = field(default_factory=list)
    by_size: list[tuple] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    quality_seconds: float | None = None  # s4seg.quality on one answer, median
    uncertainty_seconds: float | None = None  # the uncertainty map and its PNG, median
