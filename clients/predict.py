"""``s4seg predict``: batch offline inference over a folder or a list of images.

Streams the inputs through a bounded pool of worker processes, each image under a deadline (past
it, the image fails and its worker is replaced: ``clients/workers.py``), writes each output
atomically (a temporary name renamed into place, so an interrupted run leaves no half-written
file), skips outputs that already exist (rerun to resume), never writes outside the output
folder, and lists every failure with its reason at the end.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from s4seg.atomic import write_atomic
from s4seg.cluster import AUTO, job_count, job_index
from s4seg.errors import S4segError
from s4seg.imaging import IMAGE_SUFFIXES

from .workers import (
    ImageFailed,
    ProcessExpired,
    ProcessPool,
    SegmenterFactory,
    WorkerLoadError,
    segment_in_worker,
    start_pool,
)

SUFFIX = {"png": ".png", "overlay": "_overlay.png", "json": ".json"}


def output_suffix(format: str, encoding: str | None = None) -> str:
    """``photo.jpg`` -> ``photo.jpg.png``, ``photo.jpg_overlay.jpeg``, ``photo.jpg.json``."""
    if format == "overlay" and encoding:
        return f"_overlay.{encoding}"
    return SUFFIX[format]


@dataclass
class Job:
    source: Path
    relative: Path  # where the output goes, relative to the output folder (no suffix)


@dataclass
class Report:
    done: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def parse_shard(text: str | None, count_given: int | None = None) -> tuple[int, int]:
    """``i/n``, or ``auto``: the index of a Kubernetes Indexed Job's pod, the count from
    ``--shard-count`` or the job's environment (``s4seg.cluster``)."""
    if not text:
        return 0, 1
    if text == AUTO:
        index, count = job_index("--shard"), job_count("--shard", count_given)
    else:
        try:
            index, count = (int(v) for v in text.split("/"))
        except ValueError:
            raise S4segError(
                f"--shard must look like i/n (e.g. 0/4) or auto, not {text!r}"
            ) from None
    if not (count >= 1 and 0 <= index < count):
        raise S4segError(f"--shard {text}: need 0 <= i < n (here {index}/{count})")
    return index, count


def safe_relative(path: Path) -> Path | None:
    """A path to place under the output folder: no absolute part, no '..'."""
    parts = [p for p in path.parts if p not in ("", ".", "/")]
    if any(p == ".." for p in parts) or not parts:
        return None
    return Path(*parts)


