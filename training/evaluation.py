"""Single-scale evaluation of a segmenter on a data set (the paper's protocol)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision import tv_tensors
from tqdm import tqdm

from s4seg.errors import CheckpointError, DatasetError
from s4seg.holdout import evaluation_samples
from s4seg.layouts import data_layout
from s4seg.metrics import confusion_matrix, format_table, scores, write_report
from s4seg.visualize import colorize, panel

from .checkpoint import Checkpoint
from .data.dataset import SegmentationDataset
from .data.transforms import eval_transform
from .gate import DEFAULT_TAU, gated_argmax
from .models import segmenter_from_checkpoint, upsample_logits
from .models.classifier import classifier_from_checkpoint
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
) -> np.ndarray:
    """Confusion matrix over the data set, one whole image at a time (images differ in size)."""
    was_training = model.training
    model.eval()
    total = len(dataset) if max_images is None else min(max_images, len(dataset))
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    items = islice((dataset[i] for i in range(len(dataset))), total)
    try:
        with runtime.varying_shapes():
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
    finally:
        model.train(was_training)
    return confusion


TAU_SWEEP = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def format_comparison(class_names: list[str], ungated, gated, tau: float) -> str:
    """Per-class IoU without and with the classifier gate, side by side."""
    width = max(len("class"), *(len(n) for n in class_names))
    rows = [f"{'class':<{width}}  ungated  gated(tau={tau:g})", f"{'-' * width}  -------  ------"]

    def cell(value):
        return "    n/a" if value is None else f"{100 * value:7.2f}"

    for name, a, b in zip(class_names, ungated.iou, gated.iou, strict=True):
        rows.append(f"{name:<{width}}  {cell(a)}  {cell(b)}")
    rows.append(f"{'-' * width}  -------  ------")
    rows.append(f"{'mIoU':<{width}}  {cell(ungated.miou)}  {cell(gated.miou)}")
    rows.append(
        f"{'pixel acc':<{width}}  {cell(ungated.pixel_accuracy)}  {cell(gated.pixel_accuracy)}"
    )
    return "\n".join(rows)


def evaluate_checkpoint(  # noqa: PLR0913, PLR0915 (gated and sweep evaluation in one pass)
    checkpoint: str,
    data_root: str | None = None,
    kind: str | None = None,
    split: str | None = None,
    out_dir: str | None = None,
    save_predictions: int = 0,
    max_images: int | None = None,
    device: str = "auto",
    classifier: str | None = None,
    tau: float = DEFAULT_TAU,
    tau_sweep: bool = False,
    part: str = "report",
) -> tuple[dict, str]:
    """Evaluate a segmenter checkpoint, gated by a classifier checkpoint if given, on ``part``
    of the validation split (``s4seg.holdout``: by default not the images tau is chosen on).

    Returns the report (figures, confusion matrix) and a readable table.
    """
    trained = Checkpoint.load(checkpoint, kind="segmenter")
    model = segmenter_from_checkpoint(trained)
    layout = data_layout(trained, data_root, kind)
    classes = list(layout.classes)
    if classes != trained.classes:
        raise DatasetError(
            f"{layout.root} has classes {classes[:6]}... but {checkpoint} was trained on "
            f"{trained.classes[:6]}..."
        )
    runtime = setup_runtime(
        device, amp="off", channels_last="off", fixed_shapes=False, distributed=False
    )
    model.to(runtime.device).eval()
    gate_model = cls_view = None
    if classifier:
        from .data.classification import eval_view

        gating = Checkpoint.load(classifier, kind="classifier")
        if gating.classes != classes:
            raise CheckpointError(f"{classifier} was trained on other classes than {checkpoint}")
        gate_model = classifier_from_checkpoint(gating).to(runtime.device).eval()
        cls_view = eval_view(gating.arch["input_size"])
    split, part, samples = evaluation_samples(layout, split, part, max_images)
    norm = trained.normalization
    seg_view = eval_transform(norm["mean"], norm["std"])
    taus = sorted({tau, *TAU_SWEEP}) if (tau_sweep and gate_model is not None) else [tau]
    num_classes = len(classes)
    ungated_cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    gated_cm = {t: np.zeros_like(ungated_cm) for t in taus}
    background = trained.background_index
    out = Path(out_dir) if out_dir else None
    for index, sample in enumerate(tqdm(samples, desc="evaluate", leave=False, disable=None)):
        image = layout.read_image(sample)
        truth = layout.read_mask(sample)
        pixels = tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        probabilities = predict_probabilities(model, seg_view(pixels)[None], runtime)
        prediction = probabilities.argmax(1)[0].cpu().numpy()
        ungated_cm += confusion_matrix(truth, prediction, num_classes)
        shown = prediction
        if gate_model is not None:
            with torch.no_grad():
                class_probs = torch.sigmoid(gate_model(cls_view(pixels)[None].to(runtime.device)))
            for t in taus:
                labels, _ = gated_argmax(probabilities, class_probs, t, background)
                labels = labels[0].cpu().numpy()
                gated_cm[t] += confusion_matrix(truth, labels, num_classes)
                if t == tau:
                    shown = labels
        if out is not None and index < save_predictions:
            name = sample.id.replace("/", "_")
            palette = trained.palette
            (out / "predictions").mkdir(parents=True, exist_ok=True)
            colorize(shown, palette).save(out / "predictions" / f"{name}.png")
            pictures = [image, colorize(truth, palette), colorize(prediction, palette)]
            if gate_model is not None:
                pictures.append(colorize(shown, palette))
            panel(pictures).save(out / "predictions" / f"{name}_panel.png")

    extra = {
        "checkpoint": str(checkpoint),
        "classifier": classifier,
        "data": layout.describe(),
        "split": split,
        "part": part,
        "images": len(samples),
        "iteration": trained.iteration,
        "protocol": "single scale, no flip",
    }
    ungated = scores(ungated_cm)
    if gate_model is None:
        report = {**extra, **ungated.as_dict(classes), "confusion_matrix": ungated_cm.tolist()}
        table = format_table(classes, ungated)
    else:
        gated = scores(gated_cm[tau])
        report = {
            **extra,
            "tau": tau,
            **gated.as_dict(classes),
            "confusion_matrix": gated_cm[tau].tolist(),
            "ungated": {**ungated.as_dict(classes), "confusion_matrix": ungated_cm.tolist()},
        }
        if tau_sweep:
            report["tau_sweep"] = [{"tau": t, "miou": scores(gated_cm[t]).miou} for t in taus]
        table = format_comparison(classes, ungated, gated, tau)
        if tau_sweep:
            table += "\n\ntau sweep (gated mIoU): " + ", ".join(
                f"{t:g}: {100 * scores(gated_cm[t]).miou:.2f}" for t in taus
            )
    if out is not None:
        write_report(out, classes, report)
    return report, table
