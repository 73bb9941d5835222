"""The one builder of Triton requests: the ensemble's three inputs (``s4seg.tensors``'s contract)
for any batch, over HTTP or gRPC, and any model's named tensors (the version manager's smoke
test). ``kind`` is the client module, ``tritonclient.http`` or ``tritonclient.grpc``: the core
never imports tritonclient itself."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .tensors import CLS_IMAGE, IMAGE, MAP_BACK_OUTPUTS, TAU


def infer_input(
    kind: ModuleType, name: str, shape: tuple[int, ...], wire_type: str, data: Any = None
) -> Any:
    """One input tensor; its data inline when given (else the caller places it, e.g. in shared
    memory)."""
    tensor = kind.InferInput(name, list(shape), wire_type)
    if data is not None:
        tensor.set_data_from_numpy(data)
    return tensor


def ensemble_inputs(
    kind: ModuleType,
    canvases: np.ndarray,
    views: np.ndarray,
    tau: float,
    inline_image: bool = True,
) -> list[Any]:
    """``image``, ``classifier_image`` and ``tau`` for a batch of framed canvases and the
    classifier's views (small: always inline); the canvases inline unless ``inline_image`` is
    False (the caller then points ``image`` at a shared-memory region)."""
    images = np.ascontiguousarray(canvases, dtype=IMAGE.dtype)
    small = np.ascontiguousarray(views, dtype=CLS_IMAGE.dtype)
    taus = np.full((len(images), 1), tau, dtype=TAU.dtype)
    return [
        infer_input(
            kind, IMAGE.name, images.shape, IMAGE.wire_type, images if inline_image else None
        ),
        infer_input(kind, CLS_IMAGE.name, small.shape, CLS_IMAGE.wire_type, small),
        infer_input(kind, TAU.name, taus.shape, TAU.wire_type, taus),
    ]


def map_back_outputs(kind: ModuleType) -> list[Any]:
    """The outputs the gateway's map-back needs (the labels are made from the scores)."""
    return [kind.InferRequestedOutput(t.name) for t in MAP_BACK_OUTPUTS]
