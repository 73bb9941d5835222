"""System shared memory between the gateway and a Triton on the same machine (Triton's
shared-memory extension): the image tensor and the gated scores stay out of the request and
response bodies.

A pool of slots, one per request in flight; each slot is an input and an output region,
registered with Triton when made and made again when too small. Triton forgets registrations
when it restarts (``s4seg serve`` restarts it after a crash): the client then calls
``forget_registrations`` and every slot registers again on its next use. Region names carry the
gateway's pid, and regions of gateways that are gone are removed at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
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


@dataclass
class Region:
    name: str
    size: int
    handle: object
    registered: bool = False


@dataclass
class Slot:
    input: Region
    output: Region


def remove_stale_regions() -> None:
    """Regions left by gateways that were killed (their pid is gone)."""
    pattern = re.compile(rf"{PREFIX}_(\d+)_")
    for path in DEV_SHM.glob(f"{PREFIX}_*"):
        match = pattern.match(path.name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            path.unlink(missing_ok=True)


class SharedMemoryPool:
    def __init__(self, client, slots: int) -> None:
        self.client = client  # tritonclient.grpc.aio or tritonclient.http.aio
        self.free: asyncio.Queue[int] = asyncio.Queue()
        self.slots: dict[int, Slot | None] = {}
        for i in range(slots):
            self.slots[i] = None
            self.free.put_nowait(i)
        remove_stale_regions()

    def _name(self, index: int, kind: str) -> str:
        return f"{PREFIX}_{os.getpid()}_{index}_{kind}"

    async def _region(self, region: Region | None, name: str, size: int) -> Region:
        if region is not None and region.size >= size:
            if not region.registered:
                await self.client.register_system_shared_memory(name, f"/{name}", region.size)
                region.registered = True
            return region
        if region is not None:
            await self._drop(region)
        space = os.statvfs(DEV_SHM)
        if space.f_bavail * space.f_frsize < 2 * size:  # writing past it would be SIGBUS
            raise NoRoom(f"{DEV_SHM} has too little space for {size} bytes")
        handle = shm.create_shared_memory_region(name, f"/{name}", size)
        region = Region(name, size, handle)
        await self.client.register_system_shared_memory(name, f"/{name}", size)
        region.registered = True
        return region

    async def _drop(self, region: Region) -> None:
        if region.registered:
            with contextlib.suppress(Exception):  # Triton gone: nothing to unregister
                await self.client.unregister_system_shared_memory(region.name)
        shm.destroy_shared_memory_region(region.handle)

    @asynccontextmanager
    async def slot(self, input_bytes: int, output_bytes: int) -> AsyncIterator[Slot]:
        """A slot whose regions hold at least these sizes, for the length of one request."""
        index = await self.free.get()
        current = self.slots[index]
        try:
            slot = Slot(
                await self._region(
                    current.input if current else None, self._name(index, "in"), input_bytes
                ),
                await self._region(
                    current.output if current else None, self._name(index, "out"), output_bytes
                ),
            )
        except BaseException:
            self.slots[index] = None if current is None else current
            self.free.put_nowait(index)
            raise
        self.slots[index] = slot
        try:
            yield slot
        finally:
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
        for slot in self.slots.values():
            if slot is not None:
                await self._drop(slot.input)
                await self._drop(slot.output)
        self.slots = {}
