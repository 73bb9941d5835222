"""From a data config to the layout, the split and the torch data sets a trainer needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from s4seg.errors import DatasetError
from s4seg.layouts import DataLayout, open_layout

from .dataset import SegmentationDataset
from .split import Split, make_split, select
from .transforms import eval_transform, train_transform


@dataclass
class TrainingData:
    layout: DataLayout
    split: Split
    labeled: SegmentationDataset
    unlabeled: SegmentationDataset
    val: SegmentationDataset


def open_data(data_cfg) -> DataLayout:
    if not data_cfg.root:
        raise DatasetError("data.root is not set (e.g. --set data.root=data/synth)")
    if not Path(data_cfg.root).expanduser().is_dir():
        raise DatasetError(
            f"data folder not found: {data_cfg.root} (point data.root at it: --set data.root=PATH)"
        )
    return open_layout(data_cfg.root, data_cfg.kind)


def resolve_split(data_cfg, layout: DataLayout, recorded: dict | None = None) -> Split:
    """The recorded split (resume), a split file, or a new seeded split by ratio."""
    if recorded is not None:
        return Split(**recorded)
    if data_cfg.split_file:
        return Split.load(data_cfg.split_file)
    train_split = data_cfg.train_split or layout.default_train_split
    return make_split(layout, train_split, data_cfg.labeled_ratio, data_cfg.split_seed)


def build_training_data(
    data_cfg, recorded_split: dict | None = None, audit_unlabeled: bool = False
) -> TrainingData:
    """``audit_unlabeled``: the unlabeled items also carry their true masks where they exist,
    for logging pseudo-label accuracy (never for training)."""
    layout = open_data(data_cfg)
    split = resolve_split(data_cfg, layout, recorded_split)
    train_samples = layout.samples(split.train_split)
    labeled = select(train_samples, split.labeled, "labeled")
    if not labeled:
        raise DatasetError("the split has no labeled image (empty split)")
    extra = layout.unlabeled_samples()
    unlabeled = select(train_samples, split.unlabeled, "unlabeled") + select(
        extra, split.extra_unlabeled, "extra unlabeled"
    )
    if not unlabeled:
        # Every image is labeled (the paper's "Full" rows): the semi-supervised terms see the
        # whole training set, without its masks, as their unlabeled stream.
        unlabeled = list(labeled)
    augment = train_transform(
        data_cfg.crop_size, data_cfg.scale_range, data_cfg.hflip, data_cfg.mean, data_cfg.std
    )
    val_samples = layout.samples(data_cfg.val_split or layout.default_val_split)
    return TrainingData(
        layout=layout,
        split=split,
        labeled=SegmentationDataset(layout, labeled, augment),
        unlabeled=SegmentationDataset(
            layout, unlabeled, augment, with_mask=False, audit=audit_unlabeled
        ),
        val=SegmentationDataset(layout, val_samples, eval_transform(data_cfg.mean, data_cfg.std)),
    )
