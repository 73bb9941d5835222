"""System shared memory between the gateway and a Triton on the same machine (Triton's
shared-memory extension): the image tensor and the gated scores stay out of the request and
response bodies.

A pool of slots, one per request in flight; each slot is an input and an output region,
registered with Triton when made and made again when too small. A slot whose request did not
finish (timed out, cancelled, failed) is never used again: Triton may still read its input or
write its output, which would hand one user's scores to the next. Its regions are unlinked at
once and unregistered from Triton in the background, and the slot gets new ones. Region names
carry the gateway's pid and a random token and are created exclusively (never an existing
region). Triton forgets registrations when it restarts (``s4seg serve`` restarts it after a
crash): the client then calls ``forget_registrations`` and every slot registers again on its
next use.

Review M5: a region's pages are reserved when it is made (``posix_fallocate``): a burst of first
requests that each passed a free-space check and then filled the tmpfs made tritonserver
SIGBUS; a region that does not fit now sends its request inline. Names carry this gateway's
run (pid and start time), so the regions of an earlier life of a restarted container (PID 1
again) are recognised and removed at start, as are those of gateways that are gone; files of
other users are left alone. A registration cancelled mid-call may still complete in Triton:
its region is retired and unregistered in the background, like any unfinished slot's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.utils.shared_memory as shm

PREFIX = "s4seg_gateway"
DEV_SHM = Path("/dev/shm")


class NoRoom(Exception):
    """/dev/shm has too little space for a region (Docker's default is 64 MiB): send inline."""


class NoSlot(Exception):
    """Every slot is in use for longer than the request may wait (HTTP 503)."""


@dataclass
class Region:
    name: str
    size: int
    handle: object
    registered: bool = False
    closed: bool = False


@dataclass
class Slot:
    input: Region
    output: Region


def start_time(pid: int | str) -> str | None:
    """A process's start time in clock ticks since boot (None: no such process): with the pid,
    it names one run of a process (a pid is reused, by a restarted container's PID 1 too)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


RUN = f"{os.getpid()}-{start_time(os.getpid()) or 0}"  # this gateway's run


def remove_stale_regions() -> list[str]:
    """Regions of ours (this user's) left by gateway runs that are over: their process is gone,
    or its pid now belongs to another run (a restarted container)."""
    removed = []
    pattern = re.compile(rf"{PREFIX}_(\d+)-(\d+)_")
    uid = os.getuid()
    for path in DEV_SHM.glob(f"{PREFIX}_*"):
        match = pattern.match(path.name)
        try:
            if path.stat().st_uid != uid:
                continue  # another user's: not ours to judge
        except OSError:
            continue
        pid, started = match.groups() if match else (None, None)
        if pid is None or start_time(pid) != started:
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours after all
                path.unlink()
                removed.append(path.name)
    return removed


def reserve(name: str, size: int) -> None:
    """Allocate the region's pages now (tmpfs), so that filling it can not SIGBUS a reader or
    writer later; ``NoRoom`` when /dev/shm can not hold it."""
    fd = os.open(DEV_SHM / name, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        raise NoRoom(f"{DEV_SHM} has no room for {size} bytes ({error.strerror})") from None
    finally:
        os.close(fd)


class SharedMemoryPool:
    def __init__(self, client, slots: int) -> None:
        self.client = client  # tritonclient.grpc.aio or tritonclient.http.aio
        self.free: asyncio.Queue[int] = asyncio.Queue()
        self.slots: dict[int, Slot | None] = {}
        self.retired = 0  # slots given up because their request did not finish
        self._unregistering: set[asyncio.Task] = set()
        for i in range(slots):
            self.slots[i] = None
            self.free.put_nowait(i)
        remove_stale_regions()

    @staticmethod
    def _name(kind: str) -> str:
        return f"{PREFIX}_{RUN}_{secrets.token_hex(8)}_{kind}"

    async def _region(self, region: Region | None, kind: str, size: int) -> Region:
        if region is not None and region.size >= size:
            if not region.registered:
                await self.client.register_system_shared_memory(
                    region.name, f"/{region.name}", region.size
                )
                region.registered = True
            return region
        if region is not None:
            self._retire(region)
        space = os.statvfs(DEV_SHM)
        if space.f_bavail * space.f_frsize < 2 * size:  # writing past it would be SIGBUS
            raise NoRoom(f"{DEV_SHM} has too little space for {size} bytes")
        name = self._name(kind)
        handle = shm.create_shared_memory_region(name, f"/{name}", size, create_only=True)
        region = Region(name, size, handle)
        try:
            reserve(name, size)
        except NoRoom:
            shm.destroy_shared_memory_region(handle)
            raise
        try:
            await asyncio.shield(self.client.register_system_shared_memory(name, f"/{name}", size))
        except BaseException:
            region.registered = True  # it may have reached Triton: unregister in the background
            self._retire(region)
            raise
        region.registered = True
        return region

    def _retire(self, region: Region) -> None:
        """Unlink now (nothing of ours maps it again); unregister when Triton lets go of it."""
        if region.closed:
            return
        region.closed = True
        shm.destroy_shared_memory_region(region.handle)
        if region.registered:
            task = asyncio.get_running_loop().create_task(self._unregister(region.name))
            self._unregistering.add(task)
            task.add_done_callback(self._unregistering.discard)

    async def _unregister(self, name: str, tries: int = 30) -> None:
        for _ in range(tries):  # Triton refuses while a request still uses the region
            with contextlib.suppress(Exception):
                await self.client.unregister_system_shared_memory(name)
                return
            await asyncio.sleep(1.0)

    @asynccontextmanager
    async def slot(self, input_bytes: int, output_bytes: int, wait: float) -> AsyncIterator[Slot]:
        """A slot whose regions hold at least these sizes, for the length of one request;
        ``NoSlot`` when none is free within ``wait`` seconds."""
        try:
            index = await asyncio.wait_for(self.free.get(), wait)
        except TimeoutError:
            raise NoSlot(f"all {len(self.slots)} shared-memory slots are busy; retry") from None
        current, self.slots[index] = self.slots[index], None
        held: list[Region] = [] if current is None else [current.input, current.output]
        finished = False
        try:
            source = current.input if current else None
            held.append(region_in := await self._region(source, "in", input_bytes))
            source = current.output if current else None
            held.append(region_out := await self._region(source, "out", output_bytes))
            slot = self.slots[index] = Slot(region_in, region_out)
            yield slot
            finished = True
        finally:
            if not finished:  # Triton may still use these regions: never hand them out again
                for region in held:
                    self._retire(region)
                self.retired += 1
                self.slots[index] = None
            self.free.put_nowait(index)

    def forget_registrations(self) -> None:
        """Triton restarted (or refused a region): register every region again on next use."""
        for slot in self.slots.values():
            if slot is not None:
                slot.input.registered = slot.output.registered = False

    @staticmethod
    def write(region: Region, array: np.ndarray) -> None:
        shm.set_shared_memory_region(region.handle, [np.ascontiguousarray(array)])

    @staticmethod
    def read(region: Region, dtype, shape) -> np.ndarray:
        return shm.get_contents_as_numpy(region.handle, dtype, shape).copy()

    async def close(self) -> None:
        for task in list(self._unregistering):
            task.cancel()
        for slot in self.slots.values():
            if slot is not None:
                for region in (slot.input, slot.output):
                    if region.closed:
                        continue
                    if region.registered:
                        with contextlib.suppress(Exception):  # Triton gone
                            await self.client.unregister_system_shared_memory(region.name)
                    shm.destroy_shared_memory_region(region.handle)
        self.slots = {}
