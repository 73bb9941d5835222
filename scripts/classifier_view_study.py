"""Issue 20, item 2, measured: what the classifier's view costs on photos of mixed orientation.

The synthetic validation scenes cropped to 4:3 and 3:4 (alternately, masks alike), a served
canvas of the largest height and width (square, as export chooses it for such a set), and an
MLMT checkpoint's object-class AP with (a) training's view (the whole image resized), which the
server now sends, and (b) the letterboxed canvas resized, which it sent before.

    python scripts/classifier_view_study.py data/synth runs/bn-ema-s{0,1,2}/last.pt
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from s4seg.defaults import IMAGENET_MEAN, IMAGENET_STD
from s4seg.layouts import open_layout
from s4seg.letterbox import Framing, classifier_view, pad_colour
from s4seg.training.checkpoint import Checkpoint
from s4seg.training.models.classifier import classifier_from_checkpoint
from s4seg.training.multilabel_metrics import multilabel_report


def main(checkpoint: str, data: str) -> None:
    trained = Checkpoint.load(checkpoint, kind="classifier")
    model = classifier_from_checkpoint(trained).eval()
    side = trained.arch["input_size"]
    layout = open_layout(data)
    classes = list(layout.classes)
    samples = layout.samples(layout.default_val_split)
    crops = []
    for i, sample in enumerate(samples):
        image, mask = np.asarray(layout.read_image(sample)), layout.read_mask(sample)
        h, w = image.shape[:2]
        ch, cw = (h, h * 3 // 4) if i % 2 else (h * 3 // 4, w)  # 3:4 portrait, 4:3 landscape
        crops.append((image[:ch, :cw], mask[:ch, :cw]))
    size = (max(c[0].shape[0] for c in crops), max(c[0].shape[1] for c in crops))
    framing = Framing(size, pad_colour(list(trained.normalization["mean"])), side)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def probs(view: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(view).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            return torch.sigmoid(model((x - mean) / std))[0].numpy()

    targets, whole, boxed = [], [], []
    for image, mask in crops:
        framed = framing.frame(image)
        target = np.zeros(len(classes))
        present = np.unique(mask)
        target[present[present < len(classes)]] = 1
        targets.append(target)
        whole.append(probs(framed.view))
        boxed.append(probs(classifier_view(framed.canvas, side)))
    targets_ = np.stack(targets)
    objects = [c for i, c in enumerate(classes) if i != layout.background_index]
    figures = []
    for scores in (whole, boxed):
        report = multilabel_report(targets_, np.stack(scores), classes)["per_class"]
        aps = [report[c]["ap"] for c in objects if report[c]["ap"] is not None]
        figures.append(100 * float(np.mean(aps)))
    gap = np.abs(np.stack(whole) - np.stack(boxed)).max()
    print(
        f"{checkpoint}: {len(crops)} crops (4:3, 3:4), canvas {size[0]}x{size[1]}: object-class "
        f"AP whole image (now) {figures[0]:.2f}, letterboxed canvas (before) {figures[1]:.2f}, "
        f"largest probability change {gap:.3f}"
    )
    return figures


if __name__ == "__main__":
    data, *checkpoints = sys.argv[1:]
    rows = np.array([main(c, data) for c in checkpoints])
    diff = rows[:, 0] - rows[:, 1]
    print(
        f"mean over {len(rows)}: now {rows[:, 0].mean():.2f} +- {rows[:, 0].std(ddof=1):.2f}, "
        f"before {rows[:, 1].mean():.2f} +- {rows[:, 1].std(ddof=1):.2f}, paired "
        f"{diff.mean():+.2f} +- {diff.std(ddof=1):.2f}"
    )
