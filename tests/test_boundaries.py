"""Boundary F-score (s4seg.boundaries): what `s4seg bench mapback` reports edges with."""

from __future__ import annotations

import numpy as np

from s4seg.boundaries import boundary, boundary_counts, f_score


def disc(size: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return (((y - centre[0]) ** 2 + (x - centre[1]) ** 2) <= radius**2).astype(np.uint8)


def test_the_same_map_scores_one_and_a_shifted_one_only_within_the_tolerance() -> None:
    truth = disc(64, (32, 32), 15)
    assert boundary(truth).sum() > 0 and not boundary(np.zeros((8, 8), np.uint8)).any()
    assert f_score(boundary_counts(truth, truth, 0)) == 1.0
    shifted = disc(64, (32, 35), 15)  # 3 px to the right
    assert f_score(boundary_counts(truth, shifted, 1)) < 0.6
    assert f_score(boundary_counts(truth, shifted, 3)) == 1.0
    assert f_score(boundary_counts(truth, np.zeros_like(truth), 5)) == 0.0
