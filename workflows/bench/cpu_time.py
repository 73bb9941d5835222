"""Where the CPU goes: CPU seconds of each process of a running ``s4seg serve`` (the gateway and
version manager, tritonserver, each python-backend stub by its model) and of the benchmark's own
process (the client), read from /proc before and after a measured run."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def label(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    words = [a.decode(errors="replace") for a in argv if a]
    if any("triton_python_backend_stub" in w for w in words[:1]):
        model = next((w for w in words if w.endswith("model.py")), "")
        parts = Path(model).parts
        return f"stub {parts[-3]}" if len(parts) >= 3 else "stub"
    if any(w.endswith("tritonserver") for w in words[:1]):
        return "tritonserver"
    return "s4seg serve (gateway)"


def tree_cpu(root: int) -> dict[str, float]:
    """CPU seconds by label of ``root`` and every process under it (children of children too)."""
    parents: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := _stat(int(entry.name))) is not None:
            parents[int(entry.name)], seconds[int(entry.name)] = found
    members, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in members} - members
        members |= more
        grew = bool(more)
    totals: dict[str, float] = {}
    for pid in members & seconds.keys():
        name = label(pid)
        totals[name] = totals.get(name, 0.0) + seconds[pid]
    return totals


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def per_request(
    before: dict[str, float], after: dict[str, float], requests: int
) -> dict[str, float]:
    """Milliseconds of CPU per request for each label (processes that started in between count
    from zero)."""
    return {k: 1000 * (after[k] - before.get(k, 0.0)) / requests for k in sorted(after)}
