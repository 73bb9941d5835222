"""The labeling round trip through Label Studio (issue 34, item 5): ``s4seg queue``'s top images
as Label Studio tasks carrying the model's masks as pre-annotations (annotators correct instead of
drawing), and Label Studio's JSON export back into a folder data set (``s4seg.layouts``'s
``FolderLayout``) with the split updated, so the next ``s4seg train`` uses the new labels.

Masks cross in Label Studio's own formats, encoded and decoded by its SDK's converter
(``label_studio_sdk.converter.brush``): brush masks (RLE), and polygons (percent coordinates).
Pixels nobody painted are the data set's background class (ignored where it has none).

An import checks every task before it writes anything: a label the data set does not know, or
a mask whose size is not its image's, stops it with the task named, and nothing is written.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image, ImageDraw

from s4seg import IGNORE_INDEX
from s4seg.atomic import write_atomic
from s4seg.errors import S4segError
from s4seg.layouts import FolderLayout
from s4seg.manifest import Manifest
from s4seg.outputs import labels_from_json
from s4seg.visualize import colorize

FROM_NAME, TO_NAME = "label", "image"  # the label config's brush and image tags
LOCAL_FILES = "/data/local-files/?d="  # Label Studio's local file serving
TASKS, LABEL_CONFIG = "tasks.json", "label_config.xml"


class LabelStudioError(S4segError):
    """A Label Studio export s4seg can not take, naming the task."""


def brush():
    try:
        from label_studio_sdk.converter import brush as module
    except ImportError:
        raise S4segError(
            "s4seg labelstudio needs Label Studio's SDK: pip install 's4seg[labelstudio]'"
        ) from None
    return module


# -- out: the queue as tasks ------------------------------------------------------------------


def label_config(manifest: Manifest) -> str:
    """A brush (and polygon) labeling interface over the export's classes, in its colours; the
    background class is what nobody paints."""
    labels = []
    for index, name in enumerate(manifest.classes):
        if index == manifest.background_index:
            continue
        colour = "#{:02x}{:02x}{:02x}".format(*manifest.palette[index][:3])
        labels.append(f"    <Label value={quoteattr(name)} background={quoteattr(colour)}/>")
    body = "\n".join(labels)
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{body}\n  </BrushLabels>\n'
        f'  <PolygonLabels name="polygon" toName="{TO_NAME}">\n{body}\n  </PolygonLabels>\n'
        "</View>\n"
    )


def brush_results(
    labels: np.ndarray,
    classes: list[str],
    background: int | None,
    prefix: str,
    from_name: str = FROM_NAME,
    to_name: str = TO_NAME,
) -> list[dict]:
    """One brush result per painted class of a label map (H, W); none for ``background``;
    ``from_name``/``to_name``: the project's BrushLabels and Image tags."""
    encoder = brush()
    height, width = labels.shape
    results = []
    for index in np.unique(labels):
        if index == background or index >= len(classes):
            continue
        mask = np.where(labels == index, 255, 0).astype(np.uint8)
        results.append(
            {
                "id": f"{prefix}-{index}",
                "from_name": from_name,
                "to_name": to_name,
                "type": "brushlabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": encoder.mask2rle(mask),
                    "brushlabels": [classes[index]],
                },
            }
        )
    return results


def image_url(source: Path, document_root: Path) -> str:
    """The URL Label Studio serves ``source`` at (``LOCAL_FILES_DOCUMENT_ROOT=document_root``)."""
    try:
        relative = source.resolve().relative_to(document_root.resolve())
    except ValueError:
        raise S4segError(
            f"{source} is not under --document-root {document_root} (Label Studio serves local "
            "files from its LOCAL_FILES_DOCUMENT_ROOT only)"
        ) from None
    return LOCAL_FILES + quote(relative.as_posix())


