"""Proof that the ONNX pipeline computes what the PyTorch modules compute, on real images.

Both sides get the same uint8 batch the server sends (letterboxed canvases, the classifier's
views). Compared: pixel class
probabilities, classifier probabilities, gated and ungated label maps, and the gated mIoU
against the ground truth at each image's own size, the gated scores mapped back as the server
maps them (``labels_from_scores``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from s4seg.letterbox import Framing, labels_from_scores
from s4seg.manifest import Parity
from s4seg.metrics import confusion_matrix, scores
from s4seg.onnx_pipeline import UNGATED_TAU, OnnxPipeline

MIN_LABEL_AGREEMENT = 0.999
MAX_MIOU_DIFF = 0.001  # 0.1 mIoU points


@torch.no_grad()
def torch_pipeline(
    graphs: dict[str, nn.Module], images: np.ndarray, views: np.ndarray, tau: float
) -> dict[str, np.ndarray]:
    seg_input, cls_input = graphs["preprocess"](torch.from_numpy(images), torch.from_numpy(views))
    logits = graphs["segmenter"](seg_input)
    class_probs = graphs["classifier"](cls_input)
    taus = torch.full((len(images), 1), tau)
    labels, _, gated = graphs["gate"](logits, class_probs, taus)
    ungated, _, _ = graphs["gate"](logits, class_probs, torch.full_like(taus, UNGATED_TAU))
    return {
        "probs": logits.softmax(1).numpy(),
        "class_probs": class_probs.numpy(),
        "labels": labels.numpy(),
        "ungated": ungated.numpy(),
        "scores": gated.numpy(),
    }


def onnx_pipeline(
    pipeline: OnnxPipeline, images: np.ndarray, views: np.ndarray, tau: float
) -> dict[str, np.ndarray]:
    out = pipeline.run(images, views, tau, keep_logits=True)
    logits = torch.from_numpy(out.logits)
    return {
        "probs": logits.softmax(1).numpy(),
        "class_probs": out.class_probs,
        "labels": out.labels,
        "ungated": pipeline.run(images, views, UNGATED_TAU).labels,
        "scores": out.scores,
    }


def measure_parity(
    graphs: dict[str, nn.Module],
    pipeline: OnnxPipeline,
    images: list[np.ndarray],
    masks: list[np.ndarray] | None,
    batch_size: int = 4,
    tau: float | None = None,
) -> Parity:
    """Figures for the manifest, gated at ``tau`` (default: the manifest's); ``masks`` None
    (classes unknown to the images): no mIoU."""
    manifest = pipeline.manifest
    tau = manifest.tau if tau is None else tau
    framing = Framing.of(manifest)
    placements = []
    sides: dict[str, dict[str, list]] = {"torch": {}, "onnx": {}}
    for start in range(0, len(images), batch_size):
        canvases, views, placed = framing.batch(images[start : start + batch_size])
        placements += placed
        for side, result in (
            ("torch", torch_pipeline(graphs, canvases, views, tau)),
            ("onnx", onnx_pipeline(pipeline, canvases, views, tau)),
        ):
            for key, value in result.items():
                sides[side].setdefault(key, []).append(value)
    a = {k: np.concatenate(v) for k, v in sides["torch"].items()}
    b = {k: np.concatenate(v) for k, v in sides["onnx"].items()}
    figures: dict = {
        "images": len(images),
        "tau": tau,
        "input_size": list(framing.size),
        # what ran the networks: ONNX Runtime's providers, or "OpenVINO CPU <precision>"
        "providers": list(pipeline.sessions["segmenter"].get_providers()),
        "max_abs_prob_diff": float(np.abs(a["probs"] - b["probs"]).max()),
        "max_abs_class_prob_diff": float(np.abs(a["class_probs"] - b["class_probs"]).max()),
        "label_agreement": float((a["labels"] == b["labels"]).mean()),
        "ungated_label_agreement": float((a["ungated"] == b["ungated"]).mean()),
    }
    if masks is not None:
        n = manifest.num_classes
        for side, result in (("torch", a), ("onnx", b)):
            confusion = np.zeros((n, n), dtype=np.int64)
            for gated, placement, truth in zip(result["scores"], placements, masks, strict=True):
                confusion += confusion_matrix(truth, labels_from_scores(gated, placement), n)
            figures[f"gated_miou_{side}"] = scores(confusion).miou
        figures["gated_miou_diff"] = abs(figures["gated_miou_torch"] - figures["gated_miou_onnx"])
    figures["passed"] = bool(
        figures["label_agreement"] >= MIN_LABEL_AGREEMENT
        and figures.get("gated_miou_diff", 0.0) <= MAX_MIOU_DIFF
    )
    return Parity(**figures)


def describe_failure(parity: Parity) -> str:
    parts = [f"label agreement {100 * parity.label_agreement:.3f}% (need >= 99.9%)"]
    if parity.gated_miou_diff is not None:
        parts.append(f"gated mIoU difference {100 * parity.gated_miou_diff:.3f} (need <= 0.1)")
    parts.append(f"max prob difference {parity.max_abs_prob_diff:.2e}")
    return ", ".join(parts)
