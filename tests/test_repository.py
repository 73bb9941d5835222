"""The repository contract in the core: which version is served, and where the status lives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s4seg.export.repository import publish
from s4seg.export.requests import PublishRequest
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
        publish(PublishRequest(tiny_export, repo), **QUIET)
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
    stale = time.time() - STALE_SECONDS - 1  # its heartbeat stopped: the node is gone
    os.utime(status_path(three_versions, "pod-b"), (stale, stale))
    assert served_by_servers(three_versions) == {"pod-a": 2}
    assert set(replica_statuses(three_versions, live_only=False)) == {"pod-a", "pod-b"}
    remove_status(three_versions, "pod-a")  # a replica that stops withdraws its file
    assert served_by_servers(three_versions) == {}


def test_liveness_reads_the_volumes_clock_and_sees_a_long_load_through(
    three_versions: Path,
) -> None:
    """Issue 32, item 8 (review M1): a replica whose load outlasted 45 s counted as gone, a host
    whose clock ran ahead saw every other replica as gone, and containers sharing a host name
    checked pids in the wrong namespace. Ages are the files' own (the volume's clock), a
    process that can be seen counts while it lives, and what a replica is loading or keeps
    loaded is in use: prune keeps it."""
    from s4seg.repository import in_use, pid_namespace

    folder = status_dir(three_versions)
    shutil.rmtree(folder, ignore_errors=True)
    write_status(three_versions, "here", {"served_version": 1, "loading": 2, "loaded": [1]})
    old = time.time() - 10 * STALE_SECONDS
    os.utime(status_path(three_versions, "here"), (old, old))  # a load of many minutes
    assert in_use(three_versions) == {1, 2}  # this process lives: still there, still loading
    # Another host, whose clock is an hour ahead: its file is fresh on the volume's clock.
    skewed = read_status(three_versions, "here") | {"host": "node-b", "time": time.time() + 3600}
    status_path(three_versions, "there").write_text(json.dumps(skewed | {"replica": "there"}))
    assert set(served_by_servers(three_versions)) == {"here", "there"}
    # Same host name, another pid namespace (another container of the pod): judged by age.
    other = {"pid_namespace": (pid_namespace() or 0) + 1, "pid": dead_pid(), "replica": "sidecar"}
    pod = read_status(three_versions, "here") | other
    status_path(three_versions, "sidecar").write_text(json.dumps(pod))
    assert "sidecar" in served_by_servers(three_versions)  # its pid is not ours to check
    os.utime(status_path(three_versions, "sidecar"), (old, old))
    assert "sidecar" not in served_by_servers(three_versions)


def test_a_replica_name_of_dots_names_no_parent_folder(tmp_path: Path) -> None:
    """Issue 32, item 11 (review L8): S4SEG_REPLICA=".." made the replica's folder the log
    folder's parent, which the version manager empties for Triton's view."""
    from s4seg.serving.settings import ServeSettings

    for name in (".", "..", "..."):
        settings = ServeSettings(replica=name, log_dir=tmp_path / "logs")
        assert settings.replica_dir.parent == tmp_path / "logs", settings.replica_dir
        assert status_path(tmp_path / "repo", name).parent == status_dir(tmp_path / "repo")
        assert status_path(tmp_path / "repo", name).name == "replica.json"
