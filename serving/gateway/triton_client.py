"""The gateway's one long-lived async client of the Triton ensemble."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import numpy as np
import tritonclient.http.aio as triton_aio
from tritonclient.http import InferInput
from tritonclient.utils import InferenceServerException

from s4seg.repository import ENSEMBLE
from s4seg.tensors import CLASS_PROBS, IMAGE, LABELS, SUPPRESSED, TAU

from .metrics import TRITON_ERRORS


class TritonUnavailable(Exception):
    """Triton is down, not ready, or has no ready ensemble (HTTP 503)."""


class TritonFailed(Exception):
    """Triton answered the request with an error (HTTP 502) or too late (504)."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Segmentation:
    labels: np.ndarray  # (H, W) uint8 at the canvas size
    class_probs: np.ndarray  # (C,)
    suppressed: np.ndarray  # (C,) bool
    version: str


SERVED_VERSION_TTL = 0.5  # seconds

UNAVAILABLE_HINTS = ("unknown model", "not ready", "no available versions", "unavailable")


class TritonEnsemble:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.removeprefix("http://")
        self.timeout = timeout
        self.client = triton_aio.InferenceServerClient(self.url, conn_timeout=timeout)
        self._served: tuple[float, int | None] = (0.0, None)

    async def segment(self, canvas: np.ndarray, tau: float) -> Segmentation:
        image = InferInput(IMAGE.name, [1, *canvas.shape], IMAGE.wire_type)
        image.set_data_from_numpy(canvas[None].astype(IMAGE.dtype, copy=False))
        taus = InferInput(TAU.name, [1, 1], TAU.wire_type)
        taus.set_data_from_numpy(np.array([[tau]], dtype=TAU.dtype))
        try:
            result = await asyncio.wait_for(
                self.client.infer(ENSEMBLE, [image, taus]), timeout=self.timeout
            )
        except TimeoutError:
            TRITON_ERRORS.labels("timeout").inc()
            raise TritonFailed(f"Triton did not answer within {self.timeout:g} s", 504) from None
        except InferenceServerException as error:
            message = error.message() or str(error)
            if any(hint in message.lower() for hint in UNAVAILABLE_HINTS):
                TRITON_ERRORS.labels("unavailable").inc()
                raise TritonUnavailable(f"the model is not ready: {message}") from None
            TRITON_ERRORS.labels("inference").inc()
            raise TritonFailed(f"Triton could not run the model: {message}") from None
        except (aiohttp.ClientError, OSError) as error:
            TRITON_ERRORS.labels("unreachable").inc()
            raise TritonUnavailable(f"Triton is unreachable at {self.url}: {error}") from None
        return Segmentation(
            result.as_numpy(LABELS.name)[0],
            result.as_numpy(CLASS_PROBS.name)[0],
            result.as_numpy(SUPPRESSED.name)[0],
            str(result.get_response().get("model_version", "")),
        )

    async def served_version(self, max_age: float = SERVED_VERSION_TTL) -> int | None:
        """The version the ensemble's loaded config pins (None: not loaded / unreachable).

        Cached for ``max_age`` seconds so that requests do not each cost a second round trip;
        responses still name the version that actually ran (Triton's answer)."""
        checked, version = self._served
        if version is not None and time.monotonic() - checked < max_age:
            return version
        version = await self._fetch_served_version()
        self._served = (time.monotonic(), version)
        return version

    async def _fetch_served_version(self) -> int | None:
        try:
            config = await asyncio.wait_for(self.client.get_model_config(ENSEMBLE), 5)
        except (TimeoutError, InferenceServerException, aiohttp.ClientError, OSError):
            return None
        versions = config.get("version_policy", {}).get("specific", {}).get("versions", [])
        return int(versions[0]) if versions else None

    async def readiness(self) -> tuple[bool, str]:
        try:
            if not await asyncio.wait_for(self.client.is_server_live(), 5):
                return False, "Triton is not live"
            if not await asyncio.wait_for(self.client.is_model_ready(ENSEMBLE), 5):
                return False, f"the '{ENSEMBLE}' ensemble is not ready (nothing published?)"
        except (TimeoutError, InferenceServerException, aiohttp.ClientError, OSError) as error:
            return False, f"Triton is unreachable at {self.url}: {error or type(error).__name__}"
        return True, "ready"

    async def close(self) -> None:
        await self.client.close()
