"""``pretrained_backbone: imagenet``: torchvision's weights from torch's cache, or one clear line
when they are neither cached nor downloadable. The network is the faked boundary: downloads are
made to fail; the cache is real (a weights file planted where torch looks)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAINING
from torchvision.models import resnet18

from s4seg.training.config import load_config
from s4seg.training.models.backbone_weights import imagenet_file, load_backbone_weights
from s4seg.training.models.deeplabv2 import DeepLabV2
from s4seg.workflows.cli import main

pytestmark = pytest.mark.trains  # every test here trains a model

URL18 = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
IMAGENET_SEGMENTER = "model.pretrained_backbone=imagenet"
IMAGENET_CLASSIFIER = "mlmt.pretrained_backbone=imagenet"


class OfflineHome(type(Path())):  # a Path that also records the downloads tried
    downloads: list[str]


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OfflineHome:
    """An empty torch cache, and no network: every download fails as it does offline."""
    home = OfflineHome(tmp_path / "torch-home")
    home.downloads = []
    monkeypatch.setenv("TORCH_HOME", str(home))

    def offline(url: str, *args, **kwargs) -> None:
        home.downloads.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home


def plant(depth_model: torch.nn.Module, home: Path) -> Path:
    """A torchvision-format file where torch's cache keeps the ImageNet weights."""
    target = home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    torch.save(depth_model.state_dict(), target)
    return target


def test_cache_location_follows_torch_home(torch_home: OfflineHome) -> None:
    assert imagenet_file(18) == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_file(101).name == "resnet101-63fe2227.pth"


def test_offline_without_the_file_says_which_file_from_where_and_where(
    torch_home: OfflineHome, synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    settings = [
        *TINY_TRAINING,
        f"data.root={synth_root}",
        "train.iterations=1",
        f"train.out_dir={tmp_path / 'run'}",
        IMAGENET_SEGMENTER,
    ]
    code = main(
        ["train", "baseline", "--config", "synthetic-quick", *[f"--set={s}" for s in settings]]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    target = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert URL18 in err and str(target) in err and "could not be downloaded" in err
    assert torch_home.downloads == [URL18]
    assert not (tmp_path / "run" / "last.pt").exists()


def test_cached_weights_are_loaded_without_the_network(torch_home: OfflineHome) -> None:
    torch.manual_seed(3)
    reference = resnet18(weights=None)
    plant(reference, torch_home)
    model = DeepLabV2(3, 18)
    report = load_backbone_weights(model.backbone, "imagenet", 18)
    assert report.matched == report.total and sorted(report.unused) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.backbone.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert torch_home.downloads == []


def test_both_trainers_start_from_cached_imagenet_weights(
    torch_home: OfflineHome, synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    torch.manual_seed(4)
    plant(resnet18(weights=None), torch_home)
    for trainer in ("baseline", "mlmt"):
        settings = [
            *TINY_TRAINING,
            f"data.root={synth_root}",
            "train.iterations=1",
            "train.val_every=1",
            f"train.out_dir={tmp_path / trainer}",
            IMAGENET_SEGMENTER,
            IMAGENET_CLASSIFIER,
        ]
        assert (
            main(
                ["train", trainer, "--config", "synthetic-quick", *[f"--set={s}" for s in settings]]
            )
            == 0
        )
        out = capsys.readouterr()
        said = out.out + out.err
        assert "resnet18-f37072fd.pth: " in said and "tensors loaded" in said
    assert torch_home.downloads == []


def test_paper_presets_use_imagenet_weights() -> None:
    for preset in ("voc", "cityscapes", "context"):
        cfg = load_config(preset, [])
        assert cfg.model.pretrained_backbone == "imagenet", preset
        assert cfg.mlmt.pretrained_backbone == "imagenet", preset
