"""Each loader on a small tree in its real on-disk layout."""

from pathlib import Path

import numpy as np
import pytest

from s4seg.layouts import open_layout
from s4seg.training.data.dataset import SegmentationDataset


def test_voc_lists_ids_and_path_pairs(voc_root: Path) -> None:
    layout = open_layout(voc_root)
    assert layout.kind == "voc" and layout.num_classes == 21 and layout.background_index == 0
    train = layout.samples(layout.default_train_split)
    assert [s.id for s in train] == [f"2007_{i:06d}" for i in range(8)]
    val = layout.samples("val")
    assert [s.id for s in val] == ["2007_000008", "2007_000009"]
    mask = layout.read_mask(val[1])
    assert mask.shape == (30, 40)
    assert set(np.unique(mask)) == {0, 9, 255}
    assert layout.read_image(val[0]).size == (40, 30)


def test_cityscapes_halves_images_and_maps_label_ids(cityscapes_root: Path) -> None:
    layout = open_layout(cityscapes_root)
    assert layout.kind == "cityscapes" and layout.num_classes == 19
    assert layout.background_index is None
    train = layout.samples("train")
    assert len(train) == 3 and train[0].id == "aachen_000000_000019"
    image = layout.read_image(train[0])
    mask = layout.read_mask(train[0])
    assert image.size == (32, 16)  # 64x32 halved
    assert mask.shape == (16, 32)
    # stripes of labelIds 0, 7, 26, 33 -> ignore, road (0), car (13), bicycle (18)
    assert mask[0, 0] == 255 and mask[0, 10] == 0 and mask[0, 18] == 13 and mask[0, 31] == 18
    assert len(layout.samples("val")) == 1


def test_context_has_60_classes(context_root: Path) -> None:
    layout = open_layout(context_root)
    assert layout.kind == "context" and layout.num_classes == 60
    assert [s.id for s in layout.samples("train")] == [f"2008_{i:06d}" for i in range(3)]
    assert set(np.unique(layout.read_mask(layout.samples("val")[0]))) == {0, 30, 59}


def test_folder_layout_with_split_folders_and_unlabeled(synth_root: Path) -> None:
    layout = open_layout(synth_root)
    assert layout.kind == "folder"
    assert layout.classes[0] == "background" and layout.background_index == 0
    assert len(layout.samples("train")) == 24 and len(layout.samples("val")) == 4
    unlabeled = layout.unlabeled_samples()
    assert len(unlabeled) == 4 and all(s.mask is None for s in unlabeled)


def test_folder_layout_with_list_files_and_json_classes(tmp_path: Path) -> None:
    from helpers import striped_mask, write_mask, write_rgb

    for name in ("a", "b", "c"):
        write_rgb(tmp_path / "images" / f"{name}.jpg", (20, 10), 1, "JPEG")
        write_mask(tmp_path / "masks" / f"{name}.png", striped_mask((20, 10), [0, 1, 2]))
    (tmp_path / "classes.json").write_text(
        '{"classes": ["sky", "road", "car"], "background": null}'
    )
    (tmp_path / "train.txt").write_text("a\nb.jpg\n")
    (tmp_path / "val.txt").write_text("c\n")
    layout = open_layout(tmp_path, "folder")
    assert layout.classes == ("sky", "road", "car") and layout.background_index is None
    assert [s.id for s in layout.samples("train")] == ["a", "b"]
    assert [s.id for s in layout.samples("val")] == ["c"]


@pytest.mark.parametrize("fixture", ["voc_root", "cityscapes_root", "context_root", "synth_root"])
def test_torch_dataset_yields_normalised_images_and_long_masks(fixture, request) -> None:
    from s4seg.training.data.transforms import train_transform

    root = request.getfixturevalue(fixture)
    layout = open_layout(root)
    samples = layout.samples(layout.default_train_split)
    dataset = SegmentationDataset(
        layout, samples, train_transform((24, 24), (0.5, 1.5), True, (0.5,) * 3, (0.25,) * 3)
    )
    item = dataset[(0, 123)]
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype.is_floating_point
    assert item["mask"].shape == (24, 24)
    values = set(item["mask"].unique().tolist())
    assert values <= set(range(layout.num_classes)) | {255}
