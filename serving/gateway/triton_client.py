"""The gateway's one long-lived async client of the Triton ensemble.

Inference goes over gRPC or HTTP (``S4SEG_TRITON_PROTOCOL``; ``s4seg bench serve`` measures
both), with the image and the gated scores in system shared memory when Triton is on this
machine (``S4SEG_TRITON_SHARED_MEMORY``); health, readiness and the served version over HTTP."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import aiohttp
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from s4seg.repository import ENSEMBLE
from s4seg.tensors import CLASS_PROBS, IMAGE, SCORES, SUPPRESSED
from s4seg.triton_request import ensemble_inputs, map_back_outputs

from .metrics import TRITON_ERRORS
from .shared_memory import NoRoom, NoSlot, SharedMemoryPool


class TritonUnavailable(Exception):
    """Triton is down, not ready, or has no ready ensemble, or the gateway is at its limit
    (HTTP 503)."""


class VersionMoved(TritonUnavailable):
    """The version a request was framed for is no longer loaded (a switch or rollback): frame
    it again for the version served now."""


class TritonFailed(Exception):
    """Triton answered the request with an error (HTTP 502) or too late (504)."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Segmentation:
    scores: np.ndarray  # (C, H, W) float32 gated scores at the canvas size
    class_probs: np.ndarray  # (C,)
    suppressed: np.ndarray  # (C,) bool
    version: str


SERVED_VERSION_TTL = 0.5  # seconds
# How long the last known served version stands in when Triton gives no ensemble config (a
# reload; tests/test_replicas.py: 503 "no version is being served" without it). 5 s was not
# enough: on a saturated CPU a switch's reloads took up to 19 s and the config query itself
# can wait its 5 s timeout. The default request deadline: a Triton really gone fails the
# inference meanwhile (503 all the same).
SERVED_GRACE = 30.0  # seconds
READINESS_TTL = 1.0  # seconds a readiness answer is reused
# How long Triton's health and config queries may take. A query that runs out of it (Triton
# busy: while it loads a step model its health answers wait, though it runs requests) is not a
# "no": within SERVED_GRACE of a ready answer the replica stays ready (tests/test_replicas.py,
# on a saturated CPU: both replicas answered 503 to one probe while both served every request).
QUERY_TIMEOUT = 5.0  # seconds
READY = (True, "ready")

UNAVAILABLE_HINTS = (
    "unknown model",
    "not ready",
    "no available versions",
    "unavailable",
    "failed to connect",
    "connection refused",  # gRPC while Triton is down or restarting
    "exceeds maximum queue size",  # a step's queue policy: overloaded
)
TIMEOUT_HINTS = ("timeout expired", "deadline exceeded", "deadline_exceeded")


