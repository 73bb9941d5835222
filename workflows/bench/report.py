"""What every ``s4seg bench`` shares: the one timing loop (warm-up outside the window) and the
one percentile (``s4seg.timing``, which ``publish --precision auto`` uses too), and the one
writer of BENCHMARKS.md sections with their machine, command and date."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import sys
from pathlib import Path

from s4seg.timing import percentile, time_calls

__all__ = ["percentile", "time_calls"]


def cpu_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from s4seg.engines import cpu_flags

    flags = " ".join(sorted(cpu_flags() & VECTOR_FLAGS)) or "none of the vector flags"
    return f"{cpu}, {os.cpu_count()} cores, flags: {flags}"


# The CPU flags every timing depends on (the brief: written beside every figure).
VECTOR_FLAGS = frozenset(
    {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni"}
)


def segmenter_name(arch: dict) -> str:
    """How a table names an export's segmenter, from its checkpoint's ``arch``."""
    if arch.get("name") == "dpt":
        return f"DPT on {arch['encoder']}"
    network = "DeepLabv3+" if arch.get("name") == "deeplabv3plus" else "DeepLabv2"
    return f"{network} ResNet-{arch['backbone_depth']}"


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


def report(table: str, write: str | None, section: str) -> str:
    """Print a benchmark's table and, with ``--write FILE``, replace its section there."""
    print(table)
    if write:
        update_section(Path(write), section, table)
    return table
