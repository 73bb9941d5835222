"""Where this process sits in a job of many: its rank under torchrun and its index in a
Kubernetes Indexed Job. One place reads the launchers' environment variables (no torch here:
the clients use it too)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from s4seg.errors import S4segError

# Kubernetes sets this in every pod of an Indexed Job (spec.completionMode: Indexed).
JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"
# The job's count is not in the pod's environment: our Job manifests set it beside completions.
JOB_COUNT_ENV = "S4SEG_SHARD_COUNT"
AUTO = "auto"


def torchrun_rank() -> int:
    """This process's global rank under torchrun (0 when started alone)."""
    return int(os.environ.get("RANK", "0"))


def job_index(flag: str) -> int:
    """The Indexed Job's completion index, for ``flag auto``; an error names what is missing."""
    value = os.environ.get(JOB_INDEX_ENV)
    if value is None:
        raise S4segError(
            f"{flag} auto takes its index from ${JOB_INDEX_ENV} (set by a Kubernetes Indexed Job),"
            " which is not set here: give the index, e.g. 0/4"
        )
    try:
        return int(value)
    except ValueError:
        raise S4segError(f"${JOB_INDEX_ENV} is {value!r}, not an integer") from None


def job_count(flag: str, given: int | None) -> int:
    """How many shards the job has: ``given`` (a flag), else ``$S4SEG_SHARD_COUNT``."""
    if given is not None:
        return given
    value = os.environ.get(JOB_COUNT_ENV)
    if value is None:
        raise S4segError(
            f"{flag} auto needs the job's shard count: --shard-count N or ${JOB_COUNT_ENV} "
            "(the Job's spec.completions)"
        )
    try:
        return int(value)
    except ValueError:
        raise S4segError(f"${JOB_COUNT_ENV} is {value!r}, not an integer") from None


def wait_for_file(path: Path, seconds: float, what: str) -> None:
    """Wait until another process (rank 0) has written ``path``."""
    deadline = time.monotonic() + seconds
    while not path.is_file():
        if time.monotonic() > deadline:
            raise S4segError(
                f"{what}: {path} did not appear within {seconds:g} s (rank 0 writes it)"
            )
        time.sleep(0.2)
