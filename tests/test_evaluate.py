"""`s4seg evaluate`: report, table, confusion matrix and colourised predictions."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from s4seg.workflows.cli import main


def test_evaluate_writes_report_and_pictures(
    tiny_checkpoint: Path, synth_root: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--segmenter",
            str(tiny_checkpoint),
            "--data",
            str(synth_root),
            "--out",
            str(out),
            "--save-predictions",
            "2",
            "--part",
            "all",  # the report part alone is tested in tests/test_calibration.py
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "disc" in printed
    report = json.loads((out / "report.json").read_text())
    confusion = np.array(report["confusion_matrix"])
    assert confusion.shape == (7, 7)
    assert confusion.sum() == 4 * 64 * 64  # every val pixel is labeled in the synthetic set
    assert 0.0 <= report["miou"] <= 1.0 and report["images"] == 4 and report["part"] == "all"
    assert report["pixel_accuracy"] == np.trace(confusion) / confusion.sum()
    predictions = sorted((out / "predictions").glob("*.png"))
    assert len(predictions) == 4  # two label maps + two panels
    label_map = Image.open(out / "predictions" / "val_val_00000.png")
    assert label_map.mode == "P" and label_map.size == (64, 64)
    assert (out / "confusion.csv").read_text().startswith("target\\prediction,background")


def test_evaluate_defaults_to_the_training_data(tiny_checkpoint: Path, capsys) -> None:
    assert main(["evaluate", "--segmenter", str(tiny_checkpoint), "--max-images", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 1 and summary["split"] == "val"


def test_sliding_windows_cover_the_image_as_the_recipe_places_them() -> None:
    from s4seg.training.evaluation import window_starts

    assert window_starts(2048, 798) == [0, 532, 1064, 1250]  # UniMatch V2: 2 x 4 on Cityscapes
    assert window_starts(1024, 798) == [0, 226]
    assert window_starts(1024, 392) == [0, 261, 522, 632]  # the preset on half resolution
    assert window_starts(512, 392) == [0, 120]
    assert window_starts(300, 392) == [0]


def test_sliding_window_probabilities_are_the_whole_images_for_a_per_pixel_model() -> None:
    """A 1x1 convolution sees one pixel: every window gives the same probabilities there, so
    the summed, renormalised windows must equal the whole image's; a large-context model
    differs (the windows see less)."""
    import torch

    from s4seg.training.evaluation import predict_probabilities
    from s4seg.training.runtime import setup_runtime

    torch.manual_seed(0)
    runtime = setup_runtime("cpu", "off", "off")
    pointwise = torch.nn.Conv2d(3, 5, 1).eval()
    image = torch.randn(1, 3, 50, 90)
    whole = predict_probabilities(pointwise, image, runtime)
    windowed = predict_probabilities(pointwise, image, runtime, window=32)
    assert windowed.shape == whole.shape
    assert torch.allclose(windowed, whole, atol=1e-6)
    context = torch.nn.Conv2d(3, 5, 31, padding=15).eval()
    assert not torch.allclose(
        predict_probabilities(context, image, runtime, window=32),
        predict_probabilities(context, image, runtime),
        atol=1e-3,
    )
