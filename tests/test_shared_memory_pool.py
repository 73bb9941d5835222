"""The gateway's shared-memory slots (issue 19, item 2): a slot whose request did not finish is
never handed out again, names are unpredictable and created exclusively, and waiting for a slot
ends in 503, not a hang. Real regions in /dev/shm; Triton's registration calls recorded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils.shared_memory import SharedMemoryException

from s4seg.serving.gateway import shared_memory
from s4seg.serving.gateway.shared_memory import NoSlot, SharedMemoryPool


class Registrations:
    """What Triton's shared-memory API was asked (the aio client's two calls)."""

    def __init__(self) -> None:
        self.registered: set[str] = set()
        self.unregistered: list[str] = []

    async def register_system_shared_memory(self, name: str, key: str, size: int) -> None:
        assert name not in self.registered, f"{name} registered twice"
        self.registered.add(name)

    async def unregister_system_shared_memory(self, name: str) -> None:
        self.registered.discard(name)
        self.unregistered.append(name)


def on_disk(name: str) -> bool:
    return (Path("/dev/shm") / name).exists()


def test_a_slot_whose_request_did_not_finish_is_never_used_again() -> None:
    async def scenario() -> None:
        triton = Registrations()
        pool = SharedMemoryPool(triton, slots=1)
        async with pool.slot(16, 16, wait=1) as first:
            pool.write(first.input, np.arange(16, dtype=np.uint8))
        async with pool.slot(16, 16, wait=1) as again:  # finished: the same regions
            assert (again.input.name, again.output.name) == (first.input.name, first.output.name)
        with pytest.raises(TimeoutError):
            async with pool.slot(16, 16, wait=1) as timed_out:
                await asyncio.wait_for(asyncio.sleep(10), 0.05)  # Triton still at work
        async with pool.slot(16, 16, wait=1) as after:
            assert after.input.name != timed_out.input.name
            assert after.output.name != timed_out.output.name
            assert on_disk(after.input.name) and on_disk(after.output.name)
        assert not on_disk(timed_out.input.name) and not on_disk(timed_out.output.name)
        await asyncio.sleep(0.05)  # the background unregistration
        assert {timed_out.input.name, timed_out.output.name} <= set(triton.unregistered)
        assert pool.retired == 1
        await pool.close()
        assert not on_disk(after.input.name)

    asyncio.run(scenario())


def test_region_names_are_unpredictable_and_created_exclusively(monkeypatch) -> None:
    async def scenario() -> None:
        a, b = SharedMemoryPool(Registrations(), 1), SharedMemoryPool(Registrations(), 1)
        async with a.slot(8, 8, wait=1) as one, b.slot(8, 8, wait=1) as two:
            assert one.input.name != two.input.name
        await a.close()
        await b.close()
        # A region that already exists under the name drawn is an error, never reused.
        monkeypatch.setattr(shared_memory.secrets, "token_hex", lambda n: "0" * (2 * n))
        planted = Path("/dev/shm") / SharedMemoryPool._name("in")
        planted.write_bytes(b"\xff" * 64)
        try:
            with pytest.raises(SharedMemoryException):
                async with SharedMemoryPool(Registrations(), 1).slot(8, 8, wait=1):
                    pass
            assert planted.read_bytes() == b"\xff" * 64
        finally:
            planted.unlink(missing_ok=True)

    asyncio.run(scenario())


def test_waiting_for_a_slot_ends_in_no_slot_not_a_hang() -> None:
    async def scenario() -> None:
        pool = SharedMemoryPool(Registrations(), slots=1)
        async with pool.slot(8, 8, wait=1):
            with pytest.raises(NoSlot, match="busy"):
                async with pool.slot(8, 8, wait=0.1):
                    pass
        await pool.close()

    asyncio.run(scenario())


def test_regions_are_reserved_and_a_region_that_does_not_fit_goes_inline(monkeypatch) -> None:
    """Issue 32, item 10 (review M5a): a region's pages are allocated when it is made; when
    /dev/shm can not hold them the request goes inline (NoRoom), and nothing is left behind
    (a burst of first requests had passed a free-space check, then SIGBUSed tritonserver)."""
    import errno

    from s4seg.serving.gateway.shared_memory import NoRoom

    async def scenario() -> None:
        pool = SharedMemoryPool(Registrations(), slots=1)
        async with pool.slot(1 << 16, 1 << 16, wait=1) as slot:
            allocated = (Path("/dev/shm") / slot.input.name).stat().st_blocks * 512
            assert allocated >= 1 << 16  # the pages exist now, not at first write

        def full(fd, offset, length):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(shared_memory.os, "posix_fallocate", full)
        before = set(Path("/dev/shm").iterdir())
        with pytest.raises(NoRoom, match="no room"):
            async with pool.slot(1 << 20, 1 << 20, wait=1):
                pass
        assert set(Path("/dev/shm").iterdir()) <= before  # the new region was removed
        await pool.close()

    asyncio.run(scenario())


def test_at_start_regions_of_earlier_runs_are_removed_and_other_users_left_alone() -> None:
    """Issue 32, item 10 (review M5b, c): a restarted container's gateway is PID 1 again, so a
    pid alone kept the earlier life's regions for good; another user's file raised
    PermissionError and the gateway did not start."""
    import os

    from s4seg.serving.gateway.shared_memory import PREFIX, RUN, remove_stale_regions

    pid = os.getpid()
    earlier = Path("/dev/shm") / f"{PREFIX}_{pid}-1_0123456789abcdef_in"  # same pid, older run
    current = Path("/dev/shm") / f"{PREFIX}_{RUN}_fedcba9876543210_in"
    foreign = Path("/dev/shm") / f"{PREFIX}_999999999-1_00_in"
    for path in (earlier, current, foreign):
        path.write_bytes(b"x")
    if os.getuid() == 0:
        os.chown(foreign, 65534, 65534)  # nobody's
    else:
        foreign.unlink()  # not ours to make as another user: that part needs root
    try:
        removed = remove_stale_regions()
        assert earlier.name in removed and not earlier.exists()
        assert current.exists() and (foreign.exists() or os.getuid() != 0)
    finally:
        for path in (earlier, current, foreign):
            path.unlink(missing_ok=True)
