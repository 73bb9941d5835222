"""What ``export`` and ``publish`` are asked to do: one typed request each, built from the flags
by the commands (``export/commands.py``, ``workflows/``) and read by attribute below them. No
torch here: ``publish`` runs in the serving image."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from s4seg.confidence import DEFAULT_COVERAGE
from s4seg.defaults import REPOSITORY

Precision = Literal["fp16", "int8", "bf16"]
"""A lower-precision variant export can add beside FP32 (judged at the served tau)."""
PRECISIONS: tuple[Precision, ...] = ("fp16", "int8", "bf16")

DEFAULT_CALIBRATION_IMAGES = 300  # enough to rank taus; bounds the export time on a CPU


@dataclass(frozen=True)
class ExportRequest:
    """Checkpoints in, one export folder out (``s4seg export``)."""

    segmenter: str
    classifier: str | None
    out: str
    input_size: tuple[int, int] | None = None  # None: the validation images' resolution
    tau: float | None = None  # None: calibrated (``calibrate_on``)
    data: str | None = None  # parity images; None: the training data, else synthetic
    kind: str | None = None
    parity_images: int = 8
    overwrite: bool = False
    variants: frozenset[Precision] = field(default_factory=frozenset)
    calibrate_on: str | None = "auto"  # a labeled data set, "auto" (the training data), None/off
    calibrate_kind: str | None = None
    calibrate_images: int = DEFAULT_CALIBRATION_IMAGES
    coverage: float = DEFAULT_COVERAGE  # of the prediction sets fitted on calibrate_on


@dataclass(frozen=True)
class PromotionGate:
    """Refuse a version whose gated mIoU is more than ``max_drop`` points below the served one,
    both measured on ``data``."""

    data: str
    kind: str | None = None
    images: int | None = None
    max_drop: float = 1.0


@dataclass(frozen=True)
class PublishRequest:
    """An export folder in, the next version of a Triton model repository out (``s4seg
    publish``)."""

    export_dir: str | Path
    repository: str | Path = REPOSITORY
    runtime: str = "python"
    precision: str = "fp32"
    keep: int | None = None
    force: bool = False
    gate: PromotionGate | None = None
