"""A segmenter checkpoint's acquisition scores on training images it was not given labels for
(the study's acquisition axis, issue 34 item 4): the numbers ``s4seg queue`` reads from an export
(``s4seg.acquisition``), here from the PyTorch model on each whole image, as evaluation runs it.

No export stands between rounds of a study, so no calibration either: softmax at temperature 1,
and the strategies that need an export's calibration or its classifier are not offered here."""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from tqdm import tqdm

from s4seg.acquisition import ImageScores, image_scores
from s4seg.layouts import data_layout
from s4seg.quality import STRIDE

from .checkpoint import Checkpoint
from .data.split import select
from .data.transforms import eval_transform
from .evaluation import predict_probabilities
from .models import segmenter_from_checkpoint
from .runtime import setup_runtime


@torch.no_grad()
def score_pool(
    checkpoint: str, train_split: str, ids: list[str], device: str = "auto"
) -> dict[str, ImageScores]:
    """Each id's scores (``train_split``'s images of the checkpoint's data set)."""
    trained = Checkpoint.load(checkpoint, kind="segmenter")
    layout = data_layout(trained, None, None)
    runtime = setup_runtime(
        device, amp="off", channels_last="off", fixed_shapes=False, distributed=False
    )
    model = segmenter_from_checkpoint(trained).to(runtime.device).eval()
    view = eval_transform(trained.normalization["mean"], trained.normalization["std"])
    scored = {}
    samples = select(layout.samples(train_split), ids, "pool")
    for sample in tqdm(samples, desc="score the pool", leave=False, disable=None):
        pixels = np.array(layout.read_image(sample))
        image = view(tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1)))[None]
        probabilities = predict_probabilities(model, image, runtime)[0].cpu().numpy()
        # Log-probabilities: the logits up to a constant per pixel, which softmax ignores.
        grid = np.log(np.clip(probabilities[:, ::STRIDE, ::STRIDE], 1e-12, 1.0))
        scored[sample.id] = image_scores(grid, None, None, trained.background_index)
    return scored
