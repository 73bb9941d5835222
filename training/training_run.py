"""The skeleton every trainer shares, its step aside: resume, the data streams, the cadence of log
lines, validation and checkpoints, one-dict checkpoints with the RNG state, and saving what was
done when a run stops early.

A trainer subclasses ``TrainingRun``: it builds its networks, optimiser and scheduler, sets the
attributes declared below, implements ``validate`` and ``summary``, and hands its step to
``loop``. ``segmenter_run.py`` (baseline, s4GAN) and ``mlmt.py`` are the two subclasses.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from s4seg.errors import CheckpointError, S4segError
from s4seg.layouts import DataLayout

from .checkpoint import Checkpoint, CheckpointKind, restore_rng_state, rng_state
from .config import Config
from .data.classification import MultiLabelDataset
from .data.dataset import SegmentationDataset
from .data.sampler import ResumableSampler
from .data.split import Split
from .progress import LoaderClock, Progress
from .run_support import Log, seed_everything
from .runtime import Runtime
from .schedules import resync

# What a step returns: tensors stay on the device until a log line needs them (no per-step sync).
Scalars = dict[str, torch.Tensor | float]


class InterruptAtBoundary:
    """Ctrl-C during a step is held until the step ends, so that what is saved is one whole
    iteration (weights, optimisers, schedules and RNG of the same step). A second Ctrl-C
    interrupts at once, and nothing is saved mid-step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Callable[[int, FrameType | None], Any] | int | None = None

    def __enter__(self) -> InterruptAtBoundary:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class StopAtBoundary(KeyboardInterrupt):
    """Ctrl-C that was held until an iteration ended: the state is whole and is saved."""


def normalization(mean: Sequence[float], std: Sequence[float]) -> dict:
    """How the model's input pixels were normalised (the checkpoint's recipe for export)."""
    return {"mean": list(mean), "std": list(std), "channel_order": "RGB", "pixel_scale": 1 / 255}


