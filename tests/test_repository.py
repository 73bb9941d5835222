"""The repository contract in the core: which version is served, and where the status lives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from s4seg.export.repository import publish
from s4seg.repository import (
    complete_versions,
    read_status,
    served_version,
    status_path,
    write_status,
)

QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def three_versions(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("contract") / "repo"
    for _ in range(3):
        publish(tiny_export, repo, **QUIET)
    return repo


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_without_a_server_the_newest_complete_version_is_served(three_versions: Path) -> None:
    status_path(three_versions).unlink(missing_ok=True)
    assert complete_versions(three_versions) == [1, 2, 3]
    assert served_version(three_versions) == 3


def test_a_running_server_decides_what_is_served(three_versions: Path) -> None:
    write_status(three_versions, {"served_version": 2, "failed": {"3": "does not load"}})
    assert read_status(three_versions)["pid"] > 0
    assert served_version(three_versions) == 2  # this process wrote it and is alive
    # Status beside the published tree, never inside it.
    assert status_path(three_versions).parent == three_versions.resolve().parent
    assert not list(three_versions.glob("*.json"))


def test_a_stopped_server_leaves_the_newest_version_that_loaded(three_versions: Path) -> None:
    write_status(three_versions, {"served_version": 1, "failed": {"3": "does not load"}})
    path = status_path(three_versions)
    stale = read_status(three_versions) | {"pid": dead_pid()}
    path.write_text(json.dumps(stale))
    assert served_version(three_versions) == 2  # not 1 (no server), not 3 (failed to load)
