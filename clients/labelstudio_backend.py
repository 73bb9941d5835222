"""Label Studio's ML backend protocol in front of an s4seg model (issue 34, item 5): a Label
Studio project connected to ``s4seg labelstudio backend`` asks it for predictions itself, as
brush masks (``/health``, ``/setup``, ``/predict``; ``/webhook`` acknowledges and trains
nothing: s4seg retrains with ``s4seg train``).

The model is reached as ``s4seg predict`` reaches it (``clients/backends.py``: the exported
pipeline in-process, the gateway, or Triton), with JSON answers. Each task's image is read from
the one Label Studio given at start (``--label-studio``, with its token): a relative URL (local
files, uploads) or one on that same origin; any other host is refused by name, so a caller can
not make the backend fetch what it chooses. Masks are encoded by Label Studio's SDK
(``clients/labelstudio.brush_results``), for the project's own BrushLabels and image tags (read
from the label config Label Studio sends); classes the project does not name are left out.
"""

from __future__ import annotations

import hmac
import json
import logging
import tempfile
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urljoin, urlsplit

import httpx
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, Field

from s4seg.errors import S4segError
from s4seg.outputs import labels_from_json

from .backends import Backend, Segment, local_version
from .labelstudio import brush_results

log = logging.getLogger("s4seg.labelstudio")
MAX_IMAGE_BYTES = 64 << 20  # one task's image, as Label Studio serves it
MAX_TASKS = 64  # one /predict call (Label Studio sends its selection in batches)
BASIC = HTTPBasic(auto_error=False)


@dataclass(frozen=True)
class Interface:
    """What a project's label config asks for: the brush tag, its image tag and its labels."""

    from_name: str
    to_name: str
    labels: frozenset[str]
    value: str  # the task data key of the image ("image" for value="$image")


def brush_interface(label_config: str) -> Interface:
    """The first BrushLabels of a label config, or a clear error: s4seg predicts brush masks."""
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as error:
        raise S4segError(f"the project's label config is not XML: {error}") from None
    brush = next(root.iter("BrushLabels"), None)
    if brush is None:
        raise S4segError(
            "the project's label config has no BrushLabels tag: s4seg predicts brush masks "
            "(s4seg labelstudio tasks writes a config that has one)"
        )
    to_name = brush.get("toName", "")
    image = next((tag for tag in root.iter("Image") if tag.get("name") == to_name), None)
    if image is None or not image.get("value", "").startswith("$"):
        raise S4segError(f"the BrushLabels' toName={to_name!r} names no Image tag with a $value")
    labels = frozenset(tag.get("value", "") for tag in brush.iter("Label"))
    return Interface(brush.get("name", ""), to_name, labels, image.get("value", "")[1:])


class PredictBody(BaseModel):
    tasks: list[dict[str, Any]] = Field(max_length=MAX_TASKS)
    label_config: str | None = None
    project: str | None = None


class SetupBody(BaseModel):
    project: str | None = None
    schema_: str | None = Field(default=None, alias="schema")


class LabelStudioImages:
    """Reads task images from one Label Studio, and nowhere else."""

    def __init__(self, url: str, token: str | None) -> None:
        self.base = url.rstrip("/") + "/"
        self.origin = urlsplit(self.base)[:2]
        headers = {"Authorization": f"Token {token}"} if token else {}
        self.client = httpx.Client(headers=headers, timeout=30, follow_redirects=False)

    def url_of(self, reference: str) -> str:
        url = urljoin(self.base, reference)
        if urlsplit(url)[:2] != self.origin:
            raise S4segError(f"{reference} is not on {self.base} (only its images are read)")
        return url

    def fetch(self, reference: str, into: Path) -> Path:
        url = self.url_of(reference)
        try:
            with self.client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise S4segError(f"{url}: Label Studio answered {response.status_code}")
                size = 0
                with into.open("wb") as out:
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > MAX_IMAGE_BYTES:
                            raise S4segError(f"{url} is over {MAX_IMAGE_BYTES >> 20} MB")
                        out.write(chunk)
        except httpx.HTTPError as error:
            raise S4segError(f"{url}: Label Studio did not answer ({error})") from None
        return into


