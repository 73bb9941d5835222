"""Atomic file writes: a reader sees the old file or the new one, never half of one (a temporary
file beside the target, flushed and fsynced, then ``os.replace``; the folder fsynced after)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Write ``path`` through a handle; it appears only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_atomic(path: str | Path, data: bytes | str, skip_unchanged: bool = False) -> Path:
    """``skip_unchanged``: leave an identical file alone (its mtime is someone's signal)."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if skip_unchanged and path.is_file() and path.read_bytes() == raw:
        return path
    with atomic_file(path) as handle:
        handle.write(raw)
    return path


def write_json_atomic(path: str | Path, value: Any) -> Path:
    return write_atomic(path, json.dumps(value, indent=1) + "\n")
