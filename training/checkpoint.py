"""Checkpoints (``Checkpoint``): everything needed to continue a run and to export its model,
written atomically.

A checkpoint is a torch zip file holding only tensors and plain Python values, so it loads with
``weights_only=True``. It is written to a temporary file in the same folder, flushed to disk and
renamed over the target: a reader sees the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import random
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from s4seg.atomic import atomic_file
from s4seg.errors import CheckpointError, first_line

CHECKPOINT_FORMAT = "s4seg-checkpoint/1"
CheckpointKind = Literal["segmenter", "classifier"]


def rng_state() -> dict:
    numpy_state: list[Any] = list(np.random.get_state(legacy=True))
    numpy_state[1] = numpy_state[1].tolist()  # an ndarray would need unsafe unpickling
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
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


@dataclass
class Checkpoint:
    """One training run at one iteration: what continues it (optimiser, schedule, RNG) and what
    exports its model (architecture, weights, classes, normalisation). The one writer
    (``save``) and reader (``load``) of checkpoint files; attributes, never string keys.

    On disk: a dict of these fields (the ones set) with ``format``; a file with a field this
    class does not know, or without one it needs, is refused by name."""

    kind: CheckpointKind
    trainer: str
    arch: dict[str, Any]
    model: dict[str, torch.Tensor]
    iteration: int
    config: dict[str, Any]
    split: dict[str, Any]
    classes: list[str]
    palette: list[list[int]]
    background_index: int | None
    normalization: dict[str, Any]
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    # Under torchrun every rank's RNG state (each resumes its own; world size checked on resume)
    rng_per_rank: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    # The trainers' own: s4GAN's discriminator, its optimiser, schedule and D-score history;
    # MLMT's student (``model`` is its teacher, what export uses)
    discriminator: dict[str, torch.Tensor] | None = None
    optimizer_d: dict[str, Any] | None = None
    scheduler_d: dict[str, Any] | None = None
    d_history: list[dict[str, Any]] | None = None
    student: dict[str, torch.Tensor] | None = None
    path: Path | None = field(default=None, compare=False)  # where it was read from (not saved)

    def save(self, path: str | Path) -> Path:
        """Written atomically: a reader sees the old checkpoint or this one."""
        payload = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        payload = {k: v for k, v in payload.items() if v is not None or k == "background_index"}
        with atomic_file(path) as handle:
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, handle)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, kind: str | None = None) -> Checkpoint:
        """Load and check a checkpoint; truncated, foreign or wrong-kind files are refused by
        name."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(
                f"checkpoint {path} is unreadable (truncated or corrupt?): {first_line(error)}"
            ) from None
        if not isinstance(payload, dict) or payload.pop("format", None) != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} is not an s4seg checkpoint (expected {CHECKPOINT_FORMAT})"
            )
        known = {f.name for f in fields(cls)} - {"path"}
        needed = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        if unknown := sorted(set(payload) - known):
            raise CheckpointError(f"{path} holds entries this s4seg does not know: {unknown}")
        if missing := sorted(needed - set(payload)):
            raise CheckpointError(f"{path} lacks {missing}: not a complete checkpoint")
        checkpoint = cls(**payload, path=path)
        if kind is not None and checkpoint.kind != kind:
            raise CheckpointError(f"{path} is a {checkpoint.kind} checkpoint, expected {kind}")
        return checkpoint

    @property
    def source(self) -> str:
        """How errors name it."""
        return str(self.path) if self.path else "checkpoint"
