"""Drives a real Label Studio through its SDK, run by the Label Studio environment's Python (its
SDK needs numpy 2; ours runs on numpy<2): tests/test_labelstudio.py.

    python labelstudio_driver.py URL TOKEN TASKS_DIR ANSWER.json EXPORT.json

Creates a project with s4seg's label config, imports s4seg's tasks (with their predictions),
checks the predictions arrived, submits ANSWER (``{"label": name, "mask": [[0/1, ...], ...]}``,
brush-encoded by the SDK) as the first task's annotation, and writes the project's JSON export.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter import brush


def main(url: str, token: str, tasks_dir: str, answer_path: str, export_path: str) -> None:
    client = LabelStudio(base_url=url, api_key=token)
    folder = Path(tasks_dir)
    project = client.projects.create(
        title="s4seg round trip", label_config=(folder / "label_config.xml").read_text()
    )
    tasks = json.loads((folder / "tasks.json").read_text())
    client.projects.import_tasks(id=project.id, request=tasks)
    stored = sorted(client.tasks.list(project=project.id), key=lambda t: t.id)
    assert len(stored) == len(tasks), (len(stored), len(tasks))
    first = stored[0]
    predictions = client.predictions.list(task=first.id)
    sent = tasks[0]["predictions"][0]["result"]
    assert len(predictions) == 1 and len(predictions[0].result) == len(sent), "pre-annotations"
    assert [r["value"]["rle"] for r in predictions[0].result] == [r["value"]["rle"] for r in sent]
    answer = json.loads(Path(answer_path).read_text())
    mask = (np.asarray(answer["mask"], dtype=np.uint8) * 255).astype(np.uint8)
    height, width = mask.shape
    result = {
        "from_name": "label",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": brush.mask2rle(mask), "brushlabels": [answer["label"]]},
    }
    client.annotations.create(id=first.id, result=[result], was_cancelled=False)
    body = b"".join(client.projects.exports.download_sync(project.id, export_type="JSON"))
    Path(export_path).write_bytes(body)
    print(json.dumps({"project": project.id, "tasks": len(stored), "annotated": first.id}))


if __name__ == "__main__":
    main(*sys.argv[1:])
