"""Defaults shared by several stages, in one place (the gate's tau is the manifest's:
``s4seg.manifest.PAPER_TAU``)."""

from __future__ import annotations

from pathlib import Path

REPOSITORY = Path("model_repository")  # the published Triton model repository
SEGMENTER_INSTANCES = 2  # Triton instances of the segmenter: two executions in flight (BENCHMARKS)
# Each step's Triton queue: bounded, and a request waiting longer than the gateway's deadline
# is rejected rather than run for a client that already got its answer (requests carry their
# own, shorter, timeout: the rest of their deadline).
STEP_QUEUE_SIZE = 64
STEP_QUEUE_TIMEOUT_SECONDS = 30.0

# ImageNet's per-channel statistics: the normalisation of the ResNet backbones (segmenter and
# classifier) and of the stand-in classifier's view.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
