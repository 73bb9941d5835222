"""``s4seg queue`` (issue 34, item 3): the acquisition scores, the diversity step, and the command
on a real export: resume, shards, unreadable images, an empty pool."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s4seg.acquisition import image_scores, random_score, rank
from s4seg.errors import S4segError
from s4seg.manifest import Manifest


def queue(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "s4seg", "queue", *args], capture_output=True, text=True
    )


def test_uncertain_images_score_higher(tiny_export: Path) -> None:
    fitted = Manifest.load(tiny_export)
    classes = len(fitted.classes)
    assert fitted.confidence is not None
    # A calibration whose effect is known: no temperature, sets of classes above half uniform.
    known = {"temperature": [1.0], "threshold": 0.5 / classes}
    manifest = fitted.model_copy(update={"confidence": fitted.confidence.model_copy(update=known)})
    sure = np.zeros((classes, 4, 4), dtype=np.float32)
    sure[0] = 50.0
    tied = np.zeros((classes, 4, 4), dtype=np.float32)
    absent = np.zeros(classes, dtype=np.float32)

    def scores(logits: np.ndarray, said: np.ndarray):
        return image_scores(logits, said, manifest.confidence, manifest.background_index)

    low, high = scores(sure, absent), scores(tied, absent)
    assert low.entropy < 0.01 and high.entropy == pytest.approx(1.0, abs=1e-4)
    assert low.margin < 0.01 and high.margin == pytest.approx(1.0, abs=1e-4)
    assert low.set_size == 0.0 and high.set_size == 1.0
    # The classifier says class 1 is there; the segmenter's map (all class 0) does not.
    said = absent.copy()
    said[1] = 1.0
    assert scores(sure, said).disagreement > low.disagreement


def test_the_diversity_step_sets_near_copies_aside() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5, 16)).astype(np.float32)
    features[3] = features[0] * 1.01  # a near-copy of the best image
    values = [0.9, 0.5, 0.4, 0.8, 0.1]
    plain = rank(values)
    assert plain.order == [0, 3, 1, 2, 4] and plain.near_copy == {}
    diverse = rank(values, features, top=3, similarity=0.9)
    assert diverse.order == [0, 1, 2, 4, 3]
    assert diverse.near_copy[3][0] == 0 and diverse.near_copy[3][1] > 0.99
    assert rank(values, features, top=3, similarity=1.01).order == plain.order


def test_random_scores_are_fixed_by_name_and_seed() -> None:
    assert random_score("a.png", 0) == random_score("a.png", 0)
    assert random_score("a.png", 0) != random_score("a.png", 1)
    assert 0 <= random_score("b.png", 3) < 1


def test_the_pipeline_reads_the_classifiers_features_without_changing_its_answer(
    tiny_export: Path, synth_root: Path
) -> None:
    from s4seg.letterbox import Framing
    from s4seg.onnx_pipeline import OnnxPipeline

    plain = OnnxPipeline.from_export(tiny_export, device="cpu")
    featured = OnnxPipeline.from_export(tiny_export, device="cpu", features=True)
    image = np.asarray(Image.open(synth_root / "images" / "val" / "val_00000.png").convert("RGB"))
    framed = Framing.of(plain.manifest).frame(image)
    a = plain.run(framed.canvas[None], framed.view[None])
    b = featured.run(framed.canvas[None], framed.view[None])
    np.testing.assert_array_equal(a.class_probs, b.class_probs)
    assert a.features is None and b.features is not None and b.features.shape == (1, 512)
    assert b.features.min() >= 0  # after the ReLU and the average pool


@pytest.fixture
def pool(synth_root: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "pool"
    shutil.copytree(synth_root / "images" / "unlabeled", folder / "new")
    shutil.copytree(synth_root / "images" / "val", folder / "old")
    shutil.copy(synth_root / "images" / "val" / "val_00001.png", folder / "again.png")
    (folder / "notes.png").write_text("this is text")
    return folder


def test_the_queue_ranks_sets_copies_aside_resumes_and_lists_what_it_skipped(
    pool: Path, tiny_export: Path, tmp_path: Path
) -> None:
    out = tmp_path / "queue"
    args = ["--pool", str(pool), "--model", str(tiny_export), "--output", str(out)]
    first = queue(*args, "--top", "9", "--strategy", "margin", "--similarity", "0.999")
    assert first.returncode == 0, first.stderr
    assert "notes.png: not an image" in first.stdout  # skipped and listed, never fatal
    assert json.loads((out / "failures.json").read_text())[0]["input"].endswith("notes.png")
    rows = list(csv.DictReader((out / "queue.csv").open()))
    images = [r["image"] for r in rows]
    assert sorted(images) == sorted(
        ["again", *(f"new/{p.stem}" for p in (pool / "new").iterdir())]
        + [f"old/{p.stem}" for p in (pool / "old").iterdir()]
    )
    margins = [float(r["margin"]) for r in rows if not r["near_copy_of"]]
    assert margins == sorted(margins, reverse=True)
    # val_00001 is in the pool twice: whichever ranks second is set aside, last.
    copies = [r for r in rows if r["near_copy_of"]]
    assert {r["image"] for r in copies} | {copies[0]["near_copy_of"]} == {"again", "old/val_00001"}
    assert rows[-1]["near_copy_of"] and "near-copy" in rows[-1]["reason"]
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size == (6 * 192, 2 * (192 + 30))  # nine cells: six columns, two rows
    scores = sorted((out / "scores").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in scores]
    # Another strategy on the same scores: nothing is scored again.
    again = queue(*args, "--strategy", "random", "--seed", "1", "--no-diversity")
    assert again.returncode == 0 and f"0 written, {len(scores)} already there" in again.stdout
    assert [p.stat().st_mtime_ns for p in scores] == stamps
    ranked = json.loads((out / "queue.json").read_text())
    assert ranked["strategy"] == "random" and len(ranked["rows"]) == len(scores)


def test_shards_score_their_share_and_each_run_ranks_what_is_scored(
    pool: Path, tiny_export: Path, tmp_path: Path
) -> None:
    out = tmp_path / "queue"
    args = ["--pool", str(pool), "--model", str(tiny_export), "--output", str(out)]
    first = queue(*args, "--shard", "0/2")
    assert first.returncode == 0, first.stderr
    assert "are not scored yet" in first.stdout
    second = queue(*args, "--shard", "1/2")
    assert second.returncode == 0, second.stderr
    assert "1 of the pool" in second.stdout  # notes.png: never scored
    whole = tmp_path / "whole"
    queue("--pool", str(pool), "--model", str(tiny_export), "--output", str(whole))
    sharded = [r["image"] for r in csv.DictReader((out / "queue.csv").open())]
    assert sharded == [r["image"] for r in csv.DictReader((whole / "queue.csv").open())]


def test_an_empty_pool_and_a_strategy_the_export_cannot_score_are_refused(
    tiny_export: Path, tmp_path: Path, unimatch_export: Path
) -> None:
    (tmp_path / "empty").mkdir()
    empty = queue(
        "--pool",
        str(tmp_path / "empty"),
        "--model",
        str(tiny_export),
        "--output",
        str(tmp_path / "q"),
    )
    assert empty.returncode != 0 and "holds no images" in empty.stderr
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "a.png")
    no_classifier = queue(
        "--pool",
        str(tmp_path / "one"),
        "--model",
        str(unimatch_export),
        "--output",
        str(tmp_path / "q"),
        "--strategy",
        "disagreement",
    )
    assert no_classifier.returncode != 0
    assert "needs the MLMT classifier" in no_classifier.stderr
    with pytest.raises(S4segError, match="no linear layer"):
        from s4seg.features import with_pooled_features

        with_pooled_features(unimatch_export / "classifier.onnx")


@pytest.fixture(scope="module")
def s4gan_export(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A barely trained s4GAN segmenter, exported: its discriminator goes along."""
    from helpers import TINY_TRAINING

    from s4seg.export.exporter import export_models
    from s4seg.export.requests import ExportRequest
    from s4seg.training.config import load_config
    from s4seg.training.trainers import TRAINERS

    out = tmp_path_factory.mktemp("s4gan")
    cfg = load_config(
        "synthetic-quick",
        [*TINY_TRAINING, f"data.root={synth_root}", "train.iterations=2",
         "train.val_every=100", f"train.out_dir={out / 'run'}"],
    )  # fmt: skip
    checkpoint = TRAINERS["s4gan"].train(cfg, log=lambda *_: None)
    export_models(
        ExportRequest(str(checkpoint), None, str(out / "export"), input_size=(64, 64),
                      data=str(synth_root), parity_images=2),
        log=lambda *_: None,
    )  # fmt: skip
    return out / "export"


