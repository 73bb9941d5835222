"""The gateway's view of the served version while Triton reloads the ensemble: a moment without
an ensemble config (loading or unloading a step version reloads the ensembles that use it) does
not turn into 503 "no version is being served"; a Triton gone for longer does."""

from __future__ import annotations

import asyncio

import pytest

from s4seg.serving.gateway import triton_client as tc


def test_a_reload_moment_keeps_the_last_known_version(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> list[int | None]:
        triton = tc.TritonEnsemble("127.0.0.1:1", timeout=1.0)
        answers = iter([2, None, None, None])
        now = [100.0]
        monkeypatch.setattr(tc.time, "monotonic", lambda: now[0])

        async def fetch() -> int | None:
            return next(answers)

        monkeypatch.setattr(triton, "_fetch_served_version", fetch)
        seen = [await triton.served_version()]  # 2, fetched
        now[0] += 1.0  # past the cache, within the grace: Triton is reloading
        seen.append(await triton.served_version())
        now[0] += tc.SERVED_GRACE / 2
        seen.append(await triton.served_version())
        now[0] += tc.SERVED_GRACE  # gone for longer than a reload: nothing is served
        seen.append(await triton.served_version())
        await triton.close()
        return seen

    assert asyncio.run(scenario()) == [2, 2, 2, None]