def queue_tasks(queue: Path, document_root: Path, top: int | None = None) -> tuple[list[dict], str]:
    """The first ``top`` images of a ``s4seg queue`` folder (default: its batch) as tasks with
    the model's masks as predictions; and the label config for them."""
    from .label_queue import QUEUE_JSON, SCORES

    path = queue / QUEUE_JSON
    if not path.is_file():
        raise S4segError(f"{queue} holds no {QUEUE_JSON}: run s4seg queue first")
    ranked = json.loads(path.read_text())
    manifest = Manifest.load(ranked["model"])
    tasks = []
    for row in ranked["rows"][: top or ranked["top"]]:
        record = json.loads((queue / SCORES / f"{row['image']}.json").read_text())
        labels = labels_from_json(record["answer"])
        source = Path(row["source"])
        tasks.append(
            {
                "data": {
                    "image": image_url(source, document_root),
                    "s4seg": {"image": row["image"], "source": str(source), "rank": row["rank"]},
                },
                "predictions": [
                    {
                        "model_version": Path(ranked["model"]).name,
                        "score": row["score"],
                        "result": brush_results(
                            labels,
                            list(manifest.classes),
                            manifest.background_index,
                            f"r{row['rank']}",
                        ),
                    }
                ],
            }
        )
    return tasks, label_config(manifest)


def write_tasks(queue: Path, document_root: Path, out: Path, top: int | None = None) -> int:
    tasks, config = queue_tasks(queue, document_root, top)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / TASKS, (json.dumps(tasks) + "\n").encode())
    write_atomic(out / LABEL_CONFIG, config.encode())
    return len(tasks)


# -- back: an export into the folder layout ---------------------------------------------------


@dataclass(frozen=True)
class Labeled:
    task: int
    source: Path
    name: str  # the image's path in the pool, without its suffix
    labels: np.ndarray


def task_source(task: dict, sources: Path | None) -> tuple[Path, str]:
    """Where a task's image is: the s4seg fields the tasks carry, else its local-files URL
    under ``sources`` (the document root)."""
    ours = task.get("data", {}).get("s4seg")
    if ours:
        return Path(ours["source"]), ours["image"]
    url = str(task.get("data", {}).get("image", ""))
    if sources is not None and url.startswith(LOCAL_FILES):
        relative = Path(unquote(url[len(LOCAL_FILES) :]))
        return sources / relative, relative.with_suffix("").as_posix()
    raise LabelStudioError(
        f"task {task.get('id')}: its image {url!r} is not one s4seg can find (not made by "
        "s4seg labelstudio tasks; pass --document-root for local-files URLs)"
    )


def paint(task: int, results: list[dict], classes: list[str], size: tuple[int, int], fill: int):
    """The label map (H, W) uint8 of one annotation's results; later results paint over
    earlier ones."""
    decoder = brush()
    width, height = size
    labels = np.full((height, width), fill, dtype=np.uint8)
    for result in results:
        kind = str(result.get("type", "")).lower()
        if kind not in ("brushlabels", "polygonlabels"):
            continue
        value = result.get("value", {})
        names = value.get(kind) or []
        if len(names) != 1 or names[0] not in classes:
            known = ", ".join(classes)
            raise LabelStudioError(
                f"task {task}: label {names} is not one class of the data set ({known})"
            )
        seen = (result.get("original_width"), result.get("original_height"))
        if seen != (width, height):
            raise LabelStudioError(
                f"task {task}: its mask was drawn on a {seen[0]}x{seen[1]} image, and the image "
                f"is {width}x{height}"
            )
        if kind == "brushlabels":
            flat = decoder.decode_rle(value["rle"])
            if flat.size != width * height * 4:
                raise LabelStudioError(
                    f"task {task}: its brush mask holds {flat.size // 4} pixels, not {width}x"
                    f"{height}"
                )
            painted = flat.reshape(height, width, 4)[:, :, 3] >= 128
        else:
            canvas = Image.new("L", (width, height), 0)
            points = [(x * width / 100, y * height / 100) for x, y in value["points"]]
            ImageDraw.Draw(canvas).polygon(points, fill=255, outline=255)
            painted = np.asarray(canvas) >= 128
        labels[painted] = classes.index(names[0])
    return labels


def latest_annotation(task: dict) -> dict | None:
    done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
    return max(done, key=lambda a: (a.get("updated_at") or "", a.get("id") or 0), default=None)