def list_jobs(source: str, shard: tuple[int, int]) -> tuple[list[Job], list[tuple[str, str]]]:
    """The images of a folder (recursively) or of a list file, sorted, this shard's share."""
    root = Path(source)
    rejected: list[tuple[str, str]] = []
    if root.is_dir():
        paths = sorted(
            p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        entries = [(p, p.relative_to(root)) for p in paths]
        base = root.resolve()
        kept = []
        for path, relative in entries:
            # A symlink that leads out of the input folder is not followed.
            if not path.resolve().is_relative_to(base):
                rejected.append((str(path), "symlink out of the input folder"))
                continue
            kept.append((path, relative))
        entries = kept
    elif root.is_file():
        lines = [line.strip() for line in root.read_text().splitlines()]
        listed = [Path(line) for line in lines if line and not line.startswith("#")]
        entries = []
        for path in listed:
            full = path if path.is_absolute() else root.parent / path
            inside = safe_relative(path if not path.is_absolute() else Path(*path.parts[1:]))
            if inside is None:
                rejected.append((str(path), "path escapes the output folder ('..')"))
                continue
            entries.append((full, inside))
    else:
        raise S4segError(f"--input {source} is neither a folder nor a list file")
    index, count = shard
    outputs = output_names([r for _, r in entries])
    jobs = [
        Job(p, o)
        for i, ((p, _), o) in enumerate(zip(entries, outputs, strict=True))
        if i % count == index
    ]
    return jobs, rejected


def output_names(relatives: list[Path]) -> list[Path]:
    """Each input's output name, before the format's suffix: its path without the image suffix
    (``a/photo.jpg`` -> ``a/photo``), unless another input shares that (``a.jpg`` beside
    ``a.png``): those keep their suffix (``a.jpg``, ``a.png``), so no output overwrites another.
    Decided on the whole sorted list, so every shard names alike."""
    stems = [r.with_suffix("") for r in relatives]
    taken = Counter(stems)
    return [r if taken[stem] > 1 else stem for r, stem in zip(relatives, stems, strict=True)]


def output_path(output: Path, job: Job, format: str, encoding: str | None = None) -> Path:
    suffix = output_suffix(format, encoding)
    target = (output / job.relative).with_name(job.relative.name + suffix)
    if not target.resolve().is_relative_to(output.resolve()):
        raise S4segError(f"{job.source}: output {target} would be outside {output}")
    return target


DEFAULT_DEADLINE = 120.0
"""Seconds an image may take in a worker (decoding, the model, encoding) before it is stopped."""


def run_jobs(
    jobs: list[Job],
    output: Path,
    format: str,
    segmenter: SegmenterFactory,
    concurrency: int,
    deadline: float = DEFAULT_DEADLINE,
    progress: bool | None = None,
    encoding: str | None = None,
) -> Report:
    """Segment the jobs in ``concurrency`` worker processes, each image under ``deadline``
    seconds (past it, its worker is killed and replaced and the image fails); outputs are
    written here, atomically."""
    report = Report()
    # Temporary files of a run that was killed mid-write (``write_atomic``'s
    # ``.NAME.XXXXXXXX.tmp`` beside each output): never outputs, always redone.
    for stale in output.rglob(f".*{output_suffix(format, encoding)}.*.tmp"):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    todo: list[tuple[Job, Path]] = []
    for job in jobs:
        try:
            target = output_path(output, job, format, encoding)
        except S4segError as error:
            report.failures.append((str(job.source), str(error)))
            continue
        if target.exists():
            report.skipped += 1
        else:
            todo.append((job, target))
    if todo:
        bar = tqdm(total=len(todo), desc="predict", unit="img", disable=progress is False or None)
        pool = start_pool(segmenter, min(concurrency, len(todo)))
        try:
            run_in_pool(pool, todo, concurrency, deadline, report, bar.update)
        except BrokenProcessPool as error:
            pool.stop()
            raise S4segError(f"predict's worker processes could not start: {error}") from None
        except BaseException:
            pool.stop()  # kills the workers: no image outlives the run
            raise
        finally:
            pool.close()
            pool.join()
            bar.close()
    report.seconds = time.perf_counter() - start
    return report


def run_in_pool(
    pool: ProcessPool,
    todo: list[tuple[Job, Path]],
    concurrency: int,
    deadline: float,
    report: Report,
    advance: Callable[[int], object],
) -> None:
    pending: dict[Future, tuple[Job, Path]] = {}
    queue: Iterator[tuple[Job, Path]] = iter(todo)
    while True:
        while len(pending) < 2 * concurrency:  # bounded: never the whole list in flight
            item = next(queue, None)
            if item is None:
                break
            scheduled = pool.schedule(segment_in_worker, (str(item[0].source),), timeout=deadline)
            pending[scheduled] = item
        if not pending:
            return
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            job, target = pending.pop(future)
            try:
                write_atomic(target, future.result())
                report.done += 1
            except WorkerLoadError:
                raise
            except ImageFailed as error:
                report.failures.append((str(job.source), str(error)))
            except TimeoutError:
                report.failures.append(
                    (
                        str(job.source),
                        f"stopped: not done within the {deadline:g} s deadline "
                        "(--deadline); its worker was killed and replaced",
                    )
                )
            except ProcessExpired as error:
                report.failures.append(
                    (
                        str(job.source),
                        f"its worker process died ({error}, exit code {error.exitcode}); replaced",
                    )
                )
            except OSError as error:  # writing the output
                report.failures.append((str(job.source), f"writing {target}: {error}"))
            advance(1)


def summary(report: Report, output: Path) -> str:
    lines = [
        f"{report.done} written, {report.skipped} already there (skipped), "
        f"{len(report.failures)} failed in {report.seconds:.1f} s "
        f"({report.images_per_second:.2f} images/s) -> {output}"
    ]
    if report.failures:
        lines.append("failures:")
        lines += [f"  {path}: {reason}" for path, reason in report.failures]
        lines.append(f"(also in {output / 'failures.json'})")
    return "\n".join(lines)


def write_failures(report: Report, output: Path) -> None:
    path = output / "failures.json"
    if report.failures:
        body = [{"input": p, "reason": r} for p, r in report.failures]
        write_atomic(path, (json.dumps(body, indent=1) + "\n").encode())
    elif path.exists():
        path.unlink()


def log(message: str) -> None:
    print(message, file=sys.stderr)
