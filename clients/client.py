"""Python clients of the gateway's HTTP API, synchronous and asynchronous.

from s4seg.clients import SegmentationClient
with SegmentationClient("http://127.0.0.1:8080") as client:
    result = client.segment("photo.jpg", format="json")
    print(result.version, [c["name"] for c in result.json["classes"]])
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from s4seg.errors import S4segError

DEFAULT_URL = "http://127.0.0.1:8080"
ImageInput = str | os.PathLike | bytes | np.ndarray | Image.Image


class ClientError(S4segError):
    """The gateway refused or failed a request; ``status`` and ``code`` say why."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


@dataclass
class SegmentResult:
    format: str
    content: bytes
    version: str

    @property
    def json(self) -> dict[str, Any]:
        if self.format != "json":
            raise ValueError(f"a {self.format} result has no JSON")
        import json

        return json.loads(self.content)

    def labels(self) -> np.ndarray:
        """The label map (H, W) of a png result: pixel values are class indices."""
        if self.format != "png":
            raise ValueError(f"a {self.format} result is not a label map")
        return np.asarray(Image.open(io.BytesIO(self.content)))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_bytes(self.content)
        return path


def image_bytes(image: ImageInput) -> tuple[bytes, str]:
    """Bytes and content type to send; arrays and PIL images are sent as PNG."""
    if isinstance(image, bytes):
        return image, "application/octet-stream"
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes(), "application/octet-stream"
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


def _request_args(
    image: ImageInput, format: str, tau: float | None, gate: bool, encoding: str | None = None
) -> dict[str, Any]:
    data, content_type = image_bytes(image)
    params: dict[str, Any] = {"format": format, "gate": str(gate).lower()}
    if tau is not None:
        params["tau"] = tau
    if encoding is not None:
        params["encoding"] = encoding
    return {"content": data, "params": params, "headers": {"Content-Type": content_type}}


def _result(response: httpx.Response, format: str) -> SegmentResult:
    if response.status_code != 200:
        try:
            body = response.json()
        except ValueError:
            raise ClientError(response.status_code, "error", response.text[:200]) from None
        raise ClientError(response.status_code, body.get("error", "error"), body.get("detail", ""))
    return SegmentResult(format, response.content, response.headers.get("x-model-version", ""))


def _headers(api_key: str | None) -> dict[str, str]:
    key = api_key or os.environ.get("S4SEG_API_KEY")
    return {"X-API-Key": key} if key else {}


class SegmentationClient:
    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60):
        self.http = httpx.Client(base_url=url, headers=_headers(api_key), timeout=timeout)

    def segment(
        self,
        image: ImageInput,
        format: str = "png",
        tau: float | None = None,
        gate: bool = True,
        encoding: str | None = None,
    ) -> SegmentResult:
        """``encoding``: for ``format="overlay"``, png (default), jpeg or webp."""
        try:
            args = _request_args(image, format, tau, gate, encoding)
            response = self.http.post("/v1/segment", **args)
        except httpx.HTTPError as error:
            raise ClientError(0, "unreachable", f"{self.http.base_url}: {error}") from None
        return _result(response, format)

    def models(self) -> dict:
        return self.http.get("/v1/models").raise_for_status().json()

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncSegmentationClient:
    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60):
        self.http = httpx.AsyncClient(base_url=url, headers=_headers(api_key), timeout=timeout)

    async def segment(
        self,
        image: ImageInput,
        format: str = "png",
        tau: float | None = None,
        gate: bool = True,
        encoding: str | None = None,
    ) -> SegmentResult:
        try:
            args = _request_args(image, format, tau, gate, encoding)
            response = await self.http.post("/v1/segment", **args)
        except httpx.HTTPError as error:
            raise ClientError(0, "unreachable", f"{self.http.base_url}: {error}") from None
        return _result(response, format)

    async def models(self) -> dict:
        return (await self.http.get("/v1/models")).raise_for_status().json()

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncSegmentationClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
