"""The served tau, chosen on held-out labeled images at export.

The paper picked tau = 0.2 "by cross-validation" on VOC; a classifier trained elsewhere (another
data set, fewer labels, a shorter schedule) can make that threshold remove more right classes
than wrong ones. So export sweeps tau on labeled images the model was not trained on, through the
exported ONNX pipeline as the server runs it (letterboxed), and serves the tau with the best gated
mIoU, or the gate off (tau = -1) when no tau beats the ungated map. The sweep is recorded in the
manifest (``tau_choice``) so publish and ``/v1/models`` can say which tau was chosen and why.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from s4seg.errors import DatasetError
from s4seg.holdout import CALIBRATION_SEED, CALIBRATION_SHARE, select_part
from s4seg.layouts import data_layout, trained_on
from s4seg.letterbox import Framing, labels_from_scores
from s4seg.manifest import GATE_OFF_TAU, TauChoice
from s4seg.metrics import confusion_matrix, scores
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.training.checkpoint import Checkpoint
from s4seg.training.gate import class_keep_mask, gated_scores

from .parity import MAX_MIOU_DIFF
from .requests import DEFAULT_CALIBRATION_IMAGES

CALIBRATION_TAUS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# A gain below the parity tolerance (0.1 mIoU point) is noise, not a reason to gate: on the
# synthetic set a classifier gave +0.02 at tau 0.05 and -1.0 at the paper's 0.2.
MIN_GAIN = MAX_MIOU_DIFF


def sweep_tau(
    pipeline: OnnxPipeline,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    taus: tuple[float, ...] = CALIBRATION_TAUS,
    batch: int = 8,
) -> tuple[float, list[dict[str, float]]]:
    """Ungated mIoU and ``[{tau, miou}]``: the images run through the pipeline once (letterboxed,
    ``batch`` at a time), the gate (``training.gate.gated_scores``, what the ONNX gate is exported
    from) once per distinct set of kept classes: taus that keep the same classes share a map.
    Maps go back to each image's size as the server maps them (``labels_from_scores``)."""
    manifest = pipeline.manifest
    n, background = manifest.num_classes, manifest.background_index
    framing = Framing.of(manifest)
    ungated = np.zeros((n, n), dtype=np.int64)
    gated = {tau: np.zeros_like(ungated) for tau in taus}
    for start in range(0, len(images), batch):
        canvases, views, placed = framing.batch(images[start : start + batch])
        out = pipeline.run(canvases, views, GATE_OFF_TAU, True)
        scores_np = out.logits
        assert scores_np is not None  # asked for (keep_logits)
        logits, probs = torch.from_numpy(scores_np), torch.from_numpy(out.class_probs)
        for i, placement in enumerate(placed):
            truth = masks[start + i]
            by_kept: dict[tuple[bool, ...], np.ndarray] = {}
            ungated += confusion_matrix(truth, labels_from_scores(scores_np[i], placement), n)
            for tau in taus:
                kept = tuple(class_keep_mask(probs[i : i + 1], tau, background)[0].tolist())
                if kept not in by_kept:
                    gated_map, _ = gated_scores(
                        logits[i : i + 1], probs[i : i + 1], tau, background
                    )
                    map_ = labels_from_scores(gated_map[0].numpy(), placement)
                    by_kept[kept] = confusion_matrix(truth, map_, n)
                gated[tau] += by_kept[kept]
    return scores(ungated).miou, [{"tau": t, "miou": scores(gated[t]).miou} for t in taus]


def choose_tau(ungated_miou: float, sweep: list[dict[str, float]]) -> tuple[float, str]:
    """The tau with the best gated mIoU if it beats the ungated map by at least ``MIN_GAIN``
    (ties: the smallest such tau, which suppresses least), else the gate off."""
    best = max(sweep, key=lambda row: (row["miou"], -row["tau"]))
    if best["miou"] >= ungated_miou + MIN_GAIN:
        return best["tau"], (
            f"tau {best['tau']:g} gives the best gated mIoU, {100 * best['miou']:.2f} against "
            f"{100 * ungated_miou:.2f} ungated"
        )
    return GATE_OFF_TAU, (
        f"gate off: no tau beats the ungated mIoU {100 * ungated_miou:.2f} by "
        f"{100 * MIN_GAIN:g} point (best: tau {best['tau']:g} at {100 * best['miou']:.2f})"
    )


def calibration_data(
    checkpoint: Checkpoint,
    data: str,
    kind: str | None,
    max_images: int,
    part: str = "calibration",
) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Labeled held-out images: the calibration part (``s4seg.holdout``) of the validation
    split of ``data`` (a data set folder), or with ``auto`` of the data set the segmenter was
    trained on. The reported figures use the rest (``part="report"``)."""
    root = trained_on(checkpoint).get("root") if data == "auto" else data
    if not root or not Path(root).is_dir():
        raise DatasetError(f"no labeled data to calibrate tau on at {root}")
    layout = data_layout(checkpoint, None if data == "auto" else data, kind)
    if list(layout.classes) != checkpoint.classes:
        raise DatasetError(f"{layout.root} has other classes than the model; cannot calibrate")
    split = layout.default_val_split
    samples = select_part(layout.samples(split), part)[:max_images]
    if not samples:
        raise DatasetError(f"{layout.root} has no {split} images to calibrate tau on")
    images = [np.asarray(layout.read_image(s)) for s in samples]
    masks = [layout.read_mask(s) for s in samples]
    held_out = {"part": part, "share": CALIBRATION_SHARE, "seed": CALIBRATION_SEED}
    return (
        images,
        masks,
        {**layout.describe(), "split": split, **held_out, "ids": [s.id for s in samples]},
    )


def calibrate(
    pipeline: OnnxPipeline,
    checkpoint: Checkpoint,
    data: str,
    kind: str | None = None,
    max_images: int = DEFAULT_CALIBRATION_IMAGES,
    log: Callable[[str], None] = print,
) -> tuple[float, TauChoice]:
    images, masks, source = calibration_data(checkpoint, data, kind, max_images)
    log(
        f"calibrating tau on {len(images)} {source['split']} images of {source['root']} (its "
        f"calibration part: {100 * CALIBRATION_SHARE:.0f}%, seeded; figures use the rest)"
    )
    ungated, sweep = sweep_tau(pipeline, images, masks)
    tau, reason = choose_tau(ungated, sweep)
    log(f"tau: {reason}")
    choice = TauChoice(
        method="calibrated",
        reason=reason,
        data=source,
        images=len(images),
        ungated_miou=ungated,
        sweep=sweep,
    )
    return tau, choice
