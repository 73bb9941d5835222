"""What every ``s4seg bench`` shares: the one timing loop (warm-up outside the window), the one
percentile, and the one writer of BENCHMARKS.md sections with their machine, command and date."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path


def cpu_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def provenance(machine: str) -> list[str]:
    """The machine, the command and the date: the first lines of every benchmark section."""
    return [
        f"Machine: {machine}  ",
        f"Command: `{shlex.join(['s4seg', *sys.argv[1:]])}`  ",
        f"Date: {datetime.date.today().isoformat()}  ",
    ]


def update_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the block between ``<!-- bench:NAME -->`` markers in a markdown file."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body}\n{end}"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + f"\n\n{block}\n"
    )
    path.write_text(text)


def time_calls(
    call: Callable[[], object],
    repeats: int,
    warmup: int = 0,
    per: int = 1,
    synchronize: Callable[[], None] = lambda: None,
) -> list[float]:
    """Seconds of each of ``repeats`` calls (divided by ``per``: e.g. the images of a batch),
    after ``warmup`` untimed ones; ``synchronize`` waits for queued device work (CUDA) before
    each clock read."""
    for _ in range(warmup):
        call()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        synchronize()
        times.append((time.perf_counter() - start) / per)
    return times


def percentile(values: list[float], q: float) -> float:
    """The value at rank ``int(q * n)`` of the sorted values (q=0.99: p99; no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(table: str, write: str | None, section: str) -> str:
    """Print a benchmark's table and, with ``--write FILE``, replace its section there."""
    print(table)
    if write:
        update_section(Path(write), section, table)
    return table
