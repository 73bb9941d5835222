"""DeepLabv2 geometry, the four summed ASPP rates, frozen BN affine, backbone weight loading."""

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from s4seg.errors import CheckpointError
from s4seg.training.models import DeepLabV2
from s4seg.training.models.backbone_weights import load_backbone_weights


@pytest.mark.parametrize("depth", [18, 101])
def test_321_input_gives_41_logits(depth: int) -> None:
    model = DeepLabV2(21, depth).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 321, 321)).shape == (1, 21, 41, 41)


def test_backbone_runs_at_output_stride_8() -> None:
    model = DeepLabV2(5, 50).eval()
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 64, 64))
    assert features.shape == (1, 2048, 8, 8)
    dilations = {
        m.dilation for m in model.backbone.layer4.modules() if isinstance(m, torch.nn.Conv2d)
    }
    assert (4, 4) in dilations


def test_all_four_aspp_rates_contribute() -> None:
    torch.manual_seed(0)
    model = DeepLabV2(4, 18).eval()
    assert [b.dilation[0] for b in model.classifier.branches] == [6, 12, 18, 24]
    features = torch.randn(1, 512, 41, 41)
    with torch.no_grad():
        total = model.classifier(features)
        parts = [branch(features) for branch in model.classifier.branches]
        assert torch.allclose(total, sum(parts), atol=1e-6)
        for index, branch in enumerate(model.classifier.branches):
            saved = branch.weight.clone()
            branch.weight.zero_()
            changed = model.classifier(features)
            branch.weight.copy_(saved)
            assert not torch.allclose(changed, total), (
                f"rate {branch.dilation[0]} (#{index}) is unused"
            )
    model.classifier(features).sum().backward()
    assert all(b.weight.grad.abs().sum() > 0 for b in model.classifier.branches)


def test_frozen_bn_affine_and_head_at_ten_times_lr() -> None:
    model = DeepLabV2(3, 18)
    bn = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(not m.weight.requires_grad and not m.bias.requires_grad for m in bn)
    groups = model.param_groups(2.5e-4, 10.0)
    assert groups[1]["lr"] == pytest.approx(2.5e-3)
    optimised = {id(p) for g in groups for p in g["params"]}
    assert not any(id(m.weight) in optimised for m in bn)


def test_backbone_weights_from_a_local_torchvision_file(tmp_path: Path) -> None:
    reference = resnet18(weights=None)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(reference.state_dict(), path)
    model = DeepLabV2(3, 18)
    report = load_backbone_weights(model.backbone, path)
    assert report.matched == report.total == len(model.backbone.state_dict())
    assert sorted(report.unused) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert "tensors loaded" in report.summary()


def test_backbone_weights_of_another_depth_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"something.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"no tensor of .*other\.pth matches"):
        load_backbone_weights(DeepLabV2(3, 18).backbone, path)
