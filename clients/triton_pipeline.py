"""The Triton ensemble behind the same ``run(images, tau)`` as the in-process ONNX pipeline."""

from __future__ import annotations

import numpy as np

from s4seg.errors import S4segError
from s4seg.manifest import Manifest
from s4seg.onnx_pipeline import PipelineOutput, check_batch
from s4seg.repository import ENSEMBLE
from s4seg.tensors import CLASS_PROBS, LABELS, SCORES, SUPPRESSED
from s4seg.triton_request import ensemble_inputs


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

    def run(
        self, images: np.ndarray, views: np.ndarray, tau: float | None = None
    ) -> PipelineOutput:
        """As ``OnnxPipeline.run``: canvases and the classifier's views."""
        check_batch(images, views, self.manifest.classifier_view_size)
        tau = self.manifest.request_tau(tau)
        result = self.client.infer(ENSEMBLE, ensemble_inputs(self._http, images, views, tau))
        self.last_version = result.get_response().get("model_version")
        return PipelineOutput(
            result.as_numpy(LABELS.name),
            result.as_numpy(CLASS_PROBS.name),
            result.as_numpy(SUPPRESSED.name),
            result.as_numpy(SCORES.name),
        )

    def close(self) -> None:
        self.client.close()
