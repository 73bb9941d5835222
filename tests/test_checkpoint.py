"""Checkpoints: complete, loadable safely, and refused clearly when they are not what is needed."""

from pathlib import Path

import pytest
import torch

from s4seg.errors import CheckpointError
from s4seg.training.checkpoint import load_checkpoint, save_checkpoint
from s4seg.training.models import segmenter_from_checkpoint
from s4seg.workflows.cli import main


def test_checkpoint_holds_what_resume_and_export_need(tiny_checkpoint: Path) -> None:
    payload = load_checkpoint(tiny_checkpoint, kind="segmenter")
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "iteration",
        "rng",
        "config",
        "split",
        "classes",
        "palette",
        "normalization",
        "arch",
        "background_index",
    ):
        assert key in payload, key
    assert payload["iteration"] == 3
    assert payload["classes"][0] == "background" and payload["background_index"] == 0
    assert payload["normalization"]["channel_order"] == "RGB"
    model = segmenter_from_checkpoint(payload)
    assert model.classifier.branches[0].out_channels == len(payload["classes"])


def test_truncated_checkpoint_is_detected(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut.pt is unreadable \(truncated or corrupt\?\)"):
        load_checkpoint(cut)


def test_foreign_and_wrong_kind_files_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an s4seg checkpoint"):
        load_checkpoint(foreign)
    classifier = save_checkpoint({"kind": "classifier"}, tmp_path / "cls.pt")
    with pytest.raises(CheckpointError, match="is a classifier checkpoint, expected segmenter"):
        load_checkpoint(classifier, kind="segmenter")


def test_checkpoint_of_another_architecture_is_refused(tiny_checkpoint: Path) -> None:
    payload = load_checkpoint(tiny_checkpoint)
    payload["arch"] = {**payload["arch"], "backbone_depth": 34}
    with pytest.raises(CheckpointError, match="weights do not fit"):
        segmenter_from_checkpoint(payload, "ckpt")


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "x.pt"
    save_checkpoint({"kind": "segmenter", "n": 1}, target)
    save_checkpoint({"kind": "segmenter", "n": 2}, target)
    assert load_checkpoint(target)["n"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_evaluate_refuses_a_missing_checkpoint(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", "--segmenter", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
