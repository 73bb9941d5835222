"""The handlers of the commands that drive several stages: ``quickstart``, ``doctor``, ``serve``
(which builds the demo model on a first run), ``evaluate`` (one command over three pipelines:
PyTorch, ONNX Runtime, Triton) and every ``bench``. The one place below the parsers
(``workflows/parsers.py``) where flags are read: each handler turns them into a typed request
and imports its code when it runs, so ``s4seg --help`` and the serving commands never import
torch."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from s4seg.serving.commands import settings_from

if TYPE_CHECKING:
    from .study import StudyRequest


T = TypeVar("T")


def request_of(cls: type[T], args: argparse.Namespace) -> T:
    """A command's typed request (a dataclass) from its flags, field by field by name; the
    one place below the parser where flags are read."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})  # type: ignore[arg-type]


def dispatch(args: argparse.Namespace) -> int:
    """The parsed command's handler (every stage's ``add_parsers`` sets one)."""
    return args.handler(args) or 0


def run_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import quickstart

    quickstart(
        Path(args.data),
        Path(args.runs),
        Path(args.repository),
        args.iterations,
        args.force,
        args.runtime,
    )
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor

    return doctor(args.env_only, Path(args.out) if args.out else None, args.device)


def run_serve(args: argparse.Namespace) -> int:
    from s4seg.serving.serve import serve

    from .quickstart import first_run

    return serve(settings_from(args), first_run=None if args.no_quickstart else first_run)


def run_evaluate(args: argparse.Namespace) -> int:
    """``--segmenter``: PyTorch (the training stage's); ``--onnx``/``--triton``: the export
    (the clients')."""
    if args.segmenter:
        from s4seg.training.commands import run_evaluate as evaluate_checkpoint

        return evaluate_checkpoint(args)
    from s4seg.clients.evaluate import run_evaluate as evaluate_export

    return evaluate_export(args)


def study_request(args: argparse.Namespace) -> StudyRequest:
    """``s4seg study``'s flags as the study's request (the one place its flags are read)."""
    from .study import StudyRequest

    split = lambda text: text.split(",") if text else None  # noqa: E731
    return StudyRequest(
        out=Path(args.out),
        preset=args.preset,
        config=args.config,
        methods=split(args.methods),
        labels=split(args.labels),
        seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None,
        overrides=args.overrides,
        jobs=args.jobs,
        cell=args.cell,
        device=args.device,
        dry_run=args.dry_run,
        report=args.report,
        step_seconds=args.step_seconds,
    )


def step_times(text: str) -> dict[str, float]:
    """``baseline=0.21,s4gan=0.45``: seconds per iteration by trainer."""
    try:
        pairs = (item.split("=") for item in text.split(","))
        return {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"give TRAINER=SECONDS pairs, e.g. baseline=0.21,s4gan=0.45, not {text!r}"
        ) from None


def run_study(args: argparse.Namespace) -> int:
    from .study import run_study as study

    return study(study_request(args))


def bench_handler(module: str, request: str, function: str) -> Callable[[argparse.Namespace], int]:
    """The handler of ``s4seg bench <module>``: its typed request from the flags, then the run
    (imported when run: the benchmarks import torch and onnxruntime)."""

    def run(args: argparse.Namespace) -> int:
        bench = importlib.import_module(f"{__package__}.bench.{module}")
        getattr(bench, function)(request_of(getattr(bench, request), args))
        return 0

    return run


def run_bench_serve(args: argparse.Namespace) -> int:
    from .bench.serve import bench_serve
    from .bench.serve_results import ServeBenchRequest

    request = ServeBenchRequest(
        repository=Path(args.repository),
        images=args.images,
        requests=args.requests,
        concurrency=args.concurrency,
        hop_concurrency=args.hop_concurrency,
        size_repeats=args.size_repeats,
        variants=args.variants,
        window=args.window,
        windows=args.windows,
        log_dir=Path(args.log_dir),
        write=args.write,
    )
    bench_serve(request)
    return 0
