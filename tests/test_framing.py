"""What the pipeline is sent for an image (issue 20, item 2): the segmenter's letterboxed
canvas and the classifier's own view, the whole image resized as training shows it. In-process:
the real gateway with Triton replaced at its dependency (tests/gateway_fakes.py), and the
client-side pipeline of ``s4seg predict``. The graphs' side: tests/test_export.py."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
from gateway_fakes import fake_app, running, write_repository
from PIL import Image

from s4seg.letterbox import Framing, classifier_view
from s4seg.manifest import NO_CLASSIFIER_VIEW_SIZE


def wide_photo(width: int = 90, height: int = 30) -> tuple[np.ndarray, bytes]:
    """Left third red, the rest a grey ramp: any pad bar would show as a row of pad colour."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., :] = np.linspace(60, 200, width, dtype=np.uint8)[None, :, None]
    pixels[:, : width // 3] = (255, 0, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return pixels, buffer.getvalue()


def test_the_gateway_sends_the_classifier_the_whole_image_not_the_letterbox(
    tmp_path: Path,
) -> None:
    repo = write_repository(tmp_path / "repo", size=48)  # square canvas, a 3:1 photo
    app, ensemble = fake_app(repo)
    pixels, data = wide_photo()
    with running(app) as url:
        response = httpx.post(
            f"{url}/v1/segment", content=data, headers={"Content-Type": "image/png"}, timeout=30
        )
    assert response.status_code == 200, response.text
    assert ensemble.last_inputs is not None
    canvas, view = ensemble.last_inputs
    side = NO_CLASSIFIER_VIEW_SIZE  # the fake manifest has no classifier
    assert canvas.shape == (48, 48, 3) and view.shape == (side, side, 3)
    assert (canvas[:8] == 0).all() and (canvas[-8:] == 0).all()  # the letterbox's pad bars
    np.testing.assert_array_equal(view, classifier_view(pixels, side))
    assert (view[0] != 0).any(axis=-1).all()  # no pad row: the top row is the photo's
    assert view[:, : side // 3 - 1, 0].min() == 255  # the red third, stretched to a third


def test_framing_decodes_enough_for_both_inputs() -> None:
    """A JPEG decoded at reduced scale must still cover the classifier's square."""
    framing = Framing((32, 64), (0, 0, 0), 100)
    assert framing.fit == (100, 100)
    pixels, _ = wide_photo(300, 120)
    framed = framing.frame(pixels)
    assert framed.canvas.shape == (32, 64, 3) and framed.view.shape == (100, 100, 3)
    assert framed.placement.original == (120, 300)
