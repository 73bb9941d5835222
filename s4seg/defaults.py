"""Defaults shared by several stages, in one place (the gate's tau is the manifest's:
``s4seg.manifest.PAPER_TAU``)."""

from __future__ import annotations

from pathlib import Path

REPOSITORY = Path("model_repository")  # the published Triton model repository
SEGMENTER_INSTANCES = 2  # Triton instances of the segmenter: two executions in flight (BENCHMARKS)
