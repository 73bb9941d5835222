"""Settings of ``s4seg serve`` and the gateway: flags override environment variables
(``S4SEG_*``), which override these defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from s4seg.defaults import REPOSITORY, SEGMENTER_INSTANCES


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="S4SEG_", extra="forbid")

    repository: Path = Field(REPOSITORY, description="Triton model repository")
    host: str = Field("127.0.0.1", description="gateway address (0.0.0.0 to serve other hosts)")
    port: int = Field(8080, description="gateway port")
    triton_host: str = Field("127.0.0.1", description="Triton's ports bind here (keep loopback)")
    triton_http_port: int = Field(8000, description="Triton's HTTP port (when started here)")
    triton_grpc_port: int = Field(8001, description="Triton's gRPC port (when started here)")
    triton_metrics_port: int = Field(8002, description="Triton's metrics port (when started here)")
    triton_url: str | None = Field(None, description="use a Triton already running here instead")
    triton_grpc_url: str | None = Field(
        None, description="its gRPC address (with triton_url; without it requests use HTTP)"
    )
    triton_protocol: Literal["http", "grpc"] = Field(
        "grpc",
        description="inference requests from the gateway to Triton: gRPC was 1.1-1.4x HTTP "
        "at concurrency 1-16 in `s4seg bench serve` (BENCHMARKS.md)",
    )
    runtime: str = Field(
        "python",
        description="python (pip tritonserver), onnxruntime or openvino (native backends, NGC)",
    )
    segmenter_instances: int = Field(
        SEGMENTER_INSTANCES, ge=1, description="segmenter executions in flight"
    )
    onnx_threads: int | None = Field(
        None, ge=1, description="ONNX Runtime threads per instance (default: cores / instances)"
    )
    triton_shared_memory: bool | None = Field(
        None,
        description="image and scores through system shared memory (default: when Triton is "
        "started here, i.e. without triton_url)",
    )
    api_key: SecretStr | None = Field(None, description="require this key in X-API-Key")
    max_body_bytes: int = Field(20 * 2**20, description="larger uploads get 413")
    max_pixels: int = Field(40_000_000, description="larger images get 413 (checked pre-decode)")
    request_timeout: float = Field(
        30.0, gt=0, description="one deadline per request, from its arrival to its answer"
    )
    max_in_flight: int = Field(
        32, ge=1, description="segment requests handled at once; more get 503 at once"
    )
    max_pixels_in_flight: int | None = Field(
        None,
        ge=1,
        description="decoded pixels of the requests in flight (memory: up to about 20 bytes "
        "each, docs/serving.md); beyond it requests wait, in arrival order, then 503 (default: "
        "2.5 x max_pixels, 100 MP: a few large photos at once)",
    )
    max_in_flight_per_client: int | None = Field(
        None,
        ge=1,
        description="of those, from one client address, then 429 (default: three "
        "quarters: other clients always find a quarter)",
    )
    header_timeout: float = Field(5.0, gt=0, description="seconds for a request's headers")
    write_timeout: float = Field(
        30.0,
        gt=0,
        description="an answer whose client reads none of it for this long is "
        "aborted (the connection dropped)",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="connections and requests at once (uvicorn's limit_concurrency); beyond it 503",
    )
    shutdown_timeout: float = Field(
        20.0, gt=0, description="on SIGTERM, requests in progress get this long to finish"
    )
    body_timeout: float = Field(
        10.0, gt=0, description="a request body that sends nothing for this long gets 408"
    )
    body_total_timeout: float = Field(
        60.0, gt=0, description="a segment request's body must be complete within this (408)"
    )
    min_body_rate: float = Field(
        16384.0,
        gt=0,
        description="bytes/s a segment request's body must average after its first 2 s (408)",
    )
    max_receiving: int = Field(
        64,
        ge=1,
        description="segment request bodies arriving at once (then 503); a body is "
        "received whole before its request is admitted",
    )
    max_uploads_per_client: int | None = Field(
        None,
        ge=1,
        description="of those, from one client address, then 429 (default: three quarters)",
    )
    max_pixels_per_client: int | None = Field(
        None,
        ge=1,
        description="decoded pixels in flight of one client address (default: "
        "three quarters of max_pixels_in_flight, at least max_pixels)",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="proxies whose X-Forwarded-For names the client (uvicorn's setting): behind "
        "an ingress, set it to the ingress' addresses, or every request counts as one client",
    )
    docs: Literal["public", "private", "off"] | None = Field(
        None,
        description="/docs and /openapi.json: public, private (X-API-Key needed) or off "
        "(default: public without api_key, private with it)",
    )
    version_poll_seconds: float = Field(1.0, description="how often new versions are looked for")
    log_dir: Path = Field(Path("runs/serve"), description="tritonserver.log goes here")
    replica: str | None = Field(
        None,
        description="this server's name in the serving status beside the repository, which "
        "replicas of one repository write one file each (default: host name and gateway port)",
    )

    @model_validator(mode="after")
    def _budget_fits_one_image(self) -> ServeSettings:
        if self.max_pixels_in_flight is not None and self.max_pixels_in_flight < self.max_pixels:
            raise ValueError(
                f"max_pixels_in_flight ({self.max_pixels_in_flight}) is below max_pixels "
                f"({self.max_pixels}): the largest allowed image could never be served"
            )
        return self

    @property
    def pixel_budget(self) -> int:
        return self.max_pixels_in_flight or int(2.5 * self.max_pixels)

    # One client (address) holds at most three quarters of each shared bound, so that others
    # always find a quarter (security review H1, H2); alone, it still has most of the server.
    @property
    def pixels_per_client(self) -> int:
        return self.max_pixels_per_client or max(self.max_pixels, client_share(self.pixel_budget))

    @property
    def in_flight_per_client(self) -> int:
        return self.max_in_flight_per_client or client_share(self.max_in_flight)

    @property
    def uploads_per_client(self) -> int:
        return self.max_uploads_per_client or client_share(self.max_receiving)

    @property
    def docs_mode(self) -> str:
        return self.docs or ("private" if self.api_key is not None else "public")

    @property
    def threads_per_instance(self) -> int:
        import os

        return self.onnx_threads or max(1, (os.cpu_count() or 1) // self.segmenter_instances)

    @property
    def replica_name(self) -> str:
        import socket

        return self.replica or f"{socket.gethostname()}-{self.port}"

    @property
    def replica_dir(self) -> Path:
        """This replica's folder under ``log_dir``: Triton's view of the repository, its log."""
        import re

        # "." and ".." would name the log folder or its parent, which the version manager
        # empties for Triton's view (review L8): dots are kept only inside a name.
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", self.replica_name).strip(".") or "replica"
        return self.log_dir / name

    @property
    def triton_http(self) -> str:
        return self.triton_url or f"{self.triton_host}:{self.triton_http_port}"

    @property
    def inference_protocol(self) -> str:
        """gRPC needs its address: with ``triton_url`` alone (another Triton), HTTP."""
        if self.triton_url and not self.triton_grpc_url:
            return "http"
        return self.triton_protocol

    @property
    def use_shared_memory(self) -> bool:
        if self.triton_shared_memory is None:
            return self.triton_url is None
        return self.triton_shared_memory

    @property
    def triton_grpc(self) -> str:
        return self.triton_grpc_url or f"{self.triton_host}:{self.triton_grpc_port}"


def client_share(limit: int) -> int:
    """Three quarters of ``limit`` (at least 1): what one client may hold of it."""
    return max(1, limit - limit // 4)
