"""Seeded, saved, reloadable labeled/unlabeled splits of a training set."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from s4seg.errors import DatasetError
from s4seg.layouts import DataLayout, Sample

SPLIT_FORMAT = "s4seg-split/1"


def parse_ratio(text: str | float | Fraction) -> Fraction:
    """'1/8', '0.125', '12.5%' or 'full' -> a fraction in (0, 1]."""
    raw = str(text).strip().lower()
    try:
        if raw in ("full", "all", "1"):
            value = Fraction(1)
        elif raw.endswith("%"):
            value = Fraction(raw[:-1]) / 100
        else:
            value = Fraction(raw)
    except (ValueError, ZeroDivisionError):
        raise DatasetError(
            f"labeled ratio '{text}' is not a fraction like 1/8, 0.125 or full"
        ) from None
    if not 0 < value <= 1:
        raise DatasetError(f"labeled ratio '{text}' must lie in (0, 1]")
    return value


def format_ratio(value: Fraction) -> str:
    return "full" if value == 1 else f"{value.numerator}/{value.denominator}"


@dataclass
class Split:
    """Which training ids are labeled; everything else is used without its mask."""

    ratio: str
    seed: int
    dataset: dict
    train_split: str
    labeled: list[str]
    unlabeled: list[str]
    extra_unlabeled: list[str] = field(default_factory=list)
    format: str = SPLIT_FORMAT

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Split:
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"split file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise DatasetError(f"split file {path} is not valid JSON: {error}") from None
        if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
            raise DatasetError(f"{path} is not an s4seg split file (format {SPLIT_FORMAT})")
        return cls(**data)

    def as_dict(self) -> dict:
        return asdict(self)


def make_split(
    layout: DataLayout, train_split: str, ratio: str | float | Fraction, seed: int
) -> Split:
    """Labeled = the first ``int(ratio * N)`` of a seeded permutation of the training ids.

    The rule of the authors' code, seeded (theirs is not) so that a split can be made again.
    """
    samples = layout.samples(train_split)
    fraction = parse_ratio(ratio)
    ids = [s.id for s in samples]
    order = np.random.default_rng(seed).permutation(len(ids))
    count = int(fraction * len(ids))
    if count == 0:
        raise DatasetError(
            f"labeled ratio {format_ratio(fraction)} of {len(ids)} '{train_split}' images leaves "
            "no labeled image (empty split)"
        )
    return Split(
        ratio=format_ratio(fraction),
        seed=seed,
        dataset=layout.describe(),
        train_split=train_split,
        labeled=[ids[i] for i in order[:count]],
        unlabeled=[ids[i] for i in order[count:]],
        extra_unlabeled=[s.id for s in layout.unlabeled_samples()],
    )


def make_budget_split(layout: DataLayout, train_split: str, budget: str, seed: int) -> Split:
    """A label budget as the study gives it: a ratio (``1/8``, ``0.125``, ``12.5%``, ``full``),
    a count of images (``183``: the first 183 of the same seeded permutation, so that with one
    seed smaller budgets are subsets of larger ones), or a file of image ids, one a line (the
    published splits of other work; the seed does not matter then)."""
    text = str(budget).strip()
    if Path(text).is_file():
        lines = [line.strip() for line in Path(text).read_text().splitlines()]
        wanted = [line for line in lines if line and not line.startswith("#")]
        samples = layout.samples(train_split)
        labeled = [s.id for s in select(samples, wanted, f"labeled (from {text})")]
        chosen = set(labeled)
        return Split(
            ratio=f"{len(labeled)}/{len(samples)}",
            seed=seed,
            dataset=layout.describe(),
            train_split=train_split,
            labeled=labeled,
            unlabeled=[s.id for s in samples if s.id not in chosen],
            extra_unlabeled=[s.id for s in layout.unlabeled_samples()],
        )
    if not text.isdigit():
        return make_split(layout, train_split, text, seed)
    count, total = int(text), len(layout.samples(train_split))
    if not 0 < count <= total:
        raise DatasetError(
            f"label budget {count} images: '{train_split}' has {total} images (need 1..{total})"
        )
    return make_split(layout, train_split, Fraction(count, total), seed)


def select(samples: list[Sample], ids: list[str], what: str) -> list[Sample]:
    """The samples named by ``ids``, in that order; unknown ids are an error naming them."""
    by_id = {s.id: s for s in samples}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DatasetError(
            f"{len(missing)} {what} ids of the split are not in the data set, e.g. {missing[:3]}"
        )
    return [by_id[i] for i in ids]