class TrainingRun:
    """One training run of one trainer; ``extra_state`` adds the trainer's own checkpoint
    entries."""

    kind: CheckpointKind
    # Set by the subclass before ``loop``:
    arch: dict  # what rebuilds the model (checked on resume)
    model: nn.Module  # what the checkpoint's "model" holds: the network that is exported
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    layout: DataLayout
    split: Split
    normalization: dict

    def __init__(
        self, cfg: Config, runtime: Runtime, trainer: str, resumed: Checkpoint | None, log: Log
    ) -> None:
        if resumed is not None and resumed.trainer != trainer:
            raise CheckpointError(
                f"checkpoint was written by the {resumed.trainer} trainer, not {trainer}"
            )
        self.cfg, self.runtime, self.trainer, self.resumed, self.log = (
            cfg,
            runtime,
            trainer,
            resumed,
            log,
        )
        self.out_dir = Path(cfg.train.out_dir or f"runs/{trainer}")
        self.extra_state: Callable[[], dict[str, Any]] = dict
        seed_everything(cfg.train.seed + runtime.rank)
        self.start = 0
        self.metrics: dict[str, Any] = {}
        self.writer: SummaryWriter | None = None
        self.loader_clock = LoaderClock()

    # -- building and resuming (called by the subclass's __init__) -------------------------------
    def check_resumed_arch(self) -> None:
        if self.resumed and self.resumed.arch != self.arch:
            raise CheckpointError(
                f"checkpoint architecture {self.resumed.arch} differs from the config's {self.arch}"
            )

    def restore_progress(self) -> None:
        """Optimiser, schedule, iteration and metrics of the resumed run (its weights are the
        subclass's to load, first)."""
        assert self.resumed is not None
        self.optimizer.load_state_dict(self.resumed.optimizer)
        self.scheduler.load_state_dict(self.resumed.scheduler)
        resync(self.scheduler)
        self.start, self.metrics = self.resumed.iteration, dict(self.resumed.metrics)

    # -- helpers for the trainers ---------------------------------------------------------------
    def log_main(self, message: str) -> None:
        if self.runtime.is_main:
            self.log(message)

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel under torchrun, the module itself otherwise."""
        if not self.runtime.distributed:
            return module
        device_ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    @torch.no_grad()
    def average_buffers(self, *modules: nn.Module) -> None:
        """Average the floating-point buffers (batch-norm statistics) over the ranks, in one
        all-reduce; nothing to do in one process."""
        if not self.runtime.distributed:
            return
        buffers = [b for m in modules for b in m.buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([b.reshape(-1).float() for b in buffers])
        dist.all_reduce(flat)
        flat /= self.runtime.world_size
        offset = 0
        for buffer in buffers:
            count = buffer.numel()
            buffer.copy_(flat[offset : offset + count].view_as(buffer))
            offset += count

    def batches(
        self, dataset: SegmentationDataset | MultiLabelDataset, stream: int, batch_size: int
    ) -> Iterator[dict]:
        """Endless batches of one data stream, continuing where the run stopped.

        Each stream (labeled, unlabeled, the second labeled stream of s4GAN) has its own
        seeded order, so the streams are independent and each resumes exactly.
        """
        seed = self.cfg.train.seed + 1_000_003 * stream
        runtime = self.runtime
        sampler = ResumableSampler(
            len(dataset),
            seed=seed,
            rank=runtime.rank,
            world_size=runtime.world_size,
            start=self.start * batch_size * runtime.world_size,
        )
        workers = self.cfg.data.num_workers
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=runtime.device.type == "cuda",
            drop_last=True,
            persistent_workers=workers > 0,
            # Our own generator: making the loader must not consume the global RNG we checkpoint.
            generator=torch.Generator().manual_seed(seed),
        )
        return self.loader_clock.timed(iter(loader))

    # -- what the trainer adds ------------------------------------------------------------------
    def summary(self) -> str:
        """The rest of the "training ..." line: model, data, device."""
        raise NotImplementedError

    def validate(self, done: int) -> None:
        """Evaluate on the validation set, update ``metrics``, write TensorBoard and log."""
        raise NotImplementedError

    def on_log(self, done: int, scalars: dict[str, float]) -> None:
        """Hook for trainers that keep their own history (s4GAN's D-score curves)."""

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint(self, iteration: int, rng_per_rank: list[dict] | None = None) -> Checkpoint:
        layout = self.layout
        return Checkpoint(
            kind=self.kind,
            trainer=self.trainer,
            arch=self.arch,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            iteration=iteration,
            rng=rng_state(),
            # Under torchrun each rank draws its own numbers (seeded seed + rank): every rank's
            # state, so that each resumes its own (world size checked on resume).
            rng_per_rank=rng_per_rank or None,
            config=self.cfg.to_dict(),
            split=self.split.as_dict(),
            classes=list(layout.classes),
            palette=[list(c) for c in layout.palette],
            background_index=layout.background_index,
            normalization=self.normalization,
            metrics=self.metrics,
            **self.extra_state(),
        )

    def save(self, name: str, iteration: int, rng_per_rank: list[dict] | None = None) -> Path:
        return self.checkpoint(iteration, rng_per_rank).save(self.out_dir / name)

    def gather_rng(self) -> list[dict] | None:
        """Every rank's RNG state on every rank (a collective: all ranks call it together)."""
        if not self.runtime.distributed:
            return None
        states: list[Any] = [None] * self.runtime.world_size
        dist.all_gather_object(states, rng_state())
        return states

    def _stop_requested(self, requested: bool) -> bool:
        """Whether any rank was asked to stop (all ranks stop after the same iteration)."""
        if not self.runtime.distributed:
            return requested
        flag = torch.tensor([float(requested)], device=self.runtime.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # -- the loop -------------------------------------------------------------------------------
    def loop(self, step: Callable[[int], Scalars], description: str) -> Path:
        """Run ``step(iteration)`` from the start (or resume point) to the end; return last.pt."""
        self._resume_rng()
        if self.runtime.is_main:
            self._open_outputs()
            self.log(f"training {description}: {self.summary()}")
        self.progress = Progress(
            self.cfg.train.iterations, self.start, enabled=self.runtime.is_main
        )
        completed = self.start
        try:
            with InterruptAtBoundary() as interrupt:
                for iteration in range(self.start, self.cfg.train.iterations):
                    scalars = step(iteration)
                    completed = iteration + 1
                    self._after_step(completed, scalars)
                    if self._stop_requested(interrupt.requested):
                        raise StopAtBoundary
        except (S4segError, StopAtBoundary) as stop:
            # Lose nothing: keep the progress made so far (a data error is raised while a step
            # fetches its batches, before it changes anything), then report the problem.
            rng = self.gather_rng() if isinstance(stop, StopAtBoundary) else None
            if self.runtime.is_main and completed > self.start:
                path = self.save("last.pt", completed, rng)
                self.log(f"stopped at iteration {completed}; state saved to {path} (--resume it)")
            raise
        except KeyboardInterrupt:
            self.log_main(
                f"interrupted twice, in the middle of iteration {completed + 1}: nothing saved "
                "mid-step (resume from the last checkpoint)"
            )
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
        if self.runtime.is_main:
            (self.out_dir / "metrics.json").write_text(json.dumps(self.metrics, indent=1) + "\n")
        return self.out_dir / "last.pt"

    def _resume_rng(self) -> None:
        if self.resumed:
            # Last, after every module and stream is built: the RNG continues exactly where it
            # was saved, each rank's its own.
            per_rank = self.resumed.rng_per_rank
            rank, world = self.runtime.rank, self.runtime.world_size
            if per_rank and len(per_rank) == world:
                restore_rng_state(per_rank[rank])
            else:
                if world > 1:
                    self.log_main(
                        f"the checkpoint holds the RNG of {len(per_rank) if per_rank else 1} "
                        f"rank(s), this run has {world}: ranks continue from rank 0's state "
                        "(not exact)"
                    )
                restore_rng_state(self.resumed.rng)
            self.log_main(f"resumed from iteration {self.start}")

    def _open_outputs(self) -> None:
        """The run's folder: its config and split (to rerun it), and TensorBoard."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.yaml").write_text(
            yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
        )
        self.split.save(self.out_dir / "split.json")
        self.writer = SummaryWriter(
            str(self.out_dir / "tensorboard"), purge_step=self.start or None
        )

    def _after_step(self, done: int, step_scalars: Scalars) -> None:
        cfg = self.cfg.train
        checkpoint = done % cfg.checkpoint_every == 0 or done == cfg.iterations
        snapshot = bool(cfg.snapshot_every and done % cfg.snapshot_every == 0)
        rng = self.gather_rng() if checkpoint or snapshot else None  # every rank takes part
        if not self.runtime.is_main:
            return
        if done % cfg.log_every == 0 or done == self.start + 1:
            self._log_step(done, step_scalars)
        if done % cfg.val_every == 0 or done == cfg.iterations:
            self.validate(done)
        if checkpoint:
            self.save("last.pt", done, rng)
        if snapshot:
            self.save(f"snapshots/iter_{done:06d}.pt", done, rng)

    def _log_step(self, done: int, step_scalars: Scalars) -> None:
        assert self.writer is not None
        scalars = {name: float(value) for name, value in step_scalars.items()}  # syncs here
        lr = self.optimizer.param_groups[0]["lr"]
        data_wait = self.loader_clock.share_since_last()
        for name, value in {**scalars, "lr": lr}.items():
            self.writer.add_scalar(f"train/{name}", value, done)
        self.writer.add_scalar("perf/data_wait_share", data_wait, done)
        self.progress.report(done, **scalars, lr=lr, data_wait=f"{100 * data_wait:.0f}%")
        self.on_log(done, scalars)
