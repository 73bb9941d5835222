"""The trainers, in one place: each one's name, what it produces and how to run it. The command
line, quickstart, doctor and the benchmarks all pick a trainer here, by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

Train = Callable[..., Path]  # (cfg, resumed=None, log=print) -> the last checkpoint


def _baseline() -> Train:
    from .baseline import train_baseline

    return train_baseline


def _s4gan() -> Train:
    from .s4gan import train_s4gan

    return train_s4gan


def _unimatch() -> Train:
    from .unimatch import train_unimatch

    return train_unimatch


def _unimatch_v2() -> Train:
    from .unimatch_v2 import train_unimatch_v2

    return train_unimatch_v2


def _mlmt() -> Train:
    from .mlmt import train_mlmt

    return train_mlmt


@dataclass(frozen=True)
class Trainer:
    name: str
    help: str
    produces: Literal["segmenter", "classifier"]  # the checkpoint's kind
    _load: Callable[[], Train]  # imported when it runs: `s4seg --help` never imports torch

    def train(self, cfg: Any, resumed: Checkpoint | None = None, **options: Any) -> Path:
        return self._load()(cfg, resumed, **options)

    def run(
        self,
        cfg: Any,
        resume: str | Path | None = "auto",
        overrides: Sequence[str] | None = None,
        **options: Any,
    ) -> tuple[Path, bool]:
        """Train in ``cfg.train.out_dir``: the one way a run starts or continues (the command
        line, studies, doctor). ``resume``: ``"auto"`` continues from the folder's ``last.pt``
        when there is one, a path from that checkpoint, None starts afresh. A continued run
        keeps the configuration it started with, ``overrides`` applied on top (more
        iterations, say); without overrides, ``cfg`` as given. Returns the last checkpoint and
        whether anything was trained (False: it was already complete)."""
        from .checkpoint import Checkpoint
        from .config import apply_overrides, build_config

        last = Path(cfg.train.out_dir) / "last.pt"
        path = last if resume == "auto" else (Path(resume) if resume else None)
        resumed = None
        if path is not None and (resume != "auto" or path.is_file()):
            resumed = Checkpoint.load(path, kind=self.produces)
            if overrides is not None:
                cfg = build_config(apply_overrides(resumed.config, list(overrides)))
            if resumed.iteration >= cfg.train.iterations:
                return path, False
        return self.train(cfg, resumed, **options), True


TRAINERS: dict[str, Trainer] = {
    t.name: t
    for t in (
        Trainer(
            "baseline",
            "supervised DeepLabv2 on the labeled part only (the paper's DeepLabv2 rows)",
            "segmenter",
            _baseline,
        ),
        Trainer(
            "s4gan",
            "s4GAN: DeepLabv2 as the generator of a GAN (CE + feature matching + self-training)",
            "segmenter",
            _s4gan,
        ),
        Trainer(
            "unimatch",
            "UniMatch: weak-to-strong consistency with feature perturbation (CVPR 2023)",
            "segmenter",
            _unimatch,
        ),
        Trainer(
            "unimatch-v2",
            "UniMatch V2: EMA teacher, two strong views with complementary dropout (on a ViT)",
            "segmenter",
            _unimatch_v2,
        ),
        Trainer(
            "mlmt",
            "MLMT: the Mean-Teacher multi-label classifier that gates the segmenter's classes",
            "classifier",
            _mlmt,
        ),
    )
}
