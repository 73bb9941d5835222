"""The naive baseline of ``s4seg bench serve``: one FastAPI process running the PyTorch models
eagerly (no Triton, no ONNX, no batching), doing the gateway's work per request: the JPEG
decoded at the reduced scale the served size allows, the classifier's own view, the gated
scores mapped back to the photo's size before the argmax, a palette PNG. The benchmark starts
it with uvicorn (``create_app`` as the factory, the export in ``S4SEG_NAIVE_EXPORT``):

    S4SEG_NAIVE_EXPORT=exports/v1 uvicorn --factory s4seg.workflows.bench.naive_endpoint:create_app
"""

from __future__ import annotations

import os

import numpy as np
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from s4seg.imaging import decode_image
from s4seg.letterbox import Framing, labels_from_scores
from s4seg.manifest import Manifest
from s4seg.outputs import label_png

EXPORT_VARIABLE = "S4SEG_NAIVE_EXPORT"


def create_app(export: str | None = None) -> FastAPI:
    """The endpoint for the export folder ``export`` (default: ``$S4SEG_NAIVE_EXPORT``)."""
    import torch  # here, so that importing this module (bench serve does) costs nothing

    from s4seg.export.exporter import build_graphs
    from s4seg.training.checkpoint import Checkpoint

    manifest = Manifest.load(export or os.environ.get(EXPORT_VARIABLE, "."))
    graphs, _, _ = build_graphs(
        Checkpoint.load(manifest.sources["segmenter"].path),
        Checkpoint.load(manifest.sources["classifier"].path)
        if "classifier" in manifest.sources
        else None,
    )
    framing = Framing.of(manifest)
    app = FastAPI(title="naive PyTorch endpoint (benchmark baseline)")

    @torch.no_grad()
    def predict(data: bytes) -> bytes:
        decoded = decode_image(data, fit=framing.fit)
        framed = framing.frame(decoded.pixels, decoded.size)
        seg_input, cls_input = graphs["preprocess"](
            torch.from_numpy(framed.canvas[None]), torch.from_numpy(framed.view[None])
        )
        logits = graphs["segmenter"](seg_input)
        probs = graphs["classifier"](cls_input)
        _, _, scores = graphs["gate"](logits, probs, torch.full((1, 1), manifest.tau))
        return label_png(labels_from_scores(np.asarray(scores[0]), framed.placement), manifest)

    @app.post("/v1/segment")
    async def segment(request: Request) -> Response:
        content = await run_in_threadpool(predict, await request.body())
        return Response(content, media_type="image/png")

    return app
