"""UniMatch (issue 23): its pieces (the confident cross-entropy, CutMix boxes, strong views),
DeepLabv3+, and the trainer: each term in the step with its weight, the pseudo-label logs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAINING

from s4seg.training.checkpoint import load_checkpoint
from s4seg.training.config import UniMatchConfig
from s4seg.training.models import DeepLabV2, DeepLabV3Plus
from s4seg.training.unimatch import confident_ce, cutmix_box, strong_views
from s4seg.workflows.cli import main


def test_confident_ce_counts_confident_pixels_over_every_unignored_one() -> None:
    logits = torch.zeros(1, 2, 1, 4)
    labels = torch.zeros(1, 1, 4, dtype=torch.long)
    confidence = torch.tensor([[[0.99, 0.99, 0.5, 0.99]]])
    ignore = torch.tensor([[[False, False, False, True]]])
    per_pixel = torch.log(torch.tensor(2.0))  # uniform logits, two classes
    # Two confident, unignored pixels; divided by the three unignored ones, not by the two.
    got = confident_ce(logits, labels, confidence, ignore, 0.95)
    assert torch.isclose(got, 2 * per_pixel / 3)
    assert confident_ce(logits, labels, confidence, ignore, 0.999) == 0


def test_cutmix_boxes_follow_the_area_and_aspect_limits() -> None:
    torch.manual_seed(0)
    u = UniMatchConfig(cutmix_p=1.0)
    for _ in range(50):
        box = cutmix_box(64, 80, u, "cpu")
        rows, cols = box.any(1).sum().item(), box.any(0).sum().item()
        assert box.sum() == rows * cols  # one rectangle
        assert 0.015 <= box.float().mean() <= 0.42
        assert 0.25 <= cols / rows <= 4.0
    assert not cutmix_box(64, 80, UniMatchConfig(cutmix_p=0.0), "cpu").any()


def test_strong_views_take_u_prime_inside_the_box_and_u_outside() -> None:
    torch.manual_seed(1)
    # Photometric augmentations off: the view is the weak image outside, u' inside.
    u = UniMatchConfig(cutmix_p=1.0, jitter=(0, 0, 0, 0), grayscale_p=0.0, blur_p=0.0)
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)
    weak, mix = torch.zeros(2, 3, 16, 16), torch.ones(2, 3, 16, 16)
    views = strong_views(weak, mix, mean, std, u)
    assert views.boxes.any()
    inside = views.boxes[:, None].expand_as(views.images)
    assert torch.allclose(views.images[inside], torch.tensor(1.0))
    assert torch.allclose(views.images[~inside], torch.tensor(0.0))


@pytest.mark.parametrize("model", [DeepLabV3Plus(7, 18, 16), DeepLabV2(7, 18)])
def test_the_perturbed_branch_shares_the_weights_and_drops_features(model) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 3, 64, 64)
    model.train()
    logits, fp = model(x, perturbed=2)
    assert fp.shape[0] == 2 and fp.shape[1:] == logits.shape[1:]
    assert not torch.allclose(fp, logits[:2])  # dropped channels change the prediction
    model.eval()
    assert model(x).shape == logits.shape
    grouped = [p for g in model.param_groups(1e-3, 10) for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) == len({id(p) for p in grouped})


def _one_step(root: Path, out: Path, *extra: str) -> dict:
    settings = [*TINY_TRAINING, f"data.root={root}", "train.iterations=1", "train.val_every=100",
                "model.architecture=deeplabv3plus", f"train.out_dir={out}", *extra]  # fmt: skip
    assert main(["train", "unimatch", "--config", "synthetic-quick",
                 *[f"--set={s}" for s in settings]]) == 0  # fmt: skip
    return load_checkpoint(out / "last.pt")["model"]


@pytest.mark.trains
def test_the_unimatch_step_sends_each_term_with_its_weight(
    synth_root: Path, tmp_path: Path, capsys
) -> None:
    """Threshold 0: every unlabeled pixel is pseudo-labeled, so muting the strong views or the
    feature perturbation changes the update; the log shows the terms and the pseudo-labels."""
    base = ["unimatch.threshold=0"]
    full = _one_step(synth_root, tmp_path / "full", *base)
    logged = capsys.readouterr().err
    for term in ("loss_x", "loss_s1", "loss_s2", "loss_fp", "confident 1", "pl_accuracy"):
        assert term in logged, term
    for muted in ("unimatch.weight_strong=0", "unimatch.weight_fp=0"):
        other = _one_step(synth_root, tmp_path / muted.split(".")[1], *base, muted)
        assert any(not torch.equal(full[k], other[k]) for k in full), muted
    # And the same run again gives the same weights (seeded streams, views and boxes).
    again = _one_step(synth_root, tmp_path / "again", *base)
    assert all(torch.equal(full[k], again[k]) for k in full)
    # The Cityscapes recipe's OHEM labeled loss is the one the step uses when asked for.
    # (At initialisation every pixel is hard at 0.7: a low threshold drops some.)
    ohem = _one_step(synth_root, tmp_path / "ohem", *base, "unimatch.labeled_loss=ohem",
                     "unimatch.ohem_threshold=0.12", "unimatch.ohem_min_kept=100")  # fmt: skip
    assert any(not torch.equal(full[k], ohem[k]) for k in full)
