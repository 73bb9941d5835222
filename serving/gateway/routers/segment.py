"""``POST /v1/segment``: an image in, a label map (PNG, overlay or JSON) out."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from s4seg.imaging import ImageError, decode_image
from s4seg.letterbox import letterbox, unletterbox
from s4seg.onnx_pipeline import UNGATED_TAU
from s4seg.outputs import label_png, overlay_png, segmentation_json

from ..dependencies import CatalogDep, SettingsDep, TritonDep, require_api_key
from ..triton_client import TritonUnavailable

router = APIRouter(tags=["segment"], dependencies=[Depends(require_api_key)])


class Format(StrEnum):
    png = "png"
    json = "json"
    overlay = "overlay"


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
            "content": {"image/png": {}, "application/json": {}},
            "description": "png: palette-indexed label map; overlay: image blended with the "
            "palette; json: classes present (pixel counts, COCO RLE masks), probabilities",
        },
        401: {"description": "missing or wrong X-API-Key"},
        413: {"description": "body or image too large"},
        415: {"description": "not an image / unsupported mode"},
        422: {"description": "corrupt or truncated image, bad parameter"},
        503: {"description": "Triton or the model not ready"},
    },
)
async def segment(
    request: Request,
    settings: SettingsDep,
    triton: TritonDep,
    catalog: CatalogDep,
    format: Annotated[Format, Query(description="png, overlay or json")] = Format.png,
    tau: Annotated[
        float | None, Query(ge=0.0, le=1.0, description="gate threshold (default: manifest's)")
    ] = None,
    gate: Annotated[bool, Query(description="false: no classifier gating")] = True,
) -> Response:
    data = await read_image_bytes(request)
    decoded = await run_in_threadpool(decode_image, data, settings.max_pixels)
    served = await triton.served_version()
    if served is None:
        raise TritonUnavailable("no version is being served (Triton down or nothing published)")
    manifest = catalog.manifest(served)
    used_tau = manifest.request_tau(tau, gate)
    canvas, placement = await run_in_threadpool(
        letterbox, decoded.pixels, tuple(manifest.input_size), tuple(manifest.pad_value)
    )
    result = await triton.segment(canvas, used_tau)
    if result.version != str(served):  # switched in between: describe what actually ran
        manifest = catalog.manifest(result.version)
    labels = await run_in_threadpool(unletterbox, result.labels, placement)
    headers = {"X-Model-Version": result.version}
    if format is Format.json:
        body = segmentation_json(
            labels, result.class_probs, result.suppressed, manifest, result.version,
            None if used_tau == UNGATED_TAU else used_tau,  # gate=false, or served "gate off"
        )  # fmt: skip
        return JSONResponse(body, headers=headers)
    if format is Format.overlay:
        content = await run_in_threadpool(overlay_png, decoded.pixels, labels, manifest)
    else:
        content = await run_in_threadpool(label_png, labels, manifest)
    return Response(content=content, media_type="image/png", headers=headers)
