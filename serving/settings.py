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
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
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
        "each, docs/serving.md); beyond it requests wait, then 503 (default: max_pixels)",
    )
    header_timeout: float = Field(5.0, gt=0, description="seconds for a request's headers")
    body_timeout: float = Field(
        10.0, gt=0, description="a request body that sends nothing for this long gets 408"
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
        return self.max_pixels_in_flight or self.max_pixels

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

        return self.log_dir / re.sub(r"[^A-Za-z0-9_.-]", "_", self.replica_name)

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
