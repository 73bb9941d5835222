"""The pipeline's tensors: one definition of names, dtypes and shapes, used by the exporter (graph
inputs and outputs), the Triton configs, the in-process ONNX pipeline and the Triton client.

segmenter:  image (N, h, w, 3) uint8 (letterboxed) -> logits (N, C, h, w) float32, at the input's
            resolution (the normalisation inside the graph)
classifier: classifier_image (N, s, s, 3) uint8 (the whole image resized) -> class_probs (N, C)
            float32 (sigmoid; 1.0 everywhere without MLMT)
gate:       logits, class_probs, tau (N, 1) float32 -> labels (N, h, w) uint8,
            suppressed (N, C) bool, scores (N, C, h, w) float32 (the logits with suppressed
            classes pushed to SUPPRESSED_SCORE: labels = argmax of scores, at any resolution)

Inside export only, the networks and their normalisation are graphs of their own before they are
folded together (``export/fold.py``): preprocess takes both images and gives seg_input, cls_input
(N, 3, ., .) float32, normalised; the networks take those.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy's name
    dims: tuple[int, ...]  # without the batch axis; -1: any size

    @property
    def triton_type(self) -> str:  # model configs (config.pbtxt)
        return TRITON_TYPES[self.dtype]

    @property
    def wire_type(self) -> str:  # inference requests (tritonclient)
        return TRITON_TYPES[self.dtype].removeprefix("TYPE_")


TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "bool": "TYPE_BOOL"}

IMAGE = TensorSpec("image", "uint8", (-1, -1, 3))
CLS_IMAGE = TensorSpec("classifier_image", "uint8", (-1, -1, 3))
TAU = TensorSpec("tau", "float32", (1,))
SEG_INPUT = TensorSpec("seg_input", "float32", (3, -1, -1))
CLS_INPUT = TensorSpec("cls_input", "float32", (3, -1, -1))
LOGITS = TensorSpec("logits", "float32", (-1, -1, -1))
D_SCORE = TensorSpec("d_score", "float32", ())  # the optional discriminator graph's, per image
CLASS_PROBS = TensorSpec("class_probs", "float32", (-1,))
LABELS = TensorSpec("labels", "uint8", (-1, -1))
SUPPRESSED = TensorSpec("suppressed", "bool", (-1,))
SCORES = TensorSpec("scores", "float32", (-1, -1, -1))

# The score a suppressed class gets in ``scores``: finite (bilinear resizing of -inf gives NaN),
# far below any logit, so it never wins an argmax, resized or not.
SUPPRESSED_SCORE = -1e30

# Each step's (inputs, outputs), in the order the graphs take and return them.
GRAPH_IO: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {
    "segmenter": ((IMAGE,), (LOGITS,)),
    "classifier": ((CLS_IMAGE,), (CLASS_PROBS,)),
    "gate": ((LOGITS, CLASS_PROBS, TAU), (LABELS, SUPPRESSED, SCORES)),
}
# Each network's folded form: (the image it takes, the normalised input inside it).
FOLDED_INPUTS = {"segmenter": (IMAGE, SEG_INPUT), "classifier": (CLS_IMAGE, CLS_INPUT)}
# What the ensemble takes and answers. tau is required: Triton refuses optional inputs on
# ensembles (server PR #3894), so the gateway always sends it (the manifest's tau by default).
ENSEMBLE_INPUTS = (IMAGE, CLS_IMAGE, TAU)
ENSEMBLE_OUTPUTS = (LABELS, CLASS_PROBS, SUPPRESSED, SCORES)
# What a caller that maps the scores back to the photo asks for (the served-size labels stay in
# Triton). Asking for the scores alone makes Triton 2.51's ensemble fail ("unexpected deadlock,
# at least one output is not set"), so the small outputs come along.
MAP_BACK_OUTPUTS = (SCORES, CLASS_PROBS, SUPPRESSED)
