"""Checkpoints: everything needed to continue a run and to export its model, written atomically.

A checkpoint is a torch zip file holding only tensors and plain Python values, so it loads with
``weights_only=True``. It is written to a temporary file in the same folder, flushed to disk and
renamed over the target: a reader sees the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s4seg.atomic import atomic_file
from s4seg.errors import CheckpointError, first_line

CHECKPOINT_FORMAT = "s4seg-checkpoint/1"


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": list(np.random.get_state(legacy=True)),
        "torch": torch.get_rng_state(),
    }
    state["numpy"][1] = state["numpy"][1].tolist()  # an ndarray would need unsafe unpickling
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    with atomic_file(path) as handle:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, handle)
    return Path(path)


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Load and check a checkpoint; truncated, foreign or wrong-kind files are refused by name."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt?): {first_line(error)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an s4seg checkpoint (expected {CHECKPOINT_FORMAT})")
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"{path} is a {payload.get('kind')} checkpoint, expected {kind}")
    return payload
