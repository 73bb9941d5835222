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
