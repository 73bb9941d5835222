"""Checkpoints: complete, loadable safely, and refused clearly when they are not what is needed."""

from pathlib import Path

import pytest
import torch

from s4seg.errors import CheckpointError
from s4seg.training.checkpoint import Checkpoint
from s4seg.training.models import segmenter_from_checkpoint
from s4seg.workflows.cli import main


def test_checkpoint_holds_what_resume_and_export_need(tiny_checkpoint: Path) -> None:
    trained = Checkpoint.load(tiny_checkpoint, kind="segmenter")
    assert trained.model and trained.optimizer and trained.scheduler and trained.rng
    assert trained.config["train"] and trained.split["labeled"]
    assert trained.iteration == 3 and trained.trainer == "baseline"
    assert trained.classes[0] == "background" and trained.background_index == 0
    assert trained.normalization["channel_order"] == "RGB" and len(trained.palette) == 7
    model = segmenter_from_checkpoint(trained)
    assert model.classifier.branches[0].out_channels == len(trained.classes)


def test_truncated_checkpoint_is_detected(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut.pt is unreadable \(truncated or corrupt\?\)"):
        Checkpoint.load(cut)


def test_foreign_incomplete_unknown_and_wrong_kind_files_are_refused(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Strict as the manifest (issue 33): a file with an entry this s4seg does not know, or
    without one it needs, is refused by name, not read by string key and half-used."""
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an s4seg checkpoint"):
        Checkpoint.load(foreign)
    raw = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({**raw, "surprise": 1}, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match=r"entries this s4seg does not know: \['surprise'\]"):
        Checkpoint.load(tmp_path / "unknown.pt")
    torch.save({k: v for k, v in raw.items() if k != "classes"}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"lacks \['classes'\]"):
        Checkpoint.load(tmp_path / "partial.pt")
    trained = Checkpoint.load(tiny_checkpoint)
    trained.kind = "classifier"
    classifier = trained.save(tmp_path / "cls.pt")
    with pytest.raises(CheckpointError, match="is a classifier checkpoint, expected segmenter"):
        Checkpoint.load(classifier, kind="segmenter")


def test_checkpoint_of_another_architecture_is_refused(tiny_checkpoint: Path) -> None:
    trained = Checkpoint.load(tiny_checkpoint)
    trained.arch = {**trained.arch, "backbone_depth": 34}
    with pytest.raises(CheckpointError, match="weights do not fit"):
        segmenter_from_checkpoint(trained)


def test_save_is_atomic_round_trips_and_leaves_no_temporary_file(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    trained = Checkpoint.load(tiny_checkpoint)
    target = tmp_path / "x.pt"
    trained.save(target)
    trained.iteration = 99
    trained.save(target)
    again = Checkpoint.load(target)
    assert again.iteration == 99 and again.path == target
    assert again.classes == trained.classes and again.model.keys() == trained.model.keys()
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_evaluate_refuses_a_missing_checkpoint(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", "--segmenter", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
