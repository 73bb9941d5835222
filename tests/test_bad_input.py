"""Bad input gets a clear error that names the problem (and the CLI exits with code 2)."""

from pathlib import Path

import pytest
from helpers import striped_mask, write_mask

from s4seg.errors import ConfigError, DatasetError
from s4seg.layouts import open_layout
from s4seg.training.data.split import make_split
from s4seg.workflows.cli import main


def test_missing_data_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data folder not found: .*nowhere"):
        open_layout(tmp_path / "nowhere")


def test_missing_images_folder_of_a_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="class names not found"):
        open_layout(tmp_path)
    with pytest.raises(DatasetError, match="image folder not found"):
        open_layout(tmp_path / "images", "folder")


def test_image_without_mask_names_both_paths(voc_root: Path) -> None:
    missing = voc_root / "SegmentationClassAug" / "2007_000003.png"
    missing.unlink()
    layout = open_layout(voc_root)
    with pytest.raises(
        DatasetError, match=r"image without mask: .*2007_000003.jpg .*expected .*2007_000003.png"
    ):
        layout.samples("train_aug")


def test_mask_value_that_is_not_a_class(voc_root: Path) -> None:
    bad = voc_root / "SegmentationClassAug" / "2007_000001.png"
    write_mask(bad, striped_mask((40, 30), [0, 21, 254]))
    layout = open_layout(voc_root)
    sample = next(s for s in layout.samples("train_aug") if s.id == "2007_000001")
    with pytest.raises(DatasetError, match=r"2007_000001.png holds values \[21, 254\]"):
        layout.read_mask(sample)


def test_unreadable_image(voc_root: Path) -> None:
    corrupt = voc_root / "JPEGImages" / "2007_000002.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    layout = open_layout(voc_root)
    sample = next(s for s in layout.samples("train_aug") if s.id == "2007_000002")
    with pytest.raises(DatasetError, match=r"unreadable image .*2007_000002.jpg"):
        layout.read_image(sample)


def test_truncated_image(voc_root: Path) -> None:
    path = voc_root / "JPEGImages" / "2007_000004.jpg"
    path.write_bytes(path.read_bytes()[:200])
    layout = open_layout(voc_root)
    sample = next(s for s in layout.samples("train_aug") if s.id == "2007_000004")
    with pytest.raises(DatasetError, match=r"2007_000004.jpg"):
        layout.read_image(sample)


def test_empty_split(voc_root: Path) -> None:
    layout = open_layout(voc_root)
    with pytest.raises(DatasetError, match="leaves no labeled image"):
        make_split(layout, "train_aug", "1/50", seed=0)  # 8 images * 1/50 -> 0
    (voc_root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"val.txt is empty"):
        layout.samples("val")


def test_missing_split_list(voc_root: Path) -> None:
    with pytest.raises(DatasetError, match="split list 'test' not found"):
        open_layout(voc_root).samples("test")


def test_cli_prints_one_line_and_exits_2(tmp_path: Path, capsys) -> None:
    code = main(
        ["data", "split", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "s.json")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "data folder not found" in err


def test_wrong_config_key_is_an_error_with_a_suggestion(capsys) -> None:
    code = main(["train", "baseline", "--config", "synthetic-quick", "--set", "train.iteratoins=5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown config key 'train.iteratoins' (did you mean 'train.iterations'?)" in err


def test_wrong_config_type_and_unknown_preset(tmp_path: Path) -> None:
    from s4seg.training.config import load_config

    with pytest.raises(ConfigError, match=r"'train\.batch_size'"):
        load_config("voc", ["train.batch_size=many"])
    with pytest.raises(ConfigError, match=r"'train\.iterations'"):
        load_config("voc", ["train.iterations=0"])
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: voc\nmodel:\n  depth: 50\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.depth'"):
        load_config(str(bad))


@pytest.mark.trains
def test_corrupt_image_mid_training_names_the_file_and_keeps_progress(
    synth_root: Path, tmp_path: Path
) -> None:
    """Training stops naming the file, with the iterations done so far saved for --resume."""
    import shutil

    from helpers import TINY_TRAINING

    from s4seg.training.baseline import train_baseline
    from s4seg.training.checkpoint import Checkpoint
    from s4seg.training.config import load_config
    from s4seg.training.data.sampler import ResumableSampler

    root = tmp_path / "synth"
    shutil.copytree(synth_root, root)
    cfg = load_config(
        "synthetic-quick",
        [
            *TINY_TRAINING,
            f"data.root={root}",
            "train.iterations=50",
            "data.labeled_ratio=full",
            f"train.out_dir={tmp_path / 'run'}",
        ],
    )
    # The image the sampler hands out at iteration 2 (batch 2: stream positions 4 and 5).
    stream = iter(ResumableSampler(24, seed=cfg.train.seed))
    order = [next(stream)[0] for _ in range(6)]
    labeled = make_split(open_layout(root), "train", "full", cfg.data.split_seed).labeled
    victim = root / "images" / f"{labeled[order[5]]}.png"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(DatasetError, match=f"unreadable image .*{victim.name}"):
        train_baseline(cfg, log=lambda *_: None)
    saved = Checkpoint.load(tmp_path / "run" / "last.pt", kind="segmenter")
    assert saved.iteration == 2


def test_a_png_with_a_truncated_header_chunk_is_a_clear_422() -> None:
    """Found by the fuzz test: PIL raises ValueError, not OSError, for a short IHDR chunk."""
    import struct
    import zlib

    from s4seg.imaging import ImageError, decode_image

    short_ihdr = struct.pack(">I", 0) + b"IHDR" + struct.pack(">I", zlib.crc32(b"IHDR"))
    data = b"\x89PNG\r\n\x1a\n" + short_ihdr
    with pytest.raises(ImageError, match="unreadable image") as caught:
        decode_image(data)
    assert caught.value.status == 422
