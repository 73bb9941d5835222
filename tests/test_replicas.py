"""Replicas on one repository (issue 24): two ``s4seg serve`` processes, each its own Triton and
gateway, started with the serving container's command and environment from
deploy/kubernetes (ports and paths made local), reading one published repository and sharing
one log folder. Under load spread over both, ``s4seg publish`` and then ``s4seg rollback``: no
request fails, every response names a version its replica serves, both converge, and no file is
written by both."""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import yaml
from serve_helpers import Served, hammer, record, serving

from s4seg.export.repository import publish, rollback
from s4seg.export.requests import PublishRequest
from s4seg.repository import served_by_servers, status_dir

pytestmark = [pytest.mark.stack, pytest.mark.slow]

QUIET = {"log": lambda *_: None}
DEPLOYMENT = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "base" / "serving.yaml"
PER_REPLICA = 12  # clients per replica
# Set here (the pod's own on a cluster): where this machine's processes must differ.
LOCAL = {"S4SEG_REPOSITORY", "S4SEG_HOST", "S4SEG_PORT", "S4SEG_LOG_DIR", "S4SEG_REPLICA"}


def serving_container() -> tuple[list[str], dict[str, str], dict]:
    """The Deployment's command (s4seg's arguments), literal environment and readiness probe."""
    (deployment,) = [
        d for d in yaml.safe_load_all(DEPLOYMENT.read_text()) if d["kind"] == "Deployment"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"][0] == "s4seg"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return container["command"][1:], env, container["readinessProbe"]


READY, UNREADY, NO_ANSWER = "ready", "unready", "no answer"
Poll = tuple[float, tuple[str, ...]]  # when the poll started, each replica's state


def longest_unready(polls: list[Poll]) -> float:
    """The longest stretch from a poll where no replica was ready to the next where one was."""
    longest, since = 0.0, None
    for started, states in [*polls, (time.monotonic(), (READY,))]:
        if READY in states:
            if since is not None:
                longest, since = max(longest, started - since), None
        elif since is None:
            since = started
    return longest


def converged(results: list, version: str, since: float) -> float | None:
    """When a replica's answers switched to ``version`` for good (its last other answer)."""
    after = [r for r in results if r[0] > since]
    if len(after) < 10 or any(r[3] != version for r in after[-10:]):
        return None
    others = [r[0] for r in after if r[3] != version]
    return (max(others) if others else since) - since


def test_two_replicas_follow_publish_and_rollback_under_load(
    tiny_export: Path, synth_root: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "models" / "model_repository"
    publish(PublishRequest(tiny_export, repo), **QUIET)
    command, env, probe_spec = serving_container()
    ready = probe_spec["httpGet"]["path"]
    env = {k: v for k, v in env.items() if k not in LOCAL}
    bodies = [
        ("valid", p.read_bytes(), 200) for p in sorted((synth_root / "images" / "val").iterdir())
    ]
    names = ("replica-a", "replica-b")
    with ExitStack() as stack:
        replicas: list[Served] = []
        for name in names:  # one log folder for both, as two pods of one Deployment could share
            replicas.append(
                stack.enter_context(
                    serving(
                        repo,
                        tmp_path,
                        command=[*command, "--repository", str(repo)],
                        ready_path=ready,
                        log_name=f"{name}.log",
                        S4SEG_REPLICA=name,
                        **env,
                    )
                )
            )
        results: dict[str, list] = {name: [] for name in names}
        done = threading.Event()
        clients = [
            threading.Thread(target=hammer, args=(r.url, bodies, done.is_set, results[n]))
            for n, r in zip(names, replicas, strict=True)
            for _ in range(PER_REPLICA)
        ]
        # Readiness of both every 0.2 s through the publish and the rollback, with the
        # Deployment's probe timeout (issue 32, item 9: both answered unready during a switch).
        readiness: list[Poll] = []

        def poll_readiness() -> None:
            with httpx.Client(timeout=probe_spec["timeoutSeconds"]) as probe:
                while not done.is_set():
                    started, states = time.monotonic(), []
                    for replica in replicas:
                        try:
                            ok = probe.get(f"{replica.url}{ready}").status_code == 200
                            states.append(READY if ok else UNREADY)
                        except httpx.HTTPError:
                            states.append(NO_ANSWER)
                    readiness.append((started, tuple(states)))
                    done.wait(0.2)

        clients.append(threading.Thread(target=poll_readiness))
        for client in clients:
            client.start()
        try:
            time.sleep(3)
            assert served_by_servers(repo) == {"replica-a": 1, "replica-b": 1}
            published_at = time.monotonic()
            new = str(publish(PublishRequest(tiny_export, repo), **QUIET))
            switch = wait_for_both(results, new, published_at)
            rolled_at = time.monotonic()
            rolled: dict[str, float] = {}

            def roll() -> None:
                rollback(repo, **QUIET)
                rolled["returned"] = time.monotonic() - rolled_at

            roller = threading.Thread(target=roll)
            roller.start()
            back = wait_for_both(results, "1", rolled_at)
            roller.join(90)
            time.sleep(2)
        finally:
            done.set()
            for client in clients:
                client.join()
        status_files = sorted(p.name for p in status_dir(repo).iterdir())
        served_after = served_by_servers(repo)
    # Stopped replicas withdraw their status.
    assert served_by_servers(repo) == {}

    every = [r for name in names for r in results[name]]
    failures = [r for r in every if r[2] != 200]
    figures = {
        "requests": {name: len(results[name]) for name in names},
        "failed": len(failures),
        "failures": dict(Counter(f"{r[2]} {r[4]}" for r in failures)),
        "failure_details": sorted({r[5] for r in failures}),
        "versions_in_responses": {n: dict(Counter(r[3] for r in results[n])) for n in names},
        "seconds_until_both_serve_the_publish": round(max(switch.values()), 1),
        "per_replica_publish": {n: round(s, 1) for n, s in switch.items()},
        "seconds_until_both_serve_after_rollback": round(max(back.values()), 1),
        "rollback_returned_after": round(rolled.get("returned", -1), 1),
        "readiness_polls": len(readiness),
        "polls_with_one_answering_unready": sum(1 for _, s in readiness if s.count(UNREADY) == 1),
        "polls_with_both_answering_unready": sum(
            1 for _, s in readiness if s.count(UNREADY) == len(s)
        ),
        "polls_with_a_probe_unanswered": sum(1 for _, s in readiness if NO_ANSWER in s),
        "longest_without_a_ready_replica_s": round(longest_unready(readiness), 1),
    }
    record("two_replicas", figures)
    assert failures == [], figures
    # Neither replica may say it is unready while the other says so too; a probe that times
    # out on a saturated machine counts, as on a cluster, only when no replica is ready for
    # longer than the Service takes to drop an endpoint (failureThreshold x periodSeconds).
    window = probe_spec["failureThreshold"] * probe_spec["periodSeconds"]
    assert readiness and figures["polls_with_both_answering_unready"] == 0, figures
    assert figures["longest_without_a_ready_replica_s"] < window, figures
    for name in names:
        # Each replica answered with the first version, the new one, then the first again.
        versions = [r[3] for r in sorted(results[name])]
        assert set(versions) == {"1", new}
        assert versions[0] == "1" and versions[-1] == "1"
    assert served_after == {"replica-a": 1, "replica-b": 1}
    # One status file per replica, no common one; the rolled-back version's files are gone
    # (rollback waited for both replicas to move).
    assert status_files == ["replica-a.json", "replica-b.json"]
    assert "returned" in rolled
    assert not (repo / "s4seg_segmenter" / new).exists()
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(names)


def wait_for_both(results: dict[str, list], version: str, since: float) -> dict[str, float]:
    deadline = time.monotonic() + 180
    switched: dict[str, float] = {}
    while len(switched) < len(results):
        assert time.monotonic() < deadline, f"not every replica serves {version}: {switched}"
        for name, rows in results.items():
            if name not in switched:
                seconds = converged(list(rows), version, since)
                if seconds is not None:
                    switched[name] = seconds
        time.sleep(0.5)
    return switched
