"""A few iterations of each trainer end to end on synthetic data, and what they leave behind."""

import csv
import json
from pathlib import Path

import pytest
from helpers import TINY_TRAINING
from PIL import Image

from s4seg.training.checkpoint import Checkpoint
from s4seg.workflows.cli import main

pytestmark = pytest.mark.trains  # every test here trains a model


def _run(trainer: str, root: Path, out: Path, *extra: str) -> dict:
    settings = [
        *TINY_TRAINING,
        f"data.root={root}",
        "train.iterations=4",
        "train.val_every=4",
        f"train.out_dir={out}",
        *extra,
    ]
    assert (
        main(["train", trainer, "--config", "synthetic-quick", *[f"--set={s}" for s in settings]])
        == 0
    )
    return Checkpoint.load(out / "last.pt")


def test_s4gan_logs_losses_d_scores_and_writes_the_plot(synth_root: Path, tmp_path: Path) -> None:
    payload = _run("s4gan", synth_root, tmp_path / "gan")
    assert payload.kind == "segmenter" and payload.trainer == "s4gan"
    assert payload.discriminator and payload.optimizer_d and payload.scheduler_d
    rows = list(csv.DictReader((tmp_path / "gan" / "d_scores.csv").read_text().splitlines()))
    assert len(rows) == 4
    assert all(0.0 <= float(r["d_real"]) <= 1.0 and 0.0 <= float(r["d_fake"]) <= 1.0 for r in rows)
    assert Image.open(tmp_path / "gan" / "d_scores.png").format == "PNG"


def test_s4gan_with_every_image_labeled_uses_them_all_as_unlabeled(
    voc_root: Path, tmp_path: Path
) -> None:
    """Issue 20, item 6: ``labeled_ratio=full`` on a layout without extra unlabeled images
    (the paper's Full rows) died with a bare ValueError: the unlabeled stream was empty."""
    from s4seg.training.config import load_config
    from s4seg.training.data.setup import build_training_data

    full = ["data.kind=voc", "data.labeled_ratio=full"]
    cfg = load_config("synthetic-quick", [f"data.root={voc_root}", *full])
    data = build_training_data(cfg.data)
    assert len(data.unlabeled) == len(data.labeled) == 8
    payload = _run("s4gan", voc_root, tmp_path / "full", *full)
    assert payload.trainer == "s4gan"


def test_s4gan_ablation_ce_only_leaves_d_untrained(synth_root: Path, tmp_path: Path) -> None:

    payload = _run("s4gan", synth_root, tmp_path / "ce", "gan.losses=ce")
    assert payload.optimizer_d["state"] == {}  # D never stepped
    assert "loss_fm" not in (tmp_path / "ce" / "d_scores.csv").read_text()


def _weights_after_one_step(trainer: str, root: Path, out: Path, *extra: str) -> dict:
    settings = [
        *TINY_TRAINING,
        f"data.root={root}",
        "train.iterations=1",
        "train.val_every=100",
        f"train.out_dir={out}",
        *extra,
    ]
    assert (
        main(["train", trainer, "--config", "synthetic-quick", *[f"--set={s}" for s in settings]])
        == 0
    )
    trained = Checkpoint.load(out / "last.pt")
    return trained.student if trainer == "mlmt" else trained.model


def _same(a: dict, b: dict) -> bool:
    import torch

    return all(torch.equal(a[k], b[k]) for k in a)


def test_the_s4gan_step_sends_its_gan_terms_to_s_with_their_weights(
    synth_root: Path, tmp_path: Path
) -> None:
    """Issue 20, item 13: one step from the same seed and batches: setting either term's weight
    to 0 changes S's update (so each term is in the step, weighted by its own lambda)."""
    base = ["gan.losses=ce+fm+st", "gan.gamma=0.0"]  # gamma 0: every sample is self-trained
    full = _weights_after_one_step("s4gan", synth_root, tmp_path / "a", *base)
    for muted in ("gan.lambda_fm=0", "gan.lambda_st=0"):
        out = tmp_path / muted.split(".")[1]
        assert not _same(full, _weights_after_one_step("s4gan", synth_root, out, *base, muted))


def test_the_mlmt_step_sends_the_consistency_term_to_the_student(
    synth_root: Path, tmp_path: Path
) -> None:
    """Issue 20, item 13: with the ramp at its end from the first step, the consistency term
    changes the student's update; at weight 0 it does not."""
    at_once = ["mlmt.burn_in_epochs=0", "mlmt.rampup_epochs=0"]
    on = _weights_after_one_step("mlmt", synth_root, tmp_path / "a", *at_once)
    off = _weights_after_one_step(
        "mlmt", synth_root, tmp_path / "b", *at_once, "mlmt.consistency_weight=0"
    )
    assert not _same(on, off)


def test_mlmt_reports_map_and_roc(synth_root: Path, tmp_path: Path) -> None:
    payload = _run("mlmt", synth_root, tmp_path / "mlmt")
    assert payload.kind == "classifier" and payload.arch["depth"] == 18
    assert 0.0 <= payload.metrics["teacher_map"] <= 1.0
    assert set(payload.metrics["teacher_per_class_ap"]) == set(payload.classes)
    assert Image.open(tmp_path / "mlmt" / "roc.png").format == "PNG"


def test_mlmt_weak_label_mode(synth_root: Path, tmp_path: Path) -> None:
    labels = tmp_path / "weak.json"
    labels.write_text(json.dumps({"unlabeled/unlabeled_00000": ["background", "disc"]}))
    payload = _run("mlmt", synth_root, tmp_path / "weak", f"mlmt.weak_labels={labels}")
    assert payload.config["mlmt"]["weak_labels"] == str(labels)


def test_evaluate_gated_and_ungated(synth_root: Path, tmp_path: Path, capsys) -> None:
    _run("baseline", synth_root, tmp_path / "seg")
    _run("mlmt", synth_root, tmp_path / "cls")
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--segmenter",
            str(tmp_path / "seg" / "last.pt"),
            "--classifier",
            str(tmp_path / "cls" / "last.pt"),
            "--tau-sweep",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "gated(tau=0.2)" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["tau"] == 0.2 and "ungated" in report
    taus = [row["tau"] for row in report["tau_sweep"]]
    assert taus == sorted(taus) and 0.2 in taus
    confusion = report["confusion_matrix"]
    assert sum(map(sum, confusion)) == sum(map(sum, report["ungated"]["confusion_matrix"]))


def test_classifier_checkpoint_is_refused_as_segmenter(
    synth_root: Path, tmp_path: Path, capsys
) -> None:
    _run("mlmt", synth_root, tmp_path / "cls")
    assert main(["evaluate", "--segmenter", str(tmp_path / "cls" / "last.pt")]) == 2
    assert "is a classifier checkpoint, expected segmenter" in capsys.readouterr().err
