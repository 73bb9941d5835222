"""The version manager's rollback, without Triton: the withdrawn version's steps stay loaded
until the requests the old ensemble config took in can have finished (``DRAIN_SECONDS``), then
only the served version stays. Triton's load calls are recorded, not made."""

from __future__ import annotations

from pathlib import Path

import pytest

from s4seg.repository import ENSEMBLE, MANIFEST_NAME, STEP_MODELS, read_status
from s4seg.serving import versions as v


def published(repository: Path, *numbers: int) -> None:
    for number in numbers:
        for model in [*STEP_MODELS.values(), ENSEMBLE]:
            (repository / model / str(number)).mkdir(parents=True, exist_ok=True)
        (repository / ENSEMBLE / str(number) / MANIFEST_NAME).write_text("{}")


def test_a_withdrawn_versions_steps_drain_before_they_unload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = tmp_path / "repo"
    published(repository, 1, 2)
    manager = v.VersionManager(repository, "http://127.0.0.1:1", view=tmp_path / "view", log=str)
    loads: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(manager, "_load", lambda model, config, kept: loads.append((model, kept)))
    monkeypatch.setattr(manager, "_ready", lambda model, version: True)
    monkeypatch.setattr(manager, "_smoke_test", lambda version: None)
    monkeypatch.setattr(manager, "_verify", lambda version: None)  # test_triton checks files
    now = [1000.0]
    monkeypatch.setattr(v.time, "monotonic", lambda: now[0])

    assert manager.sync() == 2  # the newest, version 1 not loaded beside it (nothing served)
    # `s4seg rollback`: version 2's ensemble folder goes first (its steps' files still there)
    (repository / ENSEMBLE / "2" / MANIFEST_NAME).unlink()
    loads.clear()
    assert manager.sync() == 1
    steps = {model: kept for model, kept in loads if model != ENSEMBLE}
    assert steps == {m: [2, 1] for m in STEP_MODELS.values()}  # 2 stays loaded for now
    assert (ENSEMBLE, [1]) in loads

    loads.clear()
    now[0] += v.DRAIN_SECONDS / 2
    assert manager.sync() == 1 and loads == []  # requests may still be between its steps
    now[0] += v.DRAIN_SECONDS
    assert manager.sync() == 1
    assert loads == [(m, [1]) for m in STEP_MODELS.values()]  # drained: only 1 stays loaded
    loads.clear()
    now[0] += v.DRAIN_SECONDS
    assert manager.sync() == 1 and loads == []  # once


def test_the_plan_tries_newer_versions_newest_first_skipping_unchanged_failures() -> None:
    """``plan_sync`` from data: nothing patched, no Triton, no disk."""
    disk = v.OnDisk(
        complete=[5, 4, 3, 2], fingerprints={5: 1.0, 4: 7.0, 3: 1.0}, steps_present=True
    )
    state = v.VersionState(served=2, failed={4: v.Failure("bad shapes", 7.0)})
    plan = v.plan_sync(state, disk)
    assert plan.candidates == [5, 3] and plan.keep == 2 and plan.serving == 2
    assert plan.withdrawn is None and not plan.removed
    changed = v.OnDisk(disk.complete, {**disk.fingerprints, 4: 8.0}, True)  # version 4 fixed
    assert v.plan_sync(state, changed).candidates == [5, 4, 3]
    assert v.plan_sync(v.VersionState(served=5), disk).candidates == []  # newest served


def test_the_plan_for_a_withdrawn_version_keeps_it_while_its_steps_are_there() -> None:
    state = v.VersionState(served=3)
    rolled_back = v.OnDisk(complete=[2, 1], fingerprints={2: 1.0, 1: 1.0}, steps_present=True)
    plan = v.plan_sync(state, rolled_back)
    assert (plan.serving, plan.withdrawn, plan.keep, plan.removed) == (None, 3, 3, False)
    assert plan.candidates == [2, 1]
    gone = v.OnDisk(complete=[2, 1], fingerprints={2: 1.0, 1: 1.0}, steps_present=False)
    plan = v.plan_sync(state, gone)
    assert (plan.serving, plan.withdrawn, plan.keep, plan.removed) == (None, None, None, True)


def test_drain_is_due_only_after_its_time() -> None:
    assert not v.drain_due(v.VersionState(), 10.0)
    assert not v.drain_due(v.VersionState(drain_until=11.0), 10.0)
    assert v.drain_due(v.VersionState(drain_until=10.0), 10.0)


def test_a_version_that_fails_its_switch_leaves_triton(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its steps load before the smoke test refuses it: they are unloaded with the refusal
    (before, they stayed loaded, and a rollback of it waited a minute for nobody)."""
    repository = tmp_path / "repo"
    published(repository, 1)
    manager = v.VersionManager(repository, "http://127.0.0.1:1", view=tmp_path / "view", log=str)
    loads: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(manager, "_load", lambda model, config, kept: loads.append((model, kept)))
    monkeypatch.setattr(manager, "_ready", lambda model, version: True)
    monkeypatch.setattr(manager, "_verify", lambda version: None)
    unloads: list[str] = []
    monkeypatch.setattr(v.httpx, "post", lambda url, **_: unloads.append(url.split("/")[-2]))

    def smoke_test(version: int) -> None:
        if version != 1:
            raise v.LoadError(f"version {version}: logits has the wrong shape")

    monkeypatch.setattr(manager, "_smoke_test", smoke_test)
    assert manager.sync() == 1 and manager.loaded == [1]
    published(repository, 2)
    loads.clear()
    assert manager.sync() == 1
    assert manager.loaded == [1] and 2 in manager.problems()
    steps = [kept for model, kept in loads if model != ENSEMBLE]
    assert steps == [[1, 2]] * len(STEP_MODELS) + [[1]] * len(STEP_MODELS)
    assert read_status(repository, manager.replica)["loaded"] == [1]

    # Nothing served yet and the only version fails: its steps are unloaded.
    empty = tmp_path / "empty"
    published(empty, 3)
    first = v.VersionManager(empty, "http://127.0.0.1:1", view=tmp_path / "view3", log=str)
    for name in ("_load", "_ready", "_verify", "_smoke_test"):
        monkeypatch.setattr(first, name, getattr(manager, name))
    assert first.sync() is None and first.loaded == [] and 3 in first.problems()
    assert sorted(unloads) == sorted(STEP_MODELS.values())
