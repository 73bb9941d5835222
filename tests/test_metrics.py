"""Metrics against hand-computed confusion matrices."""

import numpy as np
import pytest

from s4seg.metrics import confusion_matrix, format_table, scores


def test_confusion_matrix_by_hand_ignores_255() -> None:
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    prediction = np.array([[0, 1, 1, 1], [2, 0, 2, 2]])
    expected = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 1]])
    assert np.array_equal(confusion_matrix(target, prediction, 3), expected)


def test_scores_by_hand() -> None:
    confusion = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 1]])
    result = scores(confusion)
    # IoU_c = TP / (row + column - TP): 1/(2+2-1), 2/(3+3-2), 1/(2+2-1)
    assert result.iou == pytest.approx([1 / 3, 1 / 2, 1 / 3])
    assert result.miou == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert result.pixel_accuracy == pytest.approx(4 / 7)
    assert result.mean_class_accuracy == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)


def test_class_absent_everywhere_is_not_counted() -> None:
    confusion = np.array([[4, 0, 0], [0, 0, 0], [0, 0, 2]])
    result = scores(confusion)
    assert result.iou == [1.0, None, 1.0] and result.miou == 1.0
    assert "n/a" in format_table(["a", "b", "c"], result)


def test_prediction_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.zeros((2, 2)), np.full((2, 2), 5), 3)
