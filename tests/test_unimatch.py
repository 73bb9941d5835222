"""UniMatch (issue 23): its pieces (the confident cross-entropy, CutMix boxes, strong views),
DeepLabv3+, and the trainer: each term in the step with its weight, the pseudo-label logs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAINING

from s4seg.training.checkpoint import Checkpoint
from s4seg.training.config import UniMatchConfig
from s4seg.training.models import DeepLabV2, DeepLabV3Plus
from s4seg.training.unimatch import class_thresholds, confident_ce, cutmix_box, strong_views
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


def test_class_thresholds_follow_flexmatch_by_hand() -> None:
    """Ten unpadded pixels (one padded): class 0 confident on 6, class 1 on 2, class 2 on none,
    2 unsure. beta = sigma / max(6, 2): 1, 1/3, 0; T = beta / (2 - beta) * 0.9."""
    labels = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 2, 1, 0]])
    confidence = torch.tensor([[0.99] * 8 + [0.5, 0.5, 0.99]])
    pad = torch.tensor([[False] * 10 + [True]])
    got = class_thresholds(labels, confidence, pad, 0.9, 3)
    torch.testing.assert_close(got, torch.tensor([0.9, 0.9 * (1 / 3) / (5 / 3), 0.0]))
    # The warm-up: while most pixels are unsure (8 of 10), even the surest class is below 0.9.
    unsure = torch.tensor([[0.99, 0.99] + [0.5] * 8 + [0.99]])
    warm = class_thresholds(labels, unsure, pad, 0.9, 3)
    torch.testing.assert_close(warm[0], torch.tensor(0.9 * (2 / 8) / (2 - 2 / 8)))
    # A class the model is rarely sure of lets in pixels the fixed threshold keeps out.
    logits = torch.zeros(1, 3, 1, 11)
    fixed = confident_ce(logits, labels[:, None], confidence[:, None], pad[:, None], 0.9)
    flexible = confident_ce(
        logits, labels[:, None], confidence[:, None], pad[:, None], got[labels][:, None]
    )
    assert flexible > fixed


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
    settings = [
        *TINY_TRAINING,
        f"data.root={root}",
        "train.iterations=1",
        "train.val_every=100",
        "model.architecture=deeplabv3plus",
        f"train.out_dir={out}",
        *extra,
    ]
    assert (
        main(
            ["train", "unimatch", "--config", "synthetic-quick", *[f"--set={s}" for s in settings]]
        )
        == 0
    )
    return Checkpoint.load(out / "last.pt").model


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
    ohem = _one_step(
        synth_root,
        tmp_path / "ohem",
        *base,
        "unimatch.labeled_loss=ohem",
        "unimatch.ohem_threshold=0.12",
        "unimatch.ohem_min_kept=100",
    )
    assert any(not torch.equal(full[k], ohem[k]) for k in full)


@pytest.mark.trains
def test_flexmatch_thresholds_change_the_step(synth_root: Path, tmp_path: Path, capsys) -> None:
    """At initialisation no pixel reaches 0.95: the fixed rule trains on no unlabeled pixel,
    FlexMatch's warm-up (every class unsure, every threshold 0) on all of them."""
    base = ["model.architecture=deeplabv2"]
    fixed = _one_step(synth_root, tmp_path / "fixed", *base)
    assert "threshold_fg" not in capsys.readouterr().err
    flexible = _one_step(synth_root, tmp_path / "flex", *base, "unimatch.threshold_rule=flexmatch")
    logged = capsys.readouterr().err
    assert "confident 1 " in logged and "threshold_fg 0 " in logged, logged
    assert any(not torch.equal(fixed[k], flexible[k]) for k in fixed)