def test_an_s4gan_export_carries_its_discriminator_and_the_queue_ranks_by_it(
    s4gan_export: Path, synth_root: Path, tiny_export: Path, tmp_path: Path
) -> None:
    import torch

    from s4seg.letterbox import Framing
    from s4seg.onnx_pipeline import OnnxPipeline
    from s4seg.training.checkpoint import Checkpoint
    from s4seg.training.losses import fake_maps, minmax01
    from s4seg.training.models.discriminator import Discriminator

    manifest = Manifest.load(s4gan_export)
    assert manifest.discriminator is not None and manifest.discriminator.max_abs_difference < 1e-4
    assert "discriminator" not in manifest.graphs  # not a served step: publish leaves it
    pipeline = OnnxPipeline.from_export(s4gan_export, device="cpu", discriminator=True)
    images = [
        np.asarray(Image.open(p).convert("RGB"))
        for p in sorted((synth_root / "images" / "val").iterdir())[:3]
    ]
    canvases, views, _ = Framing.of(manifest).batch(images)
    out = pipeline.run(canvases, views, keep_logits=True)
    # The score is the trained discriminator's on what training shows it (its own functions).
    trained = Checkpoint.load(manifest.sources["segmenter"].path)
    model = Discriminator(len(manifest.classes))
    model.load_state_dict(trained.discriminator)
    mean = torch.tensor(trained.normalization["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(trained.normalization["std"]).view(1, 3, 1, 1)
    normalised = (torch.from_numpy(canvases).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        logit, _ = model.eval()(fake_maps(torch.from_numpy(out.logits), None), minmax01(normalised))
    expected = torch.sigmoid(logit).numpy()
    np.testing.assert_allclose(out.d_score, expected, atol=1e-4)
    ranked = tmp_path / "queue"
    done = queue("--pool", str(synth_root / "images" / "val"), "--model", str(s4gan_export),
                 "--output", str(ranked), "--strategy", "discriminator")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((ranked / "queue.csv").open()))
    scores = [float(r["discriminator"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    refused = queue("--pool", str(synth_root / "images" / "val"), "--model", str(tiny_export),
                    "--output", str(tmp_path / "q2"), "--strategy", "discriminator")  # fmt: skip
    assert refused.returncode != 0 and "needs s4GAN's discriminator" in refused.stderr
