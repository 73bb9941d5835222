"""The naive baseline of ``s4seg bench serve``: one FastAPI process running the PyTorch models
eagerly (no Triton, no ONNX, no batching), doing the gateway's work per request: the JPEG
decoded at the reduced scale the served size allows, the gated scores mapped back to the
photo's size before the argmax, a palette PNG. Started by the benchmark with uvicorn:

    S4SEG_NAIVE_EXPORT=exports/v1 uvicorn s4seg.export.naive_endpoint:app --port 9000
"""

from __future__ import annotations

import os

import numpy as np
import torch
from fastapi import FastAPI, Request, Response
from s4seg.training.checkpoint import load_checkpoint
from starlette.concurrency import run_in_threadpool

from s4seg.imaging import decode_image
from s4seg.letterbox import Framing, labels_from_scores
from s4seg.manifest import Manifest
from s4seg.outputs import label_png

from .exporter import build_graphs

manifest = Manifest.load(os.environ.get("S4SEG_NAIVE_EXPORT", "."))
graphs, _, _ = build_graphs(
    load_checkpoint(manifest.sources["segmenter"].path),
    load_checkpoint(manifest.sources["classifier"].path)
    if "classifier" in manifest.sources
    else None,
)
app = FastAPI(title="naive PyTorch endpoint (benchmark baseline)")


@torch.no_grad()
def predict(data: bytes) -> bytes:
    framing = Framing.of(manifest)
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