class TritonEnsemble:
    def __init__(
        self,
        url: str,
        timeout: float,
        grpc_url: str | None = None,
        shared_memory: bool = False,
        slots: int = 32,
    ) -> None:
        """``slots``: requests in flight with their tensors in shared memory (the gateway's
        ``max_in_flight``, so that an admitted request finds one)."""
        self.url = url.removeprefix("http://")
        self.timeout = timeout
        self.client = triton_aio.InferenceServerClient(self.url, conn_timeout=timeout)
        self.grpc = triton_grpc_aio.InferenceServerClient(grpc_url) if grpc_url else None
        self.kind = triton_grpc if self.grpc is not None else triton_http
        inference = self.grpc if self.grpc is not None else self.client
        self.pool = SharedMemoryPool(inference, slots) if shared_memory else None
        self._served: tuple[float, int | None] = (0.0, None)
        self._fetching = asyncio.Lock()
        self._readiness_seen: tuple[float, tuple[bool, str]] = (-READINESS_TTL, (False, ""))
        self._readiness_lock = asyncio.Lock()
        self._ready_at = -math.inf  # when Triton last said ready (never, yet)

    async def _infer(
        self,
        canvas: np.ndarray,
        view: np.ndarray,
        tau: float,
        classes: int,
        via_shm: bool,
        wait: float,
        version: str = "",
    ):
        """(scores, class_probs, suppressed, version) of one request. Triton gets what is left
        of the deadline as the request's timeout, so its queues drop the request when nobody
        waits for it any more (the steps' queue policy allows the override). The classifier's
        view is small (s x s x 3 bytes) and always goes inline."""
        batch = np.ascontiguousarray(canvas[None], dtype=IMAGE.dtype)
        inputs = ensemble_inputs(self.kind, batch, view[None], tau, inline_image=not via_shm)
        image = inputs[0]
        outputs = map_back_outputs(self.kind)
        client = self.grpc if self.grpc is not None else self.client
        until = time.monotonic() + wait

        def infer():
            left = max(until - time.monotonic(), 0.001)
            # gRPC: also the call's deadline, so that Triton sees the request cancelled.
            extra = {"client_timeout": left} if self.grpc is not None else {}
            return client.infer(
                ENSEMBLE,
                inputs,
                model_version=version,  # the version it was framed for ("": the served one)
                outputs=outputs,
                timeout=int(left * 1e6),
                **extra,
            )

        if not via_shm or self.pool is None:
            if via_shm:  # asked for, but there is no pool: inline after all
                image.set_data_from_numpy(batch)
            result = await infer()
            return self._unpack(result, result.as_numpy(SCORES.name))
        scores_bytes = 4 * classes * canvas.shape[0] * canvas.shape[1]
        async with self.pool.slot(batch.nbytes, scores_bytes, wait) as slot:
            self.pool.write(slot.input, batch)
            image.set_shared_memory(slot.input.name, batch.nbytes)
            outputs[0].set_shared_memory(slot.output.name, scores_bytes)
            result = await infer()
            output = result.get_output(SCORES.name)
            shape = output.shape if self.grpc is not None else output["shape"]
            return self._unpack(result, self.pool.read(slot.output, np.float32, shape))

    def _unpack(self, result, scores: np.ndarray):
        response = result.get_response()
        version = response.model_version if self.grpc is not None else response["model_version"]
        return (
            scores[0],
            result.as_numpy(CLASS_PROBS.name)[0],
            result.as_numpy(SUPPRESSED.name)[0],
            str(version),
        )

    async def _infer_any(
        self,
        canvas: np.ndarray,
        view: np.ndarray,
        tau: float,
        classes: int,
        wait: float,
        version: str,
    ):
        """Through shared memory when there is a pool; when Triton no longer knows a region
        (it restarted) or a region is too small (a version with more classes), registrations
        are renewed on the next use and this request goes inline."""
        if self.pool is None:
            return await self._infer(canvas, view, tau, classes, False, wait, version)
        try:
            return await self._infer(canvas, view, tau, classes, True, wait, version)
        except NoRoom:
            return await self._infer(canvas, view, tau, classes, False, wait, version)
        except InferenceServerException as error:
            if "shared memory" not in (error.message() or str(error)).lower():
                raise
            self.pool.forget_registrations()
            return await self._infer(canvas, view, tau, classes, False, wait, version)

    async def segment(
        self,
        canvas: np.ndarray,
        view: np.ndarray,
        tau: float,
        classes: int,
        wait: float | None = None,
        version: int | None = None,
    ) -> Segmentation:
        """``canvas``/``view``: the letterboxed image and the classifier's view
        (``s4seg.letterbox.Framing``). ``wait``: what is left of the request's deadline
        (default: the whole timeout). ``version``: the version they were framed for; Triton
        runs that one or none (``VersionMoved``), never another with this framing."""
        wait = self.timeout if wait is None else wait
        pinned = "" if version is None else str(version)
        try:
            scores, class_probs, suppressed, version_run = await asyncio.wait_for(
                self._infer_any(canvas, view, tau, classes, wait, pinned), timeout=wait
            )
        except TimeoutError:
            TRITON_ERRORS.labels("timeout").inc()
            raise TritonFailed(f"Triton did not answer within {wait:.3g} s", 504) from None
        except NoSlot as error:
            TRITON_ERRORS.labels("busy").inc()
            raise TritonUnavailable(str(error)) from None
        except InferenceServerException as error:
            message = error.message() or str(error)
            status = str(error.status() or "")  # gRPC: StatusCode.UNAVAILABLE while it is down
            if "DEADLINE_EXCEEDED" in status or any(h in message.lower() for h in TIMEOUT_HINTS):
                TRITON_ERRORS.labels("timeout").inc()
                detail = f"no answer within the request deadline: {message}"
                raise TritonFailed(detail, 504) from None
            if pinned and "version" in message.lower() and "exceeds" not in message.lower():
                self._served = (0.0, None)  # ask Triton again, no grace
                raise VersionMoved(f"version {pinned} is no longer served: {message}") from None
            if "UNAVAILABLE" in status or any(h in message.lower() for h in UNAVAILABLE_HINTS):
                TRITON_ERRORS.labels("unavailable").inc()
                raise TritonUnavailable(f"the model is not ready: {message}") from None
            TRITON_ERRORS.labels("inference").inc()
            raise TritonFailed(f"Triton could not run the model: {message}") from None
        except (aiohttp.ClientError, OSError) as error:
            TRITON_ERRORS.labels("unreachable").inc()
            raise TritonUnavailable(f"Triton is unreachable at {self.url}: {error}") from None
        return Segmentation(scores, class_probs, suppressed, version_run)

    async def served_version(self, max_age: float = SERVED_VERSION_TTL) -> int | None:
        """The version the ensemble's loaded config pins (None: not loaded / unreachable).

        Cached for ``max_age`` seconds so that requests do not each cost a second round trip;
        responses still name the version that actually ran (Triton's answer)."""
        checked, version = self._served
        if version is not None and time.monotonic() - checked < max_age:
            return version
        # One query at a time: requests that find the cache stale while Triton is slow wait
        # for the query in flight instead of each sending their own (review M4c).
        async with self._fetching:
            if self._served[0] > checked:  # another request just asked
                return self._served[1]
            fetched = await self._fetch_served_version()
        if fetched is None and version is not None and time.monotonic() - checked < SERVED_GRACE:
            # Triton answers no config while it reloads the ensemble (loading or unloading a
            # step version reloads the ensembles that use it): keep the version known a moment
            # ago; if Triton is really gone, the inference says so.
            return version
        self._served = (time.monotonic(), fetched)
        return fetched

    async def _fetch_served_version(self) -> int | None:
        try:
            config = await asyncio.wait_for(self.client.get_model_config(ENSEMBLE), QUERY_TIMEOUT)
        except (TimeoutError, InferenceServerException, aiohttp.ClientError, OSError):
            return None
        versions = config.get("version_policy", {}).get("specific", {}).get("versions", [])
        return int(versions[0]) if versions else None

    async def readiness(self, max_age: float = READINESS_TTL) -> tuple[bool, str]:
        """``_readiness``, asked at most once a ``max_age`` (one query in flight): a flood of
        public /readyz calls costs Triton nothing more (review M7)."""
        checked, answer = self._readiness_seen
        if time.monotonic() - checked < max_age:
            return answer
        async with self._readiness_lock:
            if self._readiness_seen[0] > checked:
                return self._readiness_seen[1]
            answer = await self._readiness()
            self._readiness_seen = (time.monotonic(), answer)
            return answer

    async def _readiness(self) -> tuple[bool, str]:
        """``_health``; a health query that times out (Triton busy) is ready within
        ``SERVED_GRACE`` of Triton's last plain "ready", so that replicas loading together
        under load are not all taken out of the Service at once; any "no" forgets that."""
        try:
            answer = await self._health()
        except TimeoutError:
            since = time.monotonic() - self._ready_at
            if since < SERVED_GRACE:
                return True, f"ready (Triton is slow to answer; it was ready {since:.0f} s ago)"
            return False, f"Triton at {self.url} has not answered for {QUERY_TIMEOUT:g} s"
        if answer == READY:
            self._ready_at = time.monotonic()
        elif not answer[0]:
            self._ready_at = -math.inf
        return answer

    async def _health(self) -> tuple[bool, str]:
        """Ready as the segment route serves: while Triton reloads the ensemble (every version
        switch), it answers "not ready" but runs requests; within ``SERVED_GRACE`` of a known
        served version that is ready too, so that replicas switching together are not all
        taken out of the Service at once (review M4d). Raises TimeoutError when a query runs
        out of ``QUERY_TIMEOUT``."""
        try:
            if not await asyncio.wait_for(self.client.is_server_live(), QUERY_TIMEOUT):
                return False, "Triton is not live"
            if not await asyncio.wait_for(self.client.is_model_ready(ENSEMBLE), QUERY_TIMEOUT):
                if await self.served_version() is not None:
                    return True, "ready (the ensemble is reloading for a version switch)"
                return False, f"the '{ENSEMBLE}' ensemble is not ready (nothing published?)"
        except TimeoutError:  # an OSError, but not a refusal: the caller decides
            raise
        except (InferenceServerException, aiohttp.ClientError, OSError) as error:
            return False, f"Triton is unreachable at {self.url}: {error or type(error).__name__}"
        return READY

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        await self.client.close()
        if self.grpc is not None:
            await self.grpc.close()
