"""The labeling round trip (issue 34, item 5): masks in Label Studio's formats through its SDK's
converter, the checks on an export, and once through a real Label Studio on loopback."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image

from s4seg.clients.labelstudio import LabelStudioError, brush_results, import_export, paint
from s4seg.layouts import FolderLayout, read_label_png
from s4seg.training.data.split import Split

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("labelstudio_driver.py")
CLASSES = ["background", "disc", "ring"]


def test_masks_cross_in_label_studios_brush_and_polygon_formats() -> None:
    labels = np.zeros((12, 20), dtype=np.uint8)
    labels[2:6, 3:9] = 1
    labels[7:11, 10:18] = 2
    results = brush_results(labels, CLASSES, 0, "t")
    assert [r["value"]["brushlabels"] for r in results] == [["disc"], ["ring"]]
    np.testing.assert_array_equal(paint(1, results, CLASSES, (20, 12), 0), labels)
    polygon = {
        "type": "polygonlabels",
        "original_width": 20,
        "original_height": 12,
        "value": {"points": [[10, 0], [50, 0], [50, 50], [10, 50]], "polygonlabels": ["ring"]},
    }
    painted = paint(1, [*results, polygon], CLASSES, (20, 12), 0)
    assert (painted[0:6, 2:10] == 2).all()  # the polygon (x 2-10, y 0-6) paints over the disc
    assert (painted[7:11, 10:18] == 2).all() and painted[11, 0] == 0


def test_an_export_with_unknown_labels_or_other_sizes_is_refused_naming_the_task(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    (data / "images" / "unlabeled").mkdir(parents=True)
    (data / "classes.yaml").write_text("classes: [background, disc, ring]\n")
    Image.new("RGB", (20, 12)).save(data / "images" / "unlabeled" / "a.png")
    labels = np.zeros((12, 20), dtype=np.uint8)
    labels[2:6, 3:9] = 1
    result = brush_results(labels, CLASSES, 0, "t")[0]
    source = str(data / "images" / "unlabeled" / "a.png")
    task = {"id": 7, "data": {"s4seg": {"image": "a", "source": source}}}

    def export(result: dict) -> Path:
        path = tmp_path / "export.json"
        path.write_text(json.dumps([{**task, "annotations": [{"id": 1, "result": [result]}]}]))
        return path

    unknown = {**result, "value": {**result["value"], "brushlabels": ["zebra"]}}
    with pytest.raises(LabelStudioError, match=r"task 7: label \['zebra'\] is not one class"):
        import_export(export(unknown), data)
    resized = {**result, "original_width": 40}
    with pytest.raises(LabelStudioError, match="task 7: its mask was drawn on a 40x12 image"):
        import_export(export(resized), data)
    assert not (data / "masks").exists()  # refused before anything was written
    other = data / "images" / "train" / "a.png"  # another image of the same name already there
    other.parent.mkdir()
    Image.new("RGB", (20, 12), "white").save(other)
    with pytest.raises(LabelStudioError, match=r"task 7: .* another image of the same name"):
        import_export(export(result), data)
    other.unlink()
    assert not (data / "masks").exists()
    done = import_export(export(result), data)
    assert done.images == 1 and done.moved == 1
    np.testing.assert_array_equal(read_label_png(data / "masks" / "train" / "a.png"), labels)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def label_studio_environment() -> Path | None:
    """The virtual environment Label Studio runs from (``make labelstudio``)."""
    given = os.environ.get("S4SEG_LABEL_STUDIO_VENV")
    venv = Path(given) if given else ROOT / ".venv-labelstudio"
    return venv if (venv / "bin" / "label-studio").is_file() else None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path, Path]]:
    """A real Label Studio on loopback (sqlite, its own data folder, local files served from
    a document root), one for the module's tests: (url, token, its python, the document root).
    Its ML backends may be on loopback (``ML_BLOCK_LOCAL_IP=false`` and
    ``SSRF_PROTECTION_ENABLED=false``: by default Label
    Studio refuses private addresses, as a cluster's would be)."""
    tmp_path = tmp_path_factory.mktemp("label-studio")
    venv = label_studio_environment()
    if venv is None:
        if os.environ.get("S4SEG_REQUIRE_LABEL_STUDIO"):
            pytest.fail("Label Studio is required here: `make labelstudio` installs it")
        pytest.skip("no Label Studio environment (`make labelstudio`)")
    port, token = free_port(), secrets.token_hex(16)
    documents = tmp_path / "documents"
    documents.mkdir()
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "ls-data"),
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(documents),
        "DJANGO_DB": "sqlite",
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",  # the backend's /webhook, registered with it
    }
    env.pop("PYTHONPATH", None)
    log = (tmp_path / "label-studio.log").open("wb")
    process = subprocess.Popen(
        [str(venv / "bin" / "label-studio"), "start", "--no-browser", "-p", str(port),
         "--internal-host", "127.0.0.1", "--data-dir", str(tmp_path / "ls-data"),
         "--username", "s4seg@example.com", "--password", secrets.token_hex(8),
         "--user-token", token, "--enable-legacy-api-token"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "label-studio.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            pytest.fail("Label Studio did not answer /health within 300 s")
        yield url, token, venv / "bin" / "python", documents
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def s4seg(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "s4seg", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def test_the_queue_goes_through_label_studio_and_its_labels_land_in_the_data_set(
    label_studio: tuple[str, str, Path, Path],
    tiny_export: Path,
    synth_root: Path,
    tmp_path: Path,
) -> None:
    url, token, python, documents = label_studio
    data = documents / "data"
    shutil.copytree(synth_root, data)
    split = Split("1/1", 0, {"kind": "folder", "root": str(data)}, "train",
                  labeled=["train/train_00000"], unlabeled=[],
                  extra_unlabeled=[f"unlabeled/{p.stem}" for p in
                                   sorted((data / "images" / "unlabeled").iterdir())])  # fmt: skip
    split_file = split.save(tmp_path / "split.json")
    queue, tasks = tmp_path / "queue", tmp_path / "tasks"
    s4seg("queue", "--pool", str(data / "images" / "unlabeled"), "--model", str(tiny_export),
          "--output", str(queue), "--top", "2")  # fmt: skip
    s4seg("labelstudio", "tasks", "--queue", str(queue), "--document-root", str(documents),
          "--out", str(tasks))  # fmt: skip
    first = json.loads((tasks / "tasks.json").read_text())[0]
    assert first["predictions"][0]["result"], "the varied model paints classes: pre-annotated"
    name = first["data"]["s4seg"]["image"]
    # The annotator's correction: one ring, nothing else.
    width, height = Image.open(first["data"]["s4seg"]["source"]).size
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[5:20, 8:40] = 1
    (tmp_path / "answer.json").write_text(json.dumps({"label": "ring", "mask": mask.tolist()}))
    export = tmp_path / "export.json"
    driven = subprocess.run(
        [str(python), str(DRIVER), url, token, str(tasks), str(tmp_path / "answer.json"),
         str(export)], capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert driven.returncode == 0, driven.stdout + driven.stderr
    s4seg("labelstudio", "import", "--export", str(export), "--data", str(data),
          "--split-file", str(split_file))  # fmt: skip
    ring = FolderLayout(data).classes.index("ring")
    landed = read_label_png(data / "masks" / "train" / f"{name}.png")
    np.testing.assert_array_equal(landed, np.where(mask == 1, ring, 0))
    assert not (data / "images" / "unlabeled" / f"{name}.png").exists()
    sample = next(s for s in FolderLayout(data).samples("train") if s.id == f"train/{name}")
    np.testing.assert_array_equal(FolderLayout(data).read_mask(sample), landed)
    updated = Split.load(split_file)
    assert f"train/{name}" in updated.labeled
    assert f"unlabeled/{name}" not in updated.extra_unlabeled
    # The next training run reads it: labeled, with its mask, and no longer unlabeled.
    from s4seg.training.config import DataConfig
    from s4seg.training.data.setup import build_training_data

    built = build_training_data(DataConfig(root=str(data), split_file=str(split_file)))
    assert f"train/{name}" in [s.id for s in built.labeled.samples]
    assert all(s.id != f"unlabeled/{name}" for s in built.unlabeled.samples)


def test_a_label_studio_project_asks_the_backend_for_brush_predictions(
    label_studio: tuple[str, str, Path, Path], tiny_export: Path, synth_root: Path
) -> None:
    """Item 5's ML backend, once through a real Label Studio: the project connects to
    ``s4seg labelstudio backend`` (health, setup), retrieves predictions for its tasks, and
    each stored prediction paints the label map the model gives that image."""
    import uvicorn

    from s4seg.clients.backends import Backend, OutputFormat
    from s4seg.clients.labelstudio import label_config
    from s4seg.clients.labelstudio_backend import backend_app
    from s4seg.manifest import Manifest
    from s4seg.outputs import labels_from_json

    url, token, _, documents = label_studio
    images = sorted((synth_root / "images" / "val").iterdir())[:2]
    (documents / "backend").mkdir()
    for image in images:
        shutil.copyfile(image, documents / "backend" / image.name)
    model = Backend("local", OutputFormat("json"), model=str(tiny_export), device="cpu")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(backend_app(model, url, token), "127.0.0.1", port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    manifest = Manifest.load(tiny_export)
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.1)
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Token {token}"}, timeout=120
        ) as ls:
            project = ls.post(
                "/api/projects/", json={"title": "backend", "label_config": label_config(manifest)}
            ).json()["id"]
            # Label Studio serves local files of a project's local storage only.
            storage = ls.post(
                "/api/storages/localfiles/",
                json={"project": project, "path": str(documents / "backend"), "title": "images"},
            )
            assert storage.status_code == 201, storage.text
            tasks = [{"data": {"image": f"/data/local-files/?d=backend/{p.name}"}} for p in images]
            assert ls.post(f"/api/projects/{project}/import", json=tasks).status_code == 201
            connected = ls.post(
                "/api/ml/", json={"url": f"http://127.0.0.1:{port}", "project": project}
            )
            assert connected.status_code == 201, connected.text  # health and setup answered
            retrieved = ls.post(
                "/api/dm/actions/",
                params={"id": "retrieve_tasks_predictions", "project": project},
                json={"selectedItems": {"all": True, "excluded": []}},
            )
            assert retrieved.status_code == 200, retrieved.text
            listed = ls.get("/api/tasks/", params={"project": project}).json()
            stored = sorted(listed["tasks"] if isinstance(listed, dict) else listed,
                            key=lambda t: t["id"])  # fmt: skip
            assert len(stored) == len(images)
            painted_classes = 0
            for task, image in zip(stored, images, strict=True):
                predictions = ls.get("/api/predictions/", params={"task": task["id"]}).json()
                assert len(predictions) == 1, predictions
                (prediction,) = predictions
                expected = labels_from_json(json.loads(model.build()(image)))
                assert prediction["model_version"] == "s4seg-local"
                assert 0 < prediction["score"] <= 1  # the calibrated mean confidence
                assert {r["from_name"] for r in prediction["result"]} <= {"label"}
                height, width = expected.shape
                painted = paint(task["id"], prediction["result"], list(manifest.classes),
                                (width, height), manifest.background_index or 0)  # fmt: skip
                np.testing.assert_array_equal(painted, expected)
                painted_classes += len(prediction["result"])
            assert painted_classes > 0  # the varied model paints classes: masks crossed
    finally:
        server.should_exit = True
        thread.join(10)


class FakeModel:
    """The model boundary of the backend: counts the images it was asked to segment."""

    via = "gateway"

    def __init__(self) -> None:
        self.asked: list[Path] = []

    def build(self) -> Callable[[Path], bytes]:
        def segment(path: Path) -> bytes:
            self.asked.append(path)
            return b"{}"

        return segment


def test_the_backend_refuses_other_hosts_and_configs_without_brushes_by_name() -> None:
    """A task whose image is on another host is refused naming the task and the host, and
    nothing is fetched or segmented; a project without BrushLabels is refused at setup."""
    from fastapi.testclient import TestClient

    from s4seg.clients.labelstudio import label_config
    from s4seg.clients.labelstudio_backend import backend_app

    config = label_config(
        SimpleNamespace(classes=CLASSES, background_index=0, palette=[[0, 0, 0]] * 3)
    )
    model = FakeModel()
    app = backend_app(model, "http://127.0.0.1:1", "t", auth="ls:secret")  # type: ignore[arg-type]
    client = TestClient(app)
    assert client.get("/health").status_code == 401
    assert client.post("/predict", json={}, auth=("ls", "wrong")).status_code == 401
    client.auth = ("ls", "secret")
    assert client.get("/health").json()["status"] == "UP"
    down = {"tasks": [{"id": 6, "data": {"image": "/data/upload/1/a.png"}}], "label_config": config}
    unreachable = client.post("/predict", json=down)  # Label Studio (port 1) does not answer
    assert unreachable.status_code == 422 and "task 6" in unreachable.text
    assert "Label Studio did not answer" in unreachable.text
    assert client.post("/setup", json={"schema": config}).status_code == 200
    text = "<View><Image name='image' value='$image'/><Choices name='c' toName='image'/></View>"
    refused = client.post("/setup", json={"schema": text})
    assert refused.status_code == 422 and "no BrushLabels" in refused.text
    tasks = [{"id": 7, "data": {"image": "http://169.254.169.254/latest/meta-data"}}]
    answer = client.post("/predict", json={"tasks": tasks, "label_config": config})
    assert answer.status_code == 422
    assert "task 7" in answer.text and "169.254.169.254" in answer.text
    missing = client.post(
        "/predict", json={"tasks": [{"id": 8, "data": {}}], "label_config": config}
    )
    assert missing.status_code == 422 and "task 8" in missing.text and "data.image" in missing.text
    assert model.asked == []