def predict_task(
    task: dict, interface: Interface, images: LabelStudioImages, segment: Segment, folder: Path
) -> dict:
    """One task's prediction: the model's label map as brush results, its calibrated mean
    confidence as the score."""
    reference = task.get("data", {}).get(interface.value)
    if not isinstance(reference, str):
        raise S4segError(f"it has no data.{interface.value} (the image the project labels)")
    path = images.fetch(reference, folder / "image")  # never a name from the request
    try:
        answer = json.loads(segment(path))
    finally:
        path.unlink()  # one image on disk at a time
    names = [""] * (max((c["index"] for c in answer["classes"]), default=0) + 1)
    for present in answer["classes"]:
        names[present["index"]] = present["name"]
    results = brush_results(
        labels_from_json(answer),
        names,
        None,
        f"s4seg-{task.get('id', 'new')}",
        from_name=interface.from_name,
        to_name=interface.to_name,
    )
    quality = answer.get("quality") or {}
    return {
        "result": [r for r in results if r["value"]["brushlabels"][0] in interface.labels],
        "score": quality.get("mean_confidence"),
        "model_version": f"s4seg-{answer['model_version']}",
    }


def basic_auth(expected: str | None) -> Callable[..., None]:
    """``USER:PASSWORD`` (Label Studio's "basic auth" of a connection), compared in constant
    time; None: open (the default listens on loopback only)."""

    def check(given: Annotated[HTTPBasicCredentials | None, Depends(BASIC)]) -> None:
        if expected is None:
            return
        sent = f"{given.username}:{given.password}" if given else ""
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            raise HTTPException(401, "basic auth required", {"WWW-Authenticate": "Basic"})

    return check


def backend_app(
    model: Backend, label_studio: str, token: str | None, auth: str | None = None
) -> FastAPI:
    """The ML backend: ``model`` must answer JSON (``OutputFormat("json")``)."""
    segment = model.build()
    images = LabelStudioImages(label_studio, token)
    one_at_a_time = threading.Lock()  # one batch's images and answers in memory at a time
    app = FastAPI(
        title="s4seg Label Studio ML backend",
        dependencies=[Depends(basic_auth(auth))],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    version: dict[str, str] = {}  # the model's, as its answers name it
    if model.via == "local":
        served = local_version(model.model, model.repository)
        version["last"] = f"s4seg-{'local' if served is None else served}"

    @app.get("/health")
    def health() -> dict:
        return {"status": "UP", "model_class": "s4seg", "model_version": version.get("last")}

    @app.post("/setup")
    def setup(body: SetupBody) -> dict:
        if body.schema_ is not None:
            try:
                brush_interface(body.schema_)
            except S4segError as error:
                raise HTTPException(422, str(error)) from None
        return {"model_version": version.get("last", "s4seg")}

    @app.post("/predict")
    def predict(body: PredictBody) -> dict:
        try:
            interface = brush_interface(body.label_config or "")
        except S4segError as error:
            log.warning("predict refused: %s", error)
            raise HTTPException(422, str(error)) from None
        results, refused = [], []
        with one_at_a_time, tempfile.TemporaryDirectory(prefix="s4seg-ls-") as folder:
            for task in body.tasks:
                try:
                    results.append(predict_task(task, interface, images, segment, Path(folder)))
                except (S4segError, httpx.HTTPError) as error:
                    refused.append(f"task {task.get('id', '?')}: {error}")
        if refused:  # nothing half-answered: Label Studio pairs results with tasks by position
            log.warning("predict refused: %s", "; ".join(refused))  # Label Studio logs no body
            raise HTTPException(422, "; ".join(refused))
        if results:
            version["last"] = results[-1]["model_version"]
        return {"results": results}

    @app.post("/webhook")
    def webhook() -> dict:
        return {"status": "ignored", "why": "s4seg retrains with `s4seg train`, not on webhooks"}

    return app
