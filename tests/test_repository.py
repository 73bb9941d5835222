"""The repository contract in the core: which version is served, and where the status lives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from s4seg.export.repository import publish
from s4seg.repository import (
    STALE_SECONDS,
    complete_versions,
    read_status,
    remove_status,
    replica_statuses,
    served_by_servers,
    served_version,
    status_dir,
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
    shutil.rmtree(status_dir(three_versions), ignore_errors=True)
    assert complete_versions(three_versions) == [1, 2, 3]
    assert served_version(three_versions) == 3


def test_a_running_server_decides_what_is_served(three_versions: Path) -> None:
    shutil.rmtree(status_dir(three_versions), ignore_errors=True)
    write_status(three_versions, "a", {"served_version": 2, "failed": {"3": "does not load"}})
    assert read_status(three_versions, "a")["pid"] > 0
    assert served_version(three_versions) == 2  # this process wrote it and is alive
    # Status beside the published tree, never inside it.
    assert status_path(three_versions, "a").parent.parent == three_versions.resolve().parent
    assert not [p for p in three_versions.rglob("*.json") if p.name != "manifest.json"]


def test_a_stopped_server_leaves_the_newest_version_that_loaded(three_versions: Path) -> None:
    shutil.rmtree(status_dir(three_versions), ignore_errors=True)
    write_status(three_versions, "a", {"served_version": 1, "failed": {"3": "does not load"}})
    path = status_path(three_versions, "a")
    stale = read_status(three_versions, "a") | {"pid": dead_pid()}
    path.write_text(json.dumps(stale))
    assert served_version(three_versions) == 2  # not 1 (no server), not 3 (failed to load)


def test_replicas_write_one_file_each_and_the_gone_ones_do_not_count(
    three_versions: Path,
) -> None:
    """Issue 24: replicas of one repository never write a common file; a replica on another
    host counts while its heartbeat is recent (its pid can not be checked from here)."""
    folder = status_dir(three_versions)
    shutil.rmtree(folder, ignore_errors=True)
    write_status(three_versions, "pod-a", {"served_version": 2, "failed": {}})
    write_status(three_versions, "pod-b", {"served_version": 3, "failed": {}})
    assert sorted(p.name for p in folder.iterdir()) == ["pod-a.json", "pod-b.json"]
    assert served_by_servers(three_versions) == {"pod-a": 2, "pod-b": 3}
    assert served_version(three_versions) == 3  # the newest a replica serves
    elsewhere = read_status(three_versions, "pod-b") | {"host": "another-node", "pid": 1}
    status_path(three_versions, "pod-b").write_text(json.dumps(elsewhere))
    assert served_by_servers(three_versions) == {"pod-a": 2, "pod-b": 3}
    elsewhere["time"] -= STALE_SECONDS + 1  # its heartbeat stopped: the node is gone
    status_path(three_versions, "pod-b").write_text(json.dumps(elsewhere))
    assert served_by_servers(three_versions) == {"pod-a": 2}
    assert set(replica_statuses(three_versions, live_only=False)) == {"pod-a", "pod-b"}
    remove_status(three_versions, "pod-a")  # a replica that stops withdraws its file
    assert served_by_servers(three_versions) == {}
