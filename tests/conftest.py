"""Small data trees in the real on-disk layouts, a tiny trained checkpoint, and the test tiers.

Tiers: a test that uses a real ``tritonserver`` or a browser is marked ``stack``, one that
trains a model (itself, or through a fixture that does) ``trains``. ``make test-fast`` runs the
rest (contracts in-process, units: under 2 minutes); ``make test`` and CI run everything."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import striped_mask, write_mask, write_rgb

from s4seg.export.requests import ExportRequest
from s4seg.training.data.synth import write_synthetic

# Fixtures that start a real tritonserver (with the gateway) or a browser, and fixtures that
# train (the others build on them).
STACK_FIXTURES = {"served", "server", "stack", "browser", "page", "label_studio"}
TRAINED_FIXTURES = {
    "tiny_checkpoint",
    "tiny_classifier",
    "varied_checkpoint",
    "tiny_export",
    "unimatch_export",
    "vit_export",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & STACK_FIXTURES:
            item.add_marker(pytest.mark.stack)
        if used & TRAINED_FIXTURES:
            item.add_marker(pytest.mark.trains)


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    ids = [f"2007_{i:06d}" for i in range(10)]
    for i, sample_id in enumerate(ids):
        write_rgb(root / "JPEGImages" / f"{sample_id}.jpg", (40, 30), i, "JPEG")
        write_mask(
            root / "SegmentationClassAug" / f"{sample_id}.png",
            striped_mask((40, 30), [0, i % 21, 255]),
        )
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train_aug.txt").write_text("\n".join(ids[:8]) + "\n")
    # The authors' list format: image and mask paths relative to the root.
    (lists / "val.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids[8:])
    )
    return root


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    for split, city, count in (("train", "aachen", 3), ("val", "lindau", 1)):
        for i in range(count):
            stem = f"{city}_{i:06d}_000019"
            write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", (64, 32), i)
            # labelIds: unlabeled(0), road(7), car(26), bicycle(33), license plate (-1 -> 255)
            write_mask(
                root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                striped_mask((64, 32), [0, 7, 26, 33]),
            )
    return root


@pytest.fixture
def context_root(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit" / "VOC2010"
    ids = [f"2008_{i:06d}" for i in range(4)]
    for i, sample_id in enumerate(ids):
        write_rgb(root / "JPEGImages" / f"{sample_id}.jpg", (36, 28), i, "JPEG")
        write_mask(
            root / "SegmentationClassContext" / f"{sample_id}.png",
            striped_mask((36, 28), [0, 59, 30]),
        )
    lists = root / "ImageSets" / "SegmentationContext"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(ids[:3]) + "\n")
    (lists / "val.txt").write_text(ids[3] + "\n")
    return root


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(
        tmp_path_factory.mktemp("synth"), seed=3, num_train=24, num_val=4, num_unlabeled=4, size=64
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (if barely trained) segmenter checkpoint from the real trainer."""
    from helpers import TINY_TRAINING

    from s4seg.training.baseline import train_baseline
    from s4seg.training.config import load_config

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(
        "synthetic-quick",
        [*TINY_TRAINING, f"data.root={synth_root}", "train.iterations=3", f"train.out_dir={out}"],
    )
    return train_baseline(cfg, log=lambda *_: None)


def export_alone(checkpoint: Path, out: Path, synth_root: Path) -> Path:
    """A segmenter exported without a classifier at 64x64, parity checked on 2 images."""
    from s4seg.export.exporter import export_models

    request = ExportRequest(
        str(checkpoint), None, str(out), input_size=(64, 64), data=str(synth_root), parity_images=2
    )
    export_models(request, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def unimatch_export(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UniMatch segmenter on DeepLabv3+ (issue 23), barely trained, exported without a
    classifier: what the gateway serves as a second model."""
    from helpers import TINY_TRAINING

    from s4seg.training.config import load_config
    from s4seg.training.trainers import TRAINERS

    out = tmp_path_factory.mktemp("unimatch")
    cfg = load_config(
        "synthetic-quick",
        [
            *TINY_TRAINING,
            f"data.root={synth_root}",
            "train.iterations=3",
            "train.val_every=100",
            "model.architecture=deeplabv3plus",
            f"train.out_dir={out / 'run'}",
        ],
    )
    checkpoint = TRAINERS["unimatch"].train(cfg, log=lambda *_: None)
    return export_alone(checkpoint, out / "export", synth_root)


@pytest.fixture(scope="session")
def vit_export(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """UniMatch V2 on the tiny ViT (issue 35), two steps, exported without a classifier at a
    size off the patch grid (64: padded to 70 inside the graph), parity checked."""
    from helpers import TINY_TRAINING

    from s4seg.training.config import load_config
    from s4seg.training.trainers import TRAINERS

    out = tmp_path_factory.mktemp("vit")
    cfg = load_config(
        "synthetic-vit-tiny",
        [
            *TINY_TRAINING,
            f"data.root={synth_root}",
            "data.crop_size=[56, 56]",
            "train.iterations=2",
            "train.val_every=100",
            "unimatch.unlabeled_batch_size=2",
            f"train.out_dir={out / 'run'}",
        ],
    )
    checkpoint = TRAINERS["unimatch-v2"].train(cfg, log=lambda *_: None)
    return export_alone(checkpoint, out / "export", synth_root)


@pytest.fixture(scope="session")
def tiny_classifier(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (barely trained) MLMT checkpoint from the real trainer."""
    from helpers import TINY_TRAINING

    from s4seg.training.config import load_config
    from s4seg.training.mlmt import train_mlmt

    out = tmp_path_factory.mktemp("mlmt")
    cfg = load_config(
        "synthetic-quick",
        [*TINY_TRAINING, f"data.root={synth_root}", "train.iterations=2", f"train.out_dir={out}"],
    )
    return train_mlmt(cfg, log=lambda *_: None)


@pytest.fixture(scope="session")
def varied_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with freshly initialised weights: it predicts every class somewhere
    (three training steps teach it "background everywhere"), so gating visibly changes maps."""
    import torch

    from s4seg.training.checkpoint import Checkpoint
    from s4seg.training.models import segmenter_from_arch

    payload = Checkpoint.load(tiny_checkpoint, kind="segmenter")
    torch.manual_seed(0)
    model = segmenter_from_arch(payload.arch)
    with torch.no_grad():
        for conv in model.classifier.branches:  # larger head weights: clear winners, no near-ties
            conv.weight.normal_(0, 0.3)
    payload.model = model.state_dict()
    return payload.save(tmp_path_factory.mktemp("varied") / "varied.pt")


@pytest.fixture(scope="session")
def tiny_export(
    varied_checkpoint: Path, tiny_classifier: Path, synth_root: Path, tmp_path_factory
) -> Path:
    """A real export (segmenter + classifier) made by the real exporter."""
    from s4seg.export.exporter import export_models

    out = tmp_path_factory.mktemp("export") / "export"
    export_models(
        ExportRequest(
            str(varied_checkpoint),
            str(tiny_classifier),
            str(out),
            input_size=(64, 64),
            data=str(synth_root),
            parity_images=4,
            tau=0.2,
        ),
        log=lambda *_: None,
    )
    return out


def pytest_terminal_summary(terminalreporter) -> None:
    """List the screenshots the browser tests saved, so a CI log says where to look."""
    shots = sorted((Path(__file__).resolve().parent.parent / "test-artifacts").rglob("*.png"))
    if shots:
        terminalreporter.write_sep("-", "test artifacts")
        for shot in shots:
            terminalreporter.write_line(str(shot))
