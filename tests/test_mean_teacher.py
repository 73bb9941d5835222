"""Mean Teacher: the EMA update and the consistency ramp formulas; multi-label metrics."""

import math

import numpy as np
import pytest
import torch

from s4seg.training.mean_teacher import consistency_weight, ema_decay, update_teacher
from s4seg.training.multilabel_metrics import average_precision, roc_curve


def test_ema_decay_schedule() -> None:
    assert ema_decay(0) == 0.0  # the teacher starts as a copy of the student
    assert ema_decay(9) == pytest.approx(0.9)
    assert ema_decay(10_000) == 0.999


def test_teacher_update_formula() -> None:
    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = teacher.weight.detach().clone()
    update_teacher(teacher, student, decay=0.75)
    assert torch.allclose(teacher.weight, 0.75 * before + 0.25 * student.weight)
    update_teacher(teacher, student, decay=ema_decay(0))
    assert torch.equal(teacher.weight, student.weight)


def test_teacher_batch_norm_statistics_are_averaged_not_copied() -> None:
    teacher, student = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    student.train()(torch.randn(4, 3, 5, 5) * 3 + 2)  # the student's stats move, the teacher's not
    before = teacher.running_mean.clone()
    update_teacher(teacher, student, decay=0.75)
    assert torch.allclose(teacher.running_mean, 0.75 * before + 0.25 * student.running_mean)
    assert not torch.allclose(teacher.running_mean, student.running_mean)
    assert teacher.num_batches_tracked == student.num_batches_tracked  # counters are copied
    update_teacher(teacher, student, decay=0.75, buffers="copy")
    assert torch.equal(teacher.running_var, student.running_var)
    own = teacher.running_mean.clone()
    student.train()(torch.randn(4, 3, 5, 5) - 5)
    update_teacher(teacher, student, decay=0.75, buffers="own")  # statistics left as they are
    assert torch.equal(teacher.running_mean, own)


@pytest.mark.trains
def test_teacher_bn_modes_in_the_trainer(tmp_path) -> None:
    """Issue 20, item 8: "ema" runs the teacher in eval mode, so its statistics are exactly the
    EMA of the student's (after two steps, decays 0 then 0.5: half the student's after each);
    "own" runs it in train mode, so its statistics come from its own passes over the weak
    views."""
    from helpers import TINY_TRAINING

    from s4seg.training.checkpoint import Checkpoint
    from s4seg.training.data.synth import write_synthetic
    from s4seg.workflows.cli import main

    root = write_synthetic(
        tmp_path / "synth", seed=1, num_train=16, num_val=2, num_unlabeled=2, size=48
    )
    stats = {}
    for mode in ("ema", "own"):
        settings = [
            *TINY_TRAINING,
            f"data.root={root}",
            "train.iterations=2",
            "train.snapshot_every=1",
            "train.val_every=100",
            f"train.out_dir={tmp_path / mode}",
            f"mlmt.teacher_bn={mode}",
        ]
        assert (
            main(
                ["train", "mlmt", "--config", "synthetic-quick", *[f"--set={s}" for s in settings]]
            )
            == 0
        )
        first = Checkpoint.load(tmp_path / mode / "snapshots" / "iter_000001.pt")
        last = Checkpoint.load(tmp_path / mode / "last.pt")
        key = next(k for k in last.model if k.endswith("running_mean"))
        ema = 0.5 * first.student[key] + 0.5 * last.student[key]
        stats[mode] = torch.allclose(last.model[key], ema, atol=1e-6)
    assert stats == {"ema": True, "own": False}


def test_consistency_is_eq6_squared_distance_summed_over_classes() -> None:
    from s4seg.training.mlmt import consistency_loss

    student, teacher = torch.zeros(2, 4), torch.full((2, 4), 100.0)  # sigmoids 0.5 and 1.0
    assert consistency_loss(student, teacher, "mse").item() == pytest.approx(4 * 0.25)
    assert consistency_loss(student, teacher, "mse_mean").item() == pytest.approx(0.25)


def test_consistency_ramp() -> None:
    assert consistency_weight(5, burn_in=10, rampup=20, weight=1.0) == 0.0
    assert consistency_weight(10, burn_in=10, rampup=20, weight=1.0) == pytest.approx(math.exp(-5))
    assert consistency_weight(20, 10, 20, 2.0) == pytest.approx(2.0 * math.exp(-5 * 0.25))
    assert consistency_weight(30, 10, 20, 2.0) == pytest.approx(2.0)
    assert consistency_weight(99, 10, 20, 2.0) == pytest.approx(2.0)


def test_average_precision_and_roc_by_hand() -> None:
    targets = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.1])  # ranks: hit, miss, hit, miss
    assert average_precision(targets, scores) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert average_precision(np.zeros(3), np.ones(3)) is None
    _, _, auc = roc_curve(targets, scores)
    assert auc == pytest.approx(0.75)  # 3 of the 4 positive/negative pairs ordered right
    _, _, perfect = roc_curve(np.array([1, 1, 0]), np.array([0.9, 0.8, 0.1]))
    assert perfect == pytest.approx(1.0)
