"""Single-scale evaluation of a segmenter on a data set (the paper's protocol)."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from s4seg.errors import DatasetError
from s4seg.metrics import confusion_matrix, format_table, scores
from s4seg.visualize import colorize, panel

from .checkpoint import load_checkpoint
from .data.dataset import SegmentationDataset
from .data.layouts import open_layout
from .data.transforms import eval_transform
from .models import segmenter_from_checkpoint, upsample_logits
from .runtime import Runtime, setup_runtime


@torch.no_grad()
def predict_probabilities(model: nn.Module, image: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Softmax class probabilities at the input's resolution, (N, C, H, W) float32."""
    image = image.to(runtime.device, memory_format=runtime.memory_format())
    with runtime.autocast():
        logits = model(image)
    return upsample_logits(logits.float(), image.shape[-2:]).softmax(1)


@torch.no_grad()
def evaluate_segmenter(
    model: nn.Module,
    dataset: SegmentationDataset,
    num_classes: int,
    runtime: Runtime,
    max_images: int | None = None,
    progress: bool | None = True,
    on_prediction: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Confusion matrix over the data set, one whole image at a time (images differ in size)."""
    was_training = model.training
    model.eval()
    total = len(dataset) if max_images is None else min(max_images, len(dataset))
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    try:
        items = islice((dataset[i] for i in range(len(dataset))), total)
        for item in tqdm(
            items,
            total=total,
            desc="evaluate",
            leave=False,
            disable=None if progress is None else not progress,  # None: only on a terminal
        ):
            probabilities = predict_probabilities(model, item["image"][None], runtime)
            prediction = probabilities.argmax(1)[0].cpu().numpy()
            confusion += confusion_matrix(item["mask"].numpy(), prediction, num_classes)
            if on_prediction is not None:
                on_prediction(item["index"], prediction)
    finally:
        model.train(was_training)
    return confusion


def write_report(out_dir: Path, class_names: list[str], confusion: np.ndarray, extra: dict) -> dict:
    """report.json (figures + confusion matrix) and confusion.csv, both machine-readable."""
    result = scores(confusion)
    report = {**extra, **result.as_dict(class_names), "confusion_matrix": confusion.tolist()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    header = "target\\prediction," + ",".join(class_names)
    rows = [
        f"{name}," + ",".join(str(v) for v in row)
        for name, row in zip(class_names, confusion, strict=True)
    ]
    (out_dir / "confusion.csv").write_text("\n".join([header, *rows]) + "\n")
    return report


def evaluate_checkpoint(
    checkpoint: str,
    data_root: str | None = None,
    kind: str | None = None,
    split: str | None = None,
    out_dir: str | None = None,
    save_predictions: int = 0,
    max_images: int | None = None,
    device: str = "auto",
) -> tuple[dict, str]:
    """Evaluate a segmenter checkpoint; return the report and a readable table."""
    payload = load_checkpoint(checkpoint, kind="segmenter")
    model = segmenter_from_checkpoint(payload, checkpoint)
    trained_on = payload["split"]["dataset"]  # resolved root and kind of the training data
    layout = open_layout(
        data_root or trained_on["root"], kind or ("auto" if data_root else trained_on["kind"])
    )
    if list(layout.classes) != payload["classes"]:
        raise DatasetError(
            f"{layout.root} has classes {list(layout.classes)[:6]}... but the checkpoint was "
            "trained "
            f"on {payload['classes'][:6]}..."
        )
    split = split or layout.default_val_split
    norm = payload["normalization"]
    dataset = SegmentationDataset(
        layout, layout.samples(split), eval_transform(norm["mean"], norm["std"])
    )
    runtime = setup_runtime(device, amp="off", channels_last="off")
    model.to(runtime.device)
    palette = payload["palette"]
    out = Path(out_dir) if out_dir else None
    shown = 0

    def keep_picture(index: int, prediction: np.ndarray) -> None:
        nonlocal shown
        if out is None or shown >= save_predictions:
            return
        sample = dataset.samples[index]
        name = sample.id.replace("/", "_")
        (out / "predictions").mkdir(parents=True, exist_ok=True)
        colorize(prediction, palette).save(out / "predictions" / f"{name}.png")
        truth = colorize(layout.read_mask(sample), palette)
        panel([layout.read_image(sample), truth, colorize(prediction, palette)]).save(
            out / "predictions" / f"{name}_panel.png"
        )
        shown += 1

    confusion = evaluate_segmenter(
        model,
        dataset,
        layout.num_classes,
        runtime,
        max_images,
        progress=None,
        on_prediction=keep_picture,
    )
    extra = {
        "checkpoint": str(checkpoint),
        "data": layout.describe(),
        "split": split,
        "images": min(len(dataset), max_images or len(dataset)),
        "iteration": payload.get("iteration"),
        "protocol": "single scale, no flip",
    }
    result = scores(confusion)
    report = (
        write_report(out, list(layout.classes), confusion, extra)
        if out
        else {**extra, **result.as_dict(list(layout.classes))}
    )
    return report, format_table(list(layout.classes), result)
