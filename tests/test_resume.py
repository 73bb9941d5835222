"""A run stopped and resumed ends with exactly the weights of an uninterrupted run (CPU)."""

from pathlib import Path

import torch
from helpers import TINY_TRAINING
from s4seg.training.checkpoint import load_checkpoint

from s4seg.cli import main


def _train(args: list[str]) -> None:
    assert main(["train", "baseline", "--config", "synthetic-quick", *args]) == 0


def test_resumed_run_ends_with_the_weights_of_the_uninterrupted_run(
    synth_root: Path, tmp_path: Path
) -> None:
    settings = [
        *TINY_TRAINING,
        f"data.root={synth_root}",
        "train.iterations=5",
        "train.val_every=100",
        "train.snapshot_every=2",
    ]
    straight = tmp_path / "straight"
    _train([f"--set={s}" for s in settings] + [f"--set=train.out_dir={straight}"])
    snapshot = straight / "snapshots" / "iter_000002.pt"
    assert load_checkpoint(snapshot)["iteration"] == 2

    # Continue from iteration 2 elsewhere, now with a loader worker process: same augmentations.
    resumed = tmp_path / "resumed"
    _train(
        ["--resume", str(snapshot), f"--set=train.out_dir={resumed}", "--set=data.num_workers=1"]
    )
    a = load_checkpoint(straight / "last.pt")
    b = load_checkpoint(resumed / "last.pt")
    assert a["iteration"] == b["iteration"] == 5
    assert b["split"] == a["split"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    momentum_a = a["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum_a, b["optimizer"]["state"][0]["momentum_buffer"])
    # And the run really moved: the weights differ from those at iteration 2.
    two = load_checkpoint(snapshot)["model"]
    assert any(not torch.equal(two[k], a["model"][k]) for k in a["model"])
