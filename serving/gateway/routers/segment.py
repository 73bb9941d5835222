"""``POST /v1/segment``: an image in, a label map (PNG, overlay or JSON) out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from s4seg.imaging import ImageError, decode_image, image_pixels
from s4seg.letterbox import Framing, Placement, labels_from_scores
from s4seg.manifest import Manifest
from s4seg.onnx_pipeline import UNGATED_TAU
from s4seg.outputs import (
    OVERLAY_ENCODINGS,
    Answer,
    label_png,
    overlay_bytes,
    segmentation_json,
)
from s4seg.quality import answer_quality, uncertainty_map

from ..dependencies import (
    BudgetDep,
    CatalogDep,
    DeadlineDep,
    SettingsDep,
    TritonDep,
    WorkDep,
    require_api_key,
)
from ..metrics import record_quality
from ..triton_client import Segmentation, TritonUnavailable, VersionMoved
from ..work import RequestWork

router = APIRouter(tags=["segment"], dependencies=[Depends(require_api_key)])


class Format(StrEnum):
    png = "png"
    json = "json"
    overlay = "overlay"


Encoding = StrEnum("Encoding", {name: name for name in OVERLAY_ENCODINGS})  # type: ignore[misc]


BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def read_image_bytes(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ImageError("multipart body has no 'file' part", 422, "no_file")
        return await upload.read()
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return await request.body()
    raise ImageError(
        f"send the image as a multipart 'file' field or as a raw image/* body, not "
        f"{content_type or 'no content type'}",
        415,
        "unsupported_media_type",
    )


@router.post(
    "/v1/segment",
    summary="Segment an image",
    openapi_extra=BODY_DOC,
    responses={
        200: {
            "content": {
                "image/png": {},
                "image/jpeg": {},
                "image/webp": {},
                "application/json": {},
            },
            "description": "png: palette-indexed label map; overlay: image blended with the "
            "palette (PNG, or JPEG/WebP with encoding=); json: classes present (pixel counts, "
            "COCO RLE masks), probabilities. All at the image's own size.",
        },
        401: {"description": "missing or wrong X-API-Key"},
        413: {"description": "body or image too large"},
        415: {"description": "not an image / unsupported mode"},
        408: {"description": "the body stalled or did not arrive within the deadline"},
        422: {"description": "corrupt or truncated image, bad parameter"},
        503: {"description": "Triton or the model not ready, or the server is busy (Retry-After)"},
        504: {"description": "no answer within the request deadline"},
    },
)
async def segment(  # noqa: PLR0913 (a route: its query parameters and dependencies)
    request: Request,
    settings: SettingsDep,
    triton: TritonDep,
    catalog: CatalogDep,
    budget: BudgetDep,
    deadline: DeadlineDep,
    work: WorkDep,
    format: Annotated[Format, Query(description="png, overlay or json")] = Format.png,
    tau: Annotated[
        float | None, Query(ge=0.0, le=1.0, description="gate threshold (default: manifest's)")
    ] = None,
    gate: Annotated[bool, Query(description="false: no classifier gating")] = True,
    encoding: Annotated[
        Encoding | None,
        Query(description="overlay only: png (default), jpeg or webp (smaller, much faster)"),
    ] = None,
    uncertainty: Annotated[
        bool,
        Query(
            description="json only: add uncertainty_map, a PNG data URI of 1 - the calibrated "
            "confidence per pixel over the image's content, at the network's output size"
        ),
    ] = False,
) -> Response:
    check_options(format, encoding, uncertainty)
    data = await read_image_bytes(request)
    # The header only (413/415/422 before work), in a worker: a PNG's text chunks or a TIFF's
    # directories cost event-loop time that /healthz needs (review H3).
    pixels = await work.run(image_pixels, data, settings.max_pixels)
    served = await triton.served_version()
    if served is None:  # before any decoding (review L3)
        raise TritonUnavailable("no version is being served (Triton down or nothing published)")
    manifest = catalog.manifest(served)
    client = getattr(request.state, "client", "")
    async with budget.hold(pixels, deadline.to_wait(), work, client):  # decoded pixels in flight
        # Only the overlay shows the photo's own pixels; the model needs its served size at most.
        def fit_of(framing: Framing) -> tuple[int, int] | None:
            return framing.fit if format is not Format.overlay else None

        framing = Framing.of(manifest)
        decoded = await work.run(decode_image, data, settings.max_pixels, fit_of(framing))
        for attempt in range(2):
            used_tau = manifest.request_tau(tau, gate)
            framed = await work.run(framing.frame, decoded.pixels, decoded.size)
            try:  # Triton runs the version this was framed for, or none (review M4a)
                result = await triton.segment(
                    framed.canvas,
                    framed.view,
                    used_tau,
                    manifest.num_classes,
                    deadline.remaining(),
                    served,
                )
                break
            except VersionMoved:
                if attempt:
                    raise
                # Switched (or rolled back) in between: frame again for the version now served.
                served = await triton.served_version(max_age=0)
                if served is None:
                    raise
                manifest, before = catalog.manifest(served), fit_of(framing)
                framing = Framing.of(manifest)
                if fit_of(framing) != before:
                    decoded = await work.run(
                        decode_image, data, settings.max_pixels, fit_of(framing)
                    )
        answer = await answered(work, result, framed.placement, manifest, used_tau, uncertainty)
        return await render(answer, format, encoding, decoded.pixels, work)


def check_options(format: Format, encoding: Encoding | None, uncertainty: bool) -> None:
    """Options that apply to one format only are refused with the others (422), before work."""
    if uncertainty and format is not Format.json:
        raise ImageError(
            "uncertainty=true applies to format=json only (the map comes as a PNG in the JSON)",
            422,
            "bad_parameter",
        )
    if encoding is not None and format is not Format.overlay:
        raise ImageError(
            f"encoding={encoding} applies to format=overlay only (label maps are lossless PNG, "
            "json is JSON)",
            422,
            "bad_parameter",
        )


async def answered(
    work: RequestWork,
    result: Segmentation,
    placement: Placement,
    manifest: Manifest,
    used_tau: float,
    uncertainty: bool = False,
) -> Answer:
    """The ensemble's answer mapped back to the image's size, with its quality (recorded per
    served version) and, when asked, its uncertainty map."""
    scores, class_probs = result.scores, result.class_probs
    labels = await work.run(labels_from_scores, scores, placement)
    quality = await work.run(answer_quality, scores, placement, class_probs, manifest)
    record_quality(result.version, quality)
    tau = None if used_tau == UNGATED_TAU else used_tau  # gate=false, or served "gate off"
    unsure = await work.run(uncertainty_map, scores, placement, manifest) if uncertainty else None
    return Answer(
        labels, class_probs, result.suppressed, manifest, result.version, tau, quality, unsure
    )


async def render(
    answer: Answer,
    format: Format,
    encoding: Encoding | None,
    photo: np.ndarray,
    work: RequestWork,
) -> Response:
    """The answer in the format asked for: a label PNG, an overlay on the photo, or JSON."""
    headers = {"X-Model-Version": answer.version}
    if format is Format.json:
        content = await work.run(json_body, answer)
        media_type = "application/json"
    elif format is Format.overlay:
        chosen = encoding.value if encoding is not None else "png"
        content = await work.run(overlay_bytes, photo, answer.labels, answer.manifest, chosen)
        media_type = OVERLAY_ENCODINGS[chosen][1]
    else:
        content = await work.run(label_png, answer.labels, answer.manifest)
        media_type = "image/png"
    return answer_of(content, media_type, headers)


CHUNK = 256 * 1024


def answer_of(content: bytes, media_type: str, headers: dict[str, str]) -> Response:
    """Small answers whole; larger ones in chunks, each written when the client has taken the
    one before (the request, and the pixels it holds, last until the answer is out: a client
    that stops reading is dropped by the protocol's write timeout)."""
    if len(content) <= CHUNK:
        return Response(content=content, media_type=media_type, headers=headers)
    view = memoryview(content)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start : start + CHUNK])

    headers = {**headers, "Content-Length": str(len(content))}
    return StreamingResponse(chunks(), media_type=media_type, headers=headers)


def json_body(answer: Answer) -> bytes:
    """``segmentation_json`` rendered (COCO RLE per class over the full-size label map: a
    worker's job, not the event loop's)."""
    body = segmentation_json(answer)
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
