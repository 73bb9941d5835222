"""A run stopped and resumed ends with exactly the weights of an uninterrupted run (CPU), for
each trainer."""

from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAINING

from s4seg.training.checkpoint import Checkpoint
from s4seg.workflows.cli import main

pytestmark = pytest.mark.trains  # every test here trains a model

# What must match after resuming, per trainer (the model is the MLMT teacher).
STATE = {
    "baseline": ["model"],
    "s4gan": ["model", "discriminator"],
    "mlmt": ["model", "student"],
    "unimatch": ["model"],
}


def _train(trainer: str, args: list[str]) -> None:
    assert main(["train", trainer, "--config", "synthetic-quick", *args]) == 0


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


@pytest.mark.parametrize("trainer", ["baseline", "s4gan", "mlmt", "unimatch"])
def test_resumed_run_ends_with_the_weights_of_the_uninterrupted_run(
    trainer: str, synth_root: Path, tmp_path: Path
) -> None:
    settings = [
        *TINY_TRAINING,
        f"data.root={synth_root}",
        "train.iterations=5",
        "train.val_every=100",
        "train.snapshot_every=2",
    ]
    straight = tmp_path / "straight"
    _train(trainer, [f"--set={s}" for s in settings] + [f"--set=train.out_dir={straight}"])
    snapshot = straight / "snapshots" / "iter_000002.pt"
    assert Checkpoint.load(snapshot).iteration == 2

    # Continue from iteration 2 elsewhere, now with a loader worker process: same augmentations.
    resumed = tmp_path / "resumed"
    _train(
        trainer,
        ["--resume", str(snapshot), f"--set=train.out_dir={resumed}", "--set=data.num_workers=1"],
    )
    a = Checkpoint.load(straight / "last.pt")
    b = Checkpoint.load(resumed / "last.pt")
    assert a.iteration == b.iteration == 5
    assert b.split == a.split
    for key in STATE[trainer]:
        assert _equal(getattr(a, key), getattr(b, key)), f"{trainer}: {key} differs after resume"
    assert a.optimizer["state"].keys() == b.optimizer["state"].keys()
    for index, state in a.optimizer["state"].items():
        assert torch.equal(state["momentum_buffer"], b.optimizer["state"][index]["momentum_buffer"])
    # And the run really moved: the weights differ from those at iteration 2.
    two = Checkpoint.load(snapshot).model
    assert not _equal(two, a.model)


def test_resume_auto_continues_the_run_in_out_dir(synth_root: Path, tmp_path: Path, capsys) -> None:
    settings = [
        *TINY_TRAINING,
        f"data.root={synth_root}",
        "train.val_every=100",
        f"train.out_dir={tmp_path}",
    ]
    args = [f"--set={s}" for s in settings]
    _train("baseline", [*args, "--set=train.iterations=2", "--resume", "auto"])  # nothing yet
    at_two = Checkpoint.load(tmp_path / "last.pt")
    assert at_two.iteration == 2
    # A finished run extended on resume: the poly schedule is recomputed for 3 iterations, so
    # the learning rate is no longer 0 and the extra iteration moves the weights.
    _train("baseline", ["--set=train.iterations=3", "--resume", "auto", *args])
    assert "resumed from iteration 2" in capsys.readouterr().err
    at_three = Checkpoint.load(tmp_path / "last.pt")
    assert at_three.iteration == 3
    head = "classifier.branches.0.weight"  # a weight, not a BN statistic (those move at lr 0)
    assert not torch.equal(at_two.model[head], at_three.model[head])


# Where a Ctrl-C lands in the middle of a step: between s4GAN's S and D updates, and inside
# MLMT's teacher update (issue 20, item 7).
MID_STEP = {"s4gan": "discriminator_loss", "mlmt": "update_teacher"}


@pytest.mark.parametrize("trainer", ["s4gan", "mlmt"])
def test_ctrl_c_in_the_middle_of_a_step_saves_a_whole_iteration(
    trainer: str, synth_root: Path, tmp_path: Path, monkeypatch
) -> None:
    import importlib
    import os
    import signal

    settings = [
        *TINY_TRAINING,
        f"data.root={synth_root}",
        "train.iterations=5",
        "train.val_every=100",
    ]
    straight = tmp_path / "straight"
    _train(trainer, [f"--set={s}" for s in settings] + [f"--set=train.out_dir={straight}"])

    module = importlib.import_module(f"s4seg.training.{trainer}")
    real = getattr(module, MID_STEP[trainer])
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # in iteration 3, with part of the step done
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, MID_STEP[trainer], interrupted)
    stopped = tmp_path / "stopped"
    args = [f"--set={s}" for s in settings] + [f"--set=train.out_dir={stopped}"]
    assert main(["train", trainer, "--config", "synthetic-quick", *args]) == 130
    assert Checkpoint.load(stopped / "last.pt").iteration == 3  # the step was finished
    monkeypatch.setattr(module, MID_STEP[trainer], real)
    _train(trainer, ["--resume", str(stopped / "last.pt"), f"--set=train.out_dir={stopped}"])
    a, b = Checkpoint.load(straight / "last.pt"), Checkpoint.load(stopped / "last.pt")
    for key in STATE[trainer]:
        assert _equal(getattr(a, key), getattr(b, key)), (
            f"{trainer}: {key} differs after an interrupted step"
        )
