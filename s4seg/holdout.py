"""The calibration part of a validation split: the images ``s4seg export`` chooses the served tau
on, which no reported figure uses (``s4seg evaluate`` and the promotion gate report on the rest
by default). The paper chose tau by cross-validation for this reason: a tau picked on the images
it is then scored on looks better than it is.

Membership depends on the image ids and a seed only, not on their order: export and evaluation
agree on it without sharing a file, and the manifest records the ids it used.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

CALIBRATION_SHARE = 0.3  # of the validation images; the other 70% are the reported ones
CALIBRATION_SEED = 0
PARTS = ("report", "calibration", "all")


def _rank(sample_id: str, seed: int) -> bytes:
    return hashlib.sha256(f"s4seg-calibration/{seed}/{sample_id}".encode()).digest()


def calibration_ids(
    ids: Sequence[str], seed: int = CALIBRATION_SEED, share: float = CALIBRATION_SHARE
) -> set[str]:
    """The seeded ``share`` of ``ids``: at least one, never all (a single image is reported,
    not calibrated on)."""
    if len(ids) < 2:
        return set()
    count = min(max(1, math.ceil(share * len(ids))), len(ids) - 1)
    return set(sorted(ids, key=lambda i: _rank(i, seed))[:count])


def select_part(samples: list, part: str, seed: int = CALIBRATION_SEED) -> list:
    """The samples (anything with an ``id``) of one part, in their order."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, not {part!r}")
    if part == "all":
        return list(samples)
    held = calibration_ids([s.id for s in samples], seed)
    return [s for s in samples if (s.id in held) == (part == "calibration")]


def evaluation_samples(
    layout, split: str | None, part: str, max_images: int | None
) -> tuple[str, str, list]:
    """(split, part, samples) an evaluation reports on: ``part`` of the validation split (another
    split is used whole: the calibration part lies in the validation split only)."""
    split = split or layout.default_val_split
    if split != layout.default_val_split:
        part = "all"
    return split, part, select_part(layout.samples(split), part)[:max_images]
