"""The trainer under torchrun: 2 CPU processes (gloo), rank 0 saves."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import TINY_TRAINING
from s4seg.training.checkpoint import load_checkpoint


def test_two_process_ddp_on_cpu(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    settings = [
        *TINY_TRAINING,
        f"data.root={synth_root}",
        "train.iterations=3",
        "train.val_every=100",
        f"train.out_dir={out}",
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "--no-python",
        str(Path(sys.executable).parent / "s4seg"),
        "train",
        "baseline",
        "--config",
        "synthetic-quick",
        *[f"--set={s}" for s in settings],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world size 2" in done.stderr
    assert done.stderr.count("training supervised baseline") == 1  # only rank 0 logs
    payload = load_checkpoint(out / "last.pt")
    assert payload["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())