def test_pseudo_label_logs_count_foreground_and_its_recall() -> None:
    """Issue 31: what the unlabeled terms teach, by hand. Four unpadded pixels (one padded),
    background 0; truth: two foreground pixels, one of which is pseudo-labeled its class."""
    from s4seg.training.unimatch import pseudo_label_scalars

    labels = torch.tensor([[[0, 2, 3, 0, 1]]])
    confidence = torch.tensor([[[0.99, 0.99, 0.5, 0.99, 0.99]]])
    pad = torch.tensor([[[False, False, False, False, True]]])
    truth = torch.tensor([[[0, 2, 1, 0, 255]]])
    got = {
        k: float(v)
        for k, v in pseudo_label_scalars(labels, confidence, pad, truth, 0.95, 0).items()
    }
    assert got["confident"] == pytest.approx(3 / 4)  # the padded pixel counts nowhere
    assert got["confident_fg"] == pytest.approx(1 / 3)  # of the 3 confident, one foreground
    assert got["pl_accuracy"] == pytest.approx(3 / 4)
    assert got["pl_accuracy_confident"] == pytest.approx(1.0)
    assert got["pl_fg_recall"] == pytest.approx(1 / 2)
    assert got["pl_fg_recall_confident"] == pytest.approx(1 / 2)
    confident_wrong = pseudo_label_scalars(labels, torch.ones(1, 1, 5), pad, truth, 0.95, 0)
    assert float(confident_wrong["pl_fg_recall_confident"]) == pytest.approx(1 / 2)
    no_background = pseudo_label_scalars(labels, confidence, pad, truth, 0.95, None)
    assert "confident_fg" not in no_background and "pl_fg_recall" not in no_background


def test_deeplabv3plus_decodes_clean_and_dropped_features_in_one_pass() -> None:
    """Issue 31 (review U9): with nothing dropped (p=0) the perturbed logits equal the clean
    ones only when both go through the decoder's batch norm together, as the public code
    decodes them; a separate decode normalised the perturbed images on their own."""
    torch.manual_seed(0)
    model = DeepLabV3Plus(5, 18, 16).train()
    x = torch.randn(4, 3, 64, 64)
    logits, fp = model(x, perturbed=2, p=0.0)
    assert torch.allclose(fp, logits[:2], atol=1e-5)
    assert not torch.allclose(model.decode(*(t[:2] for t in model.encode(x))), logits[:2])


@pytest.mark.trains
def test_two_forwards_keep_strong_views_out_of_the_labeled_batch_norm(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 31 (review U1): ``unimatch.forward=two`` (the public order) puts [x, u_w] through
    the network, with the perturbed decode, and the strong views in a forward of their own: the
    batch-norm statistics the labeled loss sees hold no strong view. ``one``: all in one batch."""
    calls: list[tuple[int, int]] = []
    forward = DeepLabV2.forward

    def recording(self, x, perturbed=0, p=0.5):
        if self.training:  # the eval-mode forward on u' uses running statistics
            calls.append((len(x), perturbed))
        return forward(self, x, perturbed, p)

    monkeypatch.setattr(DeepLabV2, "forward", recording)
    sizes = ["train.batch_size=2", "unimatch.unlabeled_batch_size=3"]
    settings = [
        *TINY_TRAINING,
        f"data.root={synth_root}",
        "train.iterations=1",
        "train.val_every=100",
        *sizes,
    ]
    for order, expected in (("two", [(2 + 3, 2 + 3), (3 + 3, 0)]), ("one", [(3 + 2 + 6, 3)])):
        calls.clear()
        out = tmp_path / order
        assert (
            main(
                [
                    "train",
                    "unimatch",
                    "--config",
                    "synthetic-quick",
                    *[
                        f"--set={s}"
                        for s in [*settings, f"unimatch.forward={order}", f"train.out_dir={out}"]
                    ],
                ]
            )
            == 0
        )
        assert calls == expected, (order, calls)


@pytest.mark.trains
def test_loss_scale_scales_the_whole_update(synth_root: Path, tmp_path: Path) -> None:
    """``unimatch.loss_scale`` (the public final /2 at 0.5): with no weight decay, the first SGD
    step moves every weight exactly twice as far at 1.0 as at 0.5."""
    base = ["unimatch.threshold=0", "optim.weight_decay=0", "model.architecture=deeplabv2"]
    start = _one_step(synth_root, tmp_path / "zero", *base, "optim.lr=1e-12")
    half = _one_step(synth_root, tmp_path / "half", *base, "unimatch.loss_scale=0.5")
    full = _one_step(synth_root, tmp_path / "full", *base, "unimatch.loss_scale=1.0")
    moved = [
        k
        for k in start
        if start[k].is_floating_point()
        and "running" not in k
        and not torch.equal(half[k], start[k])
    ]
    assert moved
    for key in moved:
        torch.testing.assert_close(
            full[key] - start[key], 2 * (half[key] - start[key]), rtol=1e-3, atol=1e-6
        )
