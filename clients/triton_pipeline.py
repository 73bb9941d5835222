"""The Triton ensemble behind the same ``run(images, tau)`` as the in-process ONNX pipeline."""

from __future__ import annotations

import numpy as np

from s4seg.errors import S4segError
from s4seg.manifest import Manifest
from s4seg.onnx_pipeline import PipelineOutput
from s4seg.tensors import CLASS_PROBS, IMAGE, LABELS, SCORES, SUPPRESSED, TAU

ENSEMBLE = "s4seg"


class TritonPipeline:
    """Synchronous HTTP client of the ``s4seg`` ensemble (for evaluation and batch jobs)."""

    def __init__(self, url: str, manifest: Manifest, timeout: float = 120.0) -> None:
        import tritonclient.http as http

        self._http = http
        self.manifest = manifest
        self.url = url.removeprefix("http://")
        self.client = http.InferenceServerClient(
            self.url, connection_timeout=timeout, network_timeout=timeout
        )
        self.last_version: str | None = None
        try:
            ready = self.client.is_model_ready(ENSEMBLE)
        except Exception as error:
            raise S4segError(f"Triton at {url} is not reachable: {error}") from None
        if not ready:
            raise S4segError(f"Triton at {url} has no ready '{ENSEMBLE}' ensemble")

    def run(self, images: np.ndarray, tau: float | None = None) -> PipelineOutput:
        tau = self.manifest.request_tau(tau)
        image = self._http.InferInput(IMAGE.name, list(images.shape), IMAGE.wire_type)
        image.set_data_from_numpy(np.ascontiguousarray(images, dtype=IMAGE.dtype))
        taus = self._http.InferInput(TAU.name, [len(images), 1], TAU.wire_type)
        taus.set_data_from_numpy(np.full((len(images), 1), tau, dtype=TAU.dtype))
        result = self.client.infer(ENSEMBLE, [image, taus])
        self.last_version = result.get_response().get("model_version")
        return PipelineOutput(
            result.as_numpy(LABELS.name),
            result.as_numpy(CLASS_PROBS.name),
            result.as_numpy(SUPPRESSED.name),
            result.as_numpy(SCORES.name),
        )

    def close(self) -> None:
        self.client.close()
