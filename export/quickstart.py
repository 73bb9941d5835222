"""``s4seg quickstart``: synthetic data -> s4GAN + MLMT -> export -> publish, for the first run.

Every step is skipped when its result is already there (data, finished runs, a published
version), so a second run is quick and an interrupted one continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from s4seg.training.checkpoint import load_checkpoint
from s4seg.training.config import load_config

from .exporter import export_models
from .repository import publish, served_version

SERVED_SIZE = (128, 128)  # the synthetic images' own size


def log(message: str) -> None:
    print(f"quickstart: {message}", file=sys.stderr, flush=True)


def _train(trainer: str, data: Path, runs: Path, iterations: int | None) -> Path:
    from s4seg.training.mlmt import train_mlmt
    from s4seg.training.s4gan import train_s4gan

    out = runs / trainer
    overrides = [f"data.root={data}", f"train.out_dir={out}"]
    if iterations:
        overrides.append(f"train.iterations={iterations}")
    cfg = load_config("quickstart", overrides)
    last = out / "last.pt"
    resumed = load_checkpoint(last) if last.is_file() else None
    if resumed is not None and resumed["iteration"] >= cfg.train.iterations:
        log(f"{trainer}: {last} is complete")
        return last
    log(f"training {trainer} ({cfg.train.iterations} iterations) into {out}")
    train = train_mlmt if trainer == "mlmt" else train_s4gan
    return train(cfg, resumed)


def quickstart(
    data: Path,
    runs: Path,
    repository: Path,
    iterations: int | None = None,
    force: bool = False,
    runtime: str = "python",
) -> int:
    if served_version(repository) is not None and not force:
        log(f"{repository} already serves version {served_version(repository)} (--force to redo)")
        return served_version(repository)  # type: ignore[return-value]
    start = time.monotonic()
    if not (data / "classes.yaml").is_file():
        from s4seg.training.data.synth import write_synthetic

        log(f"writing the synthetic data set to {data}")
        write_synthetic(data)
    segmenter = _train("s4gan", data, runs, iterations)
    classifier = _train("mlmt", data, runs, iterations)
    out = runs / "export"
    log(f"exporting to {out}")
    export_models(
        str(segmenter), str(classifier), str(out), input_size=SERVED_SIZE, overwrite=True, log=log
    )
    version = publish(out, repository, runtime=runtime, log=log)
    log(f"done in {time.monotonic() - start:.0f} s: version {version} in {repository}")
    return version


def run_quickstart(args: argparse.Namespace) -> int:
    quickstart(
        Path(args.data), Path(args.runs), Path(args.repository), args.iterations, args.force,
        args.runtime,
    )  # fmt: skip
    return 0
