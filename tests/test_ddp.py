"""Every trainer under torchrun: 2 CPU processes (gloo), rank 0 saves, resume exact per rank."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAINING

from s4seg.training.checkpoint import Checkpoint

pytestmark = pytest.mark.trains  # every test here trains a model


def torchrun(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``s4seg ARGS`` on two CPU ranks; each rank also saves its final weights (rank<N>.pt)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        str(Path(__file__).with_name("ddp_rank_weights.py")),
        *args,
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_process_ddp_on_cpu(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    settings = [
        *TINY_TRAINING,
        f"data.root={synth_root}",
        "train.iterations=3",
        "train.val_every=100",
        f"train.out_dir={out}",
    ]
    done = torchrun(
        "train", "baseline", "--config", "synthetic-quick", *[f"--set={s}" for s in settings]
    )
    assert "world size 2" in done.stderr
    assert done.stderr.count("training supervised baseline") == 1  # only rank 0 logs
    payload = Checkpoint.load(out / "last.pt")
    assert payload.iteration == 3
    assert all(torch.isfinite(v).all() for v in payload.model.values() if v.is_floating_point())
    # DDP really ran: the ranks trained on different shards, yet hold the same weights
    # (gradients averaged); two independent processes would have drifted apart. (Batch-norm
    # running statistics are each rank's own after its last forward, as DDP leaves them.)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    weights = [k for k in ranks[0] if not k.endswith(("running_mean", "running_var", "tracked"))]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in weights)
    assert all(torch.equal(ranks[0][k], payload.model[k]) for k in ranks[0])


# What each trainer checkpoints besides the optimiser: its networks.
NETWORKS = {
    "s4gan": ("model", "discriminator"),
    "unimatch": ("model",),
    "mlmt": ("model", "student"),
    "unimatch-v2": ("model", "student"),
}
# The config each trains with (UniMatch V2: the tiny ViT, crops on its patch grid).
CONFIGS = {"unimatch-v2": "synthetic-vit-tiny"}
EXTRA = {"unimatch-v2": ["data.crop_size=[56, 56]", "unimatch.unlabeled_batch_size=2"]}


@pytest.mark.parametrize("trainer", sorted(NETWORKS))
def test_ddp_resume_restores_each_ranks_own_rng(
    trainer: str, synth_root: Path, tmp_path: Path
) -> None:
    """Issue 20, item 10 and issue 24: each rank draws its own random numbers (augmentation,
    s4GAN's discriminator dropout, UniMatch's CutMix boxes and feature dropout); a resumed
    world-size-2 run ends with the weights of the uninterrupted one only if every rank gets its
    own RNG back."""
    settings = [
        *TINY_TRAINING,
        f"data.root={synth_root}",
        "train.iterations=4",
        "train.val_every=100",
        "train.snapshot_every=2",
        *EXTRA.get(trainer, []),
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    done = torchrun(
        "train",
        trainer,
        "--config",
        CONFIGS.get(trainer, "synthetic-quick"),
        *[f"--set={s}" for s in [*settings, f"train.out_dir={straight}"]],
    )
    assert "world size 2" in done.stderr
    snapshot = Checkpoint.load(straight / "snapshots" / "iter_000002.pt")
    per_rank = snapshot.rng_per_rank
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])
    torchrun(
        "train",
        trainer,
        "--resume",
        str(straight / "snapshots" / "iter_000002.pt"),
        f"--set=train.out_dir={resumed}",
    )
    a, b = Checkpoint.load(straight / "last.pt"), Checkpoint.load(resumed / "last.pt")
    assert a.iteration == b.iteration == 4
    for key in NETWORKS[trainer]:
        mine, theirs = getattr(a, key), getattr(b, key)
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), f"{key} differs"
    # Every rank ends with the same exported network, batch-norm statistics included: the
    # gradients are averaged and, for MLMT's teacher, the statistics too before its EMA update
    # (UniMatch V2's teacher: an EMA of the same averaged student on every rank).
    ranks = [torch.load(straight / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    if trainer in ("mlmt", "unimatch-v2"):
        assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
        assert all(torch.equal(ranks[0][k], a.model[k]) for k in ranks[0])


def test_a_study_cell_as_an_indexed_job_under_torchrun(synth_root: Path, tmp_path: Path) -> None:
    """Issue 24: a study cell is a torchrun job (pod ``$JOB_COMPLETION_INDEX`` of an Indexed
    Job): both ranks train, rank 0 evaluates and keeps the study's books."""
    out = tmp_path / "study"
    sets = [*TINY_TRAINING, f"data.root={synth_root}", "train.iterations=4", "train.val_every=100"]
    done = torchrun(
        "study",
        "--out",
        str(out),
        "--config",
        "synthetic-quick",
        "--methods",
        "baseline,s4gan",
        "--labels",
        "3",
        "--seeds",
        "0",
        "--cell",
        "auto",
        *[f"--set={s}" for s in sets],
        env={"JOB_COMPLETION_INDEX": "1"},
    )
    assert "world size 2" in done.stderr
    results = sorted(p.parent.name for p in (out / "runs").glob("*/result.json"))
    assert results == ["s4gan-3-s0"]  # cell 1 of [baseline-3-s0, s4gan-3-s0]
    payload = Checkpoint.load(out / "runs" / "s4gan-3-s0" / "last.pt")
    assert payload.iteration == 4 and len(payload.rng_per_rank) == 2
    log = (out / "study.log").read_text()
    assert log.count("s4gan-3-s0: training (4 iterations)") == 1  # rank 0's books only
    assert [p.name for p in (out / "splits").iterdir()] == ["3-s0.json"]
