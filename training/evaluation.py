"""Single-scale evaluation of a segmenter on a data set (the paper's protocol)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision import tv_tensors
from tqdm import tqdm

from s4seg.errors import CheckpointError, DatasetError
from s4seg.holdout import evaluation_samples
from s4seg.layouts import DataLayout, Sample, data_layout
from s4seg.metrics import confusion_matrix, format_table, scores, write_report
from s4seg.visualize import colorize, panel

from .checkpoint import Checkpoint
from .data.dataset import SegmentationDataset
from .data.transforms import eval_transform
from .gate import DEFAULT_TAU, gated_argmax
from .models import segmenter_from_checkpoint, upsample_logits
from .models.classifier import classifier_from_checkpoint
from .runtime import Runtime, setup_runtime


def window_starts(length: int, window: int) -> list[int]:
    """Window offsets along one side: every ``int(window * 2/3)`` pixels, the last one snapped
    to the border (UniMatch V2's sliding window: 2 x 4 windows of 798 on 1024 x 2048)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, int(window * 2 / 3)))
    return [*starts, length - window]


@torch.no_grad()
def predict_probabilities(
    model: nn.Module, image: torch.Tensor, runtime: Runtime, window: int | None = None
) -> torch.Tensor:
    """Softmax class probabilities at the input's resolution, (N, C, H, W) float32: of the
    whole image, or (``window``) the softmax summed over square windows overlapping by a third,
    renormalised (the recipe sums; the argmax is the same)."""
    image = image.to(runtime.device, memory_format=runtime.memory_format())
    height, width = image.shape[-2:]
    if window is None or (height <= window and width <= window):
        with runtime.autocast():
            logits = model(image)
        return upsample_logits(logits.float(), image.shape[-2:]).softmax(1)
    total: torch.Tensor | None = None
    for top in window_starts(height, window):
        for left in window_starts(width, window):
            crop = image[..., top : top + window, left : left + window]
            with runtime.autocast():
                logits = model(crop)
            probabilities = upsample_logits(logits.float(), crop.shape[-2:]).softmax(1)
            if total is None:
                total = image.new_zeros((len(image), probabilities.shape[1], height, width))
            total[..., top : top + window, left : left + window] += probabilities
    assert total is not None
    return total / total.sum(1, keepdim=True)


@torch.no_grad()
def evaluate_segmenter(
    model: nn.Module,
    dataset: SegmentationDataset,
    num_classes: int,
    runtime: Runtime,
    max_images: int | None = None,
    progress: bool | None = True,
    window: int | None = None,
) -> np.ndarray:
    """Confusion matrix over the data set, one image at a time (images differ in size): whole,
    or in sliding ``window``s (``data.eval_window``)."""
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
                probabilities = predict_probabilities(model, item["image"][None], runtime, window)
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


@dataclass(frozen=True)
class EvaluationRequest:
    """A segmenter checkpoint, gated by a classifier checkpoint if given, on ``part`` of the
    validation split (``s4seg.holdout``: by default not the images tau is chosen on)."""

    checkpoint: str
    data_root: str | None = None  # None: the data the checkpoint was trained on
    kind: str | None = None
    split: str | None = None
    out_dir: str | None = None  # report.json (+ predictions) written here when given
    save_predictions: int = 0
    max_images: int | None = None
    device: str = "auto"
    classifier: str | None = None
    tau: float = DEFAULT_TAU
    tau_sweep: bool = False
    part: str = "report"


@dataclass
class Models:
    """What one evaluation runs: the segmenter and its gate, on one device."""

    trained: Checkpoint
    segmenter: nn.Module
    runtime: Runtime
    gate: nn.Module | None = None
    gate_view: Callable[[torch.Tensor], torch.Tensor] | None = None
    window: int | None = None  # the sliding window the training config evaluates with


def load_models(request: EvaluationRequest, trained: Checkpoint, layout: DataLayout) -> Models:
    classes = list(layout.classes)
    if classes != trained.classes:
        raise DatasetError(
            f"{layout.root} has classes {classes[:6]}... but {request.checkpoint} was trained on "
            f"{trained.classes[:6]}..."
        )
    runtime = setup_runtime(
        request.device, amp="off", channels_last="off", fixed_shapes=False, distributed=False
    )
    models = Models(trained, segmenter_from_checkpoint(trained).to(runtime.device).eval(), runtime)
    models.window = trained.config.get("data", {}).get("eval_window")
    if request.classifier:
        from .data.classification import eval_view

        gating = Checkpoint.load(request.classifier, kind="classifier")
        if gating.classes != classes:
            raise CheckpointError(
                f"{request.classifier} was trained on other classes than {request.checkpoint}"
            )
        models.gate = classifier_from_checkpoint(gating).to(runtime.device).eval()
        models.gate_view = eval_view(gating.arch["input_size"])
    return models


def evaluate_checkpoint(request: EvaluationRequest) -> tuple[dict, str]:
    """Evaluate as ``request`` says. Returns the report (figures, confusion matrix) and a
    readable table."""
    trained = Checkpoint.load(request.checkpoint, kind="segmenter")
    layout = data_layout(trained, request.data_root, request.kind)
    classes = list(layout.classes)
    models = load_models(request, trained, layout)
    split, part, samples = evaluation_samples(
        layout, request.split, request.part, request.max_images
    )
    taus = [request.tau]
    if request.tau_sweep and models.gate is not None:
        taus = sorted({request.tau, *TAU_SWEEP})
    ungated, gated = confusions(request, models, layout, samples, taus)
    extra = {
        "checkpoint": str(request.checkpoint),
        "classifier": request.classifier,
        "data": layout.describe(),
        "split": split,
        "part": part,
        "images": len(samples),
        "iteration": models.trained.iteration,
        "protocol": "single scale, no flip"
        + (f", sliding window {models.window}" if models.window else ""),
    }
    report, table = describe(request, classes, extra, ungated, gated)
    if request.out_dir:
        write_report(Path(request.out_dir), classes, report)
    return report, table


def confusions(
    request: EvaluationRequest,
    models: Models,
    layout: DataLayout,
    samples: list[Sample],
    taus: list[float],
) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """The ungated confusion matrix and one per tau (gated; none without a classifier);
    the first ``save_predictions`` images are drawn as they go."""
    num_classes = len(layout.classes)
    ungated = np.zeros((num_classes, num_classes), dtype=np.int64)
    gated = {t: np.zeros_like(ungated) for t in taus} if models.gate is not None else {}
    norm = models.trained.normalization
    seg_view = eval_transform(norm["mean"], norm["std"])
    background = models.trained.background_index
    for index, sample in enumerate(tqdm(samples, desc="evaluate", leave=False, disable=None)):
        image = layout.read_image(sample)
        truth = layout.read_mask(sample)
        pixels = tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        probabilities = predict_probabilities(
            models.segmenter, seg_view(pixels)[None], models.runtime, models.window
        )
        prediction = probabilities.argmax(1)[0].cpu().numpy()
        ungated += confusion_matrix(truth, prediction, num_classes)
        shown = prediction
        if models.gate is not None and models.gate_view is not None:
            with torch.no_grad():
                view = models.gate_view(pixels)[None].to(models.runtime.device)
                class_probs = torch.sigmoid(models.gate(view))
            for t in taus:
                labels = gated_argmax(probabilities, class_probs, t, background)[0][0].cpu().numpy()
                gated[t] += confusion_matrix(truth, labels, num_classes)
                if t == request.tau:
                    shown = labels
        if request.out_dir and index < request.save_predictions:
            draw_prediction(
                Path(request.out_dir) / "predictions",
                sample.id.replace("/", "_"),
                models.trained.palette,
                [image, truth, prediction, *([shown] if models.gate is not None else [])],
            )
    return ungated, gated


def draw_prediction(folder: Path, name: str, palette: list[list[int]], pictures: list) -> None:
    """``{name}.png``: the answer shown (gated when gated); ``{name}_panel.png``: the image,
    the truth, the ungated answer and the gated one side by side."""
    folder.mkdir(parents=True, exist_ok=True)
    image, *masks = pictures
    colorize(masks[-1], palette).save(folder / f"{name}.png")
    panel([image, *(colorize(m, palette) for m in masks)]).save(folder / f"{name}_panel.png")


def describe(
    request: EvaluationRequest,
    classes: list[str],
    extra: dict,
    ungated_cm: np.ndarray,
    gated_cm: dict[float, np.ndarray],
) -> tuple[dict, str]:
    """The report and its table: ungated alone, or gated at ``tau`` beside ungated (and the
    sweep when asked)."""
    ungated = scores(ungated_cm)
    if not gated_cm:
        report = {**extra, **ungated.as_dict(classes), "confusion_matrix": ungated_cm.tolist()}
        return report, format_table(classes, ungated)
    tau = request.tau
    gated = scores(gated_cm[tau])
    report = {
        **extra,
        "tau": tau,
        **gated.as_dict(classes),
        "confusion_matrix": gated_cm[tau].tolist(),
        "ungated": {**ungated.as_dict(classes), "confusion_matrix": ungated_cm.tolist()},
    }
    table = format_comparison(classes, ungated, gated, tau)
    if request.tau_sweep:
        report["tau_sweep"] = [{"tau": t, "miou": scores(cm).miou} for t, cm in gated_cm.items()]
        table += "\n\ntau sweep (gated mIoU): " + ", ".join(
            f"{t:g}: {100 * scores(cm).miou:.2f}" for t, cm in gated_cm.items()
        )
    return report, table