def read_export(
    export: Path, layout: FolderLayout, split: str, sources: Path | None
) -> list[Labeled]:
    """Every annotated task of a Label Studio JSON export, decoded and checked. An image an
    earlier import already moved into ``images/<split>/`` is read there (imports repeat)."""
    try:
        tasks = json.loads(export.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise LabelStudioError(f"{export} is not a Label Studio JSON export: {error}") from None
    if not isinstance(tasks, list):
        raise LabelStudioError(f"{export}: expected a list of tasks (the JSON export)")
    fill = IGNORE_INDEX if layout.background_index is None else layout.background_index
    labeled = []
    for task in tasks:
        annotation = latest_annotation(task)
        if annotation is None:
            continue
        source, name = task_source(task, sources)
        imported = layout.images / split / (Path(name).name + source.suffix.lower())
        if not source.is_file() and imported.is_file():
            source = imported
        if not source.is_file():
            raise LabelStudioError(f"task {task.get('id')}: its image {source} is not there")
        try:
            with Image.open(source) as image:
                size = image.size
        except OSError as error:
            message = f"task {task.get('id')}: {source} is not an image: {error}"
            raise LabelStudioError(message) from None
        labels = paint(task.get("id"), annotation["result"], list(layout.classes), size, fill)
        labeled.append(Labeled(task.get("id"), source, Path(name).name, labels))
    names = [item.name for item in labeled]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise LabelStudioError(f"{export}: more than one task for the image name(s) {twice}")
    return labeled


@dataclass(frozen=True)
class Imported:
    images: int
    moved: int  # of them, taken out of the data set's unlabeled part
    split_file: Path | None


def import_export(
    export: Path,
    data: Path,
    split: str = "train",
    split_file: Path | None = None,
    sources: Path | None = None,
) -> Imported:
    """Add every annotated task of ``export`` to the folder data set ``data``: the image under
    ``images/<split>/``, its mask under ``masks/<split>/`` (a palette PNG of class indices);
    an image that was in the data set's ``images/unlabeled/`` moves out of it; ``split_file``
    (a saved training split) lists them as labeled."""
    layout = FolderLayout(data)
    if (data / f"{split}.txt").is_file() or (data / "unlabeled.txt").is_file():
        raise S4segError(
            f"{data} lists its splits in .txt files: s4seg labelstudio import adds to the "
            "images/<split>/ folders only"
        )
    labeled = read_export(export, layout, split, sources)  # all checked before any write
    for item in labeled:
        there = layout.images / split / (item.name + item.source.suffix.lower())
        same = there.resolve() == item.source.resolve()
        if there.exists() and not same and there.read_bytes() != item.source.read_bytes():
            raise LabelStudioError(
                f"task {item.task}: {there} is another image of the same name already in the "
                "data set; rename one of them"
            )
    unlabeled = (layout.images / "unlabeled").resolve()
    moved, ids, left = 0, [], []
    for item in labeled:
        image = layout.images / split / (item.name + item.source.suffix.lower())
        mask = layout.masks / split / f"{item.name}.png"
        mask.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(mask, png_bytes(colorize(item.labels, layout.palette)))
        if item.source.resolve() != image.resolve():
            image.parent.mkdir(parents=True, exist_ok=True)
            if item.source.resolve().is_relative_to(unlabeled):
                left.append(item.source.resolve().relative_to(layout.images.resolve()))
                shutil.move(item.source, image)
                moved += 1
            else:
                shutil.copyfile(item.source, image)
        ids.append(f"{split}/{item.name}")
    if split_file is not None:
        add_to_split(split_file, ids, [p.with_suffix("").as_posix() for p in left])
    return Imported(len(labeled), moved, split_file)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def add_to_split(path: Path, ids: list[str], left_unlabeled: list[str]) -> None:
    """A saved training split with ``ids`` labeled, and the ids the images had while they were
    unlabeled gone."""
    from s4seg.training.data.split import Split

    saved = Split.load(path)
    saved.labeled += [i for i in ids if i not in saved.labeled]
    saved.unlabeled = [i for i in saved.unlabeled if i not in ids]
    saved.extra_unlabeled = [i for i in saved.extra_unlabeled if i not in left_unlabeled]
    saved.ratio = f"{len(saved.labeled)}/{len(saved.labeled) + len(saved.unlabeled)}"
    saved.save(path)
