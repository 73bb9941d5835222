"""On-disk data set layouts: which image goes with which mask, and what the classes are.

Each layout lists samples for a named split and reads images and masks in its own convention
(Cityscapes halves its images and maps labelIds to trainIds, for instance). Layouts use PIL and
numpy only; ``dataset.py`` wraps them for torch.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from s4seg import IGNORE_INDEX
from s4seg.classes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    CONTEXT_CLASSES,
    VOC_CLASSES,
    Palette,
    voc_palette,
)
from s4seg.errors import DatasetError
from s4seg.imaging import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Sample:
    """One image and, where it has one, its mask."""

    id: str
    image: Path
    mask: Path | None


def read_rgb(path: Path) -> Image.Image:
    """Decode an image file as RGB, naming the file when it can not be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"unreadable image {path}: {error}") from None


def read_label_png(path: Path) -> np.ndarray:
    """Decode a single-channel (L or P) mask as uint8 class indices."""
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode not in ("L", "P"):
                raise DatasetError(
                    f"mask {path} has mode {mask.mode}: expected a single-channel (L or P) PNG "
                    "of class indices"
                )
            return np.array(mask, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"mask not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"unreadable mask {path}: {error}") from None


def check_mask_values(mask: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    """Refuse a mask holding a value that is neither a class index nor the ignore label."""
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        values = sorted(int(v) for v in np.unique(mask[bad]))[:8]
        raise DatasetError(
            f"mask {path} holds values {values} that are not classes (0..{num_classes - 1}) "
            f"nor the ignore label {IGNORE_INDEX}"
        )
    return mask


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} folder not found: {path}")
    return path


def _read_list(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    if not entries:
        raise DatasetError(f"split list {path} is empty")
    return entries


class DataLayout(ABC):
    """A data set on disk in one known layout."""

    kind: str
    default_train_split = "train"
    default_val_split = "val"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DatasetError(f"data folder not found: {self.root}")

    classes: tuple[str, ...]
    background_index: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def palette(self) -> Palette:
        return voc_palette(self.num_classes)

    @abstractmethod
    def samples(self, split: str) -> list[Sample]:
        """The samples of a split, in a fixed order."""

    def unlabeled_samples(self) -> list[Sample]:
        """Extra images that have no mask at all (layouts that provide them)."""
        return []

    def read_image(self, sample: Sample) -> Image.Image:
        return read_rgb(sample.image)

    def read_mask(self, sample: Sample) -> np.ndarray:
        if sample.mask is None:
            raise DatasetError(f"image {sample.image} has no mask")
        return check_mask_values(read_label_png(sample.mask), self.num_classes, sample.mask)

    def describe(self) -> dict:
        return {"kind": self.kind, "root": str(self.root)}

    def _labeled(self, sample_id: str, image: Path, mask: Path) -> Sample:
        if not image.is_file():
            raise DatasetError(f"image not found: {image}")
        if not mask.is_file():
            raise DatasetError(f"image without mask: {image} (expected {mask})")
        return Sample(sample_id, image, mask)


class VOCLayout(DataLayout):
    """PASCAL VOC 2012 with the SBD augmentation: JPEGImages/, SegmentationClassAug/, lists.

    List files (``train_aug.txt``, ``val.txt``) are looked up in ``ImageSets/Segmentation/``,
    the root, or ``list/``; a line is an id or an ``/JPEGImages/x.jpg /SegmentationClassAug/x.png``
    pair (the format of the authors' lists).
    """

    kind = "voc"
    classes: tuple[str, ...] = VOC_CLASSES
    background_index = 0
    default_train_split = "train_aug"
    mask_folder = "SegmentationClassAug"
    list_folders = ("ImageSets/Segmentation", ".", "list")

    def _list_file(self, split: str) -> Path:
        for folder in self.list_folders:
            candidate = self.root / folder / f"{split}.txt"
            if candidate.is_file():
                return candidate
        tried = ", ".join(str(self.root / f / f"{split}.txt") for f in self.list_folders)
        raise DatasetError(f"split list '{split}' not found in {self.root} (tried {tried})")

    def samples(self, split: str) -> list[Sample]:
        images = _require_dir(self.root / "JPEGImages", "image")
        masks = _require_dir(self.root / self.mask_folder, "mask")
        result = []
        for entry in _read_list(self._list_file(split)):
            parts = entry.split()
            if len(parts) >= 2:
                image = self.root / parts[0].lstrip("/")
                mask = self.root / parts[1].lstrip("/")
                result.append(self._labeled(image.stem, image, mask))
            else:
                result.append(
                    self._labeled(parts[0], images / f"{parts[0]}.jpg", masks / f"{parts[0]}.png")
                )
        return result


class ContextLayout(VOCLayout):
    """PASCAL-Context, 60 classes, masks converted beforehand (0 = background).

    The layout of the usual conversion: ``JPEGImages/``, ``SegmentationClassContext/`` and lists in
    ``ImageSets/SegmentationContext/{train,val}.txt``.
    """

    kind = "context"
    classes = CONTEXT_CLASSES
    background_index = 0
    default_train_split = "train"
    mask_folder = "SegmentationClassContext"
    list_folders = ("ImageSets/SegmentationContext", ".", "list")


# Cityscapes labelIds -> the 19 trainIds (cityscapesScripts' table); everything else ignored.
_CITYSCAPES_ID_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
CITYSCAPES_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label_id, _train_id in _CITYSCAPES_ID_TO_TRAIN.items():
    CITYSCAPES_LUT[_label_id] = _train_id


class CityscapesLayout(DataLayout):
    """Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png``; images halved (2048x1024 -> 1024x512) as in
    the paper, labelIds mapped to the 19 trainIds, every other id ignored (255)."""

    kind = "cityscapes"
    classes = CITYSCAPES_CLASSES
    background_index = None
    scale = 0.5

    @property
    def palette(self) -> Palette:
        return list(CITYSCAPES_PALETTE)

    def samples(self, split: str) -> list[Sample]:
        image_root = _require_dir(self.root / "leftImg8bit" / split, f"Cityscapes '{split}' image")
        mask_root = _require_dir(self.root / "gtFine" / split, f"Cityscapes '{split}' gtFine")
        result = []
        for image in sorted(image_root.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            mask = mask_root / image.parent.name / f"{stem}_gtFine_labelIds.png"
            result.append(self._labeled(stem, image, mask))
        if not result:
            raise DatasetError(f"no *_leftImg8bit.png images under {image_root}")
        return result

    def _halved(self, size: tuple[int, int]) -> tuple[int, int]:
        return max(1, round(size[0] * self.scale)), max(1, round(size[1] * self.scale))

    def read_image(self, sample: Sample) -> Image.Image:
        image = read_rgb(sample.image)
        return image.resize(self._halved(image.size), Image.Resampling.BILINEAR)

    def read_mask(self, sample: Sample) -> np.ndarray:
        if sample.mask is None:
            raise DatasetError(f"image {sample.image} has no mask")
        label_ids = read_label_png(sample.mask)
        train_ids = Image.fromarray(CITYSCAPES_LUT[label_ids])
        size = self._halved(train_ids.size)
        return np.array(train_ids.resize(size, Image.Resampling.NEAREST), dtype=np.uint8)


class FolderLayout(DataLayout):
    """Any images + masks folder.

    ``images/`` and ``masks/`` (mask = same relative path, ``.png``), class names in
    ``classes.yaml`` / ``classes.json`` (a list, or ``{classes: [...], background: name|index|null,
    palette: [[r, g, b], ...]}``). A split is ``<root>/<split>.txt`` (relative image paths, with or
    without suffix) if present, else the subfolder ``images/<split>/``. Images with no mask at
    all go in ``images/unlabeled/`` (or ``unlabeled.txt``) and are only ever used unlabeled.
    """

    kind = "folder"

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.images = _require_dir(self.root / "images", "image")
        self.masks = self.root / "masks"
        meta = self._read_class_file()
        names = meta.get("classes") if isinstance(meta, dict) else meta
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"{self._class_file}: expected a non-empty list of class names")
        if len(names) > IGNORE_INDEX:
            raise DatasetError(f"{self._class_file}: at most {IGNORE_INDEX} classes")
        self.classes = tuple(names)
        background = (
            meta.get("background", "background") if isinstance(meta, dict) else ("background")
        )
        if isinstance(background, str):
            self.background_index = self.classes.index(background) if background in names else None
        elif isinstance(background, int) and 0 <= background < len(names):
            self.background_index = background
        elif background is None:
            self.background_index = None
        else:
            raise DatasetError(
                f"{self._class_file}: 'background' must be a class name, index or null"
            )
        palette = meta.get("palette") if isinstance(meta, dict) else None
        self._palette: Palette | None = (
            [(int(c[0]), int(c[1]), int(c[2])) for c in palette] if palette else None
        )

    def _read_class_file(self) -> dict | list:
        for name in ("classes.yaml", "classes.yml", "classes.json"):
            path = self.root / name
            if path.is_file():
                self._class_file = path
                try:
                    if path.suffix == ".json":
                        return json.loads(path.read_text())
                    return yaml.safe_load(path.read_text())
                except (json.JSONDecodeError, yaml.YAMLError) as error:
                    raise DatasetError(f"can not parse {path}: {error}") from None
        raise DatasetError(
            f"class names not found: expected {self.root}/classes.yaml or classes.json"
        )

    @property
    def palette(self) -> Palette:
        return self._palette or voc_palette(self.num_classes)

    def _entries(self, split: str) -> list[Path]:
        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            entries = []
            for entry in _read_list(list_file):
                path = self.images / entry
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    matches = [p for s in IMAGE_SUFFIXES if (p := path.with_suffix(s)).is_file()]
                    path = matches[0] if matches else path.with_suffix(".jpg")
                entries.append(path)
            return entries
        folder = self.images / split
        if folder.is_dir():
            return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        raise DatasetError(
            f"split '{split}' not found in {self.root}: expected {list_file} or {folder}/"
        )

    def _sample_id(self, image: Path) -> str:
        return image.relative_to(self.images).with_suffix("").as_posix()

    def samples(self, split: str) -> list[Sample]:
        result = []
        for image in self._entries(split):
            sample_id = self._sample_id(image)
            result.append(self._labeled(sample_id, image, self.masks / f"{sample_id}.png"))
        if not result:
            raise DatasetError(f"split '{split}' of {self.root} holds no images")
        return result

    def unlabeled_samples(self) -> list[Sample]:
        if not ((self.root / "unlabeled.txt").is_file() or (self.images / "unlabeled").is_dir()):
            return []
        result = []
        for image in self._entries("unlabeled"):
            if not image.is_file():
                raise DatasetError(f"image not found: {image}")
            result.append(Sample(self._sample_id(image), image, None))
        return result


LAYOUTS: dict[str, type[DataLayout]] = {
    layout.kind: layout for layout in (VOCLayout, CityscapesLayout, ContextLayout, FolderLayout)
}


def detect_kind(root: Path) -> str:
    """Guess the layout from the folders present."""
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClassContext").is_dir():
        return "context"
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClassAug").is_dir():
        return "voc"
    if (root / "images").is_dir():
        return "folder"
    raise DatasetError(
        f"can not tell the layout of {root}: expected JPEGImages/+SegmentationClassAug/ (voc), "
        "JPEGImages/+SegmentationClassContext/ (context), leftImg8bit/+gtFine/ (cityscapes) or "
        "images/+masks/ (folder)"
    )


def open_layout(root: str | Path, kind: str = "auto") -> DataLayout:
    """Open a data set folder in the given layout (``auto`` = detect)."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"data folder not found: {path}")
    if kind == "auto":
        kind = detect_kind(path)
    if kind not in LAYOUTS:
        raise DatasetError(f"unknown data set kind '{kind}' (known: auto, {', '.join(LAYOUTS)})")
    return LAYOUTS[kind](path)


class TrainedRun(Protocol):
    """What the core needs of a checkpoint (``s4seg.training.checkpoint.Checkpoint``): its
    split, which names the data set it was trained on."""

    split: dict[str, Any]


def trained_on(run: TrainedRun) -> dict:
    """A checkpoint's training data set, as resolved when it trained: ``{"root", "kind"}``."""
    return dict(run.split.get("dataset", {}))


def data_layout(
    run: TrainedRun, data: str | Path | None = None, kind: str | None = None
) -> DataLayout:
    """The layout of ``data`` (its kind ``kind``, else detected), or without ``data`` of the data
    set the checkpoint ``run`` was trained on, in the kind it was trained with. The one place
    the "given data, else the training data" rule lives."""
    if data is not None:
        return open_layout(data, kind or "auto")
    dataset = trained_on(run)
    if not dataset.get("root"):
        raise DatasetError("the checkpoint does not name its training data: pass the data set")
    return open_layout(dataset["root"], dataset.get("kind") or "auto")


def training_data_here(run: TrainedRun) -> bool:
    """Whether the data set the checkpoint was trained on is on this machine."""
    root = trained_on(run).get("root")
    return root is not None and Path(root).is_dir()
