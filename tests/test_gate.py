"""The classifier gate (eq. 7): suppressed classes never appear, background never suppressed."""

import torch

from s4seg.training.gate import gated_argmax


def test_gate_by_hand() -> None:
    # Two pixels, three classes; class 1 wins both ungated.
    scores = torch.tensor([[[[0.2, 0.1]], [[0.7, 0.6]], [[0.1, 0.3]]]])  # (1, 3, 1, 2)
    class_probs = torch.tensor([[0.9, 0.2, 0.5]])  # class 1 at exactly tau: suppressed (<=)
    labels, suppressed = gated_argmax(scores, class_probs, tau=0.2, background_index=0)
    assert suppressed.tolist() == [[False, True, False]]
    assert labels.tolist() == [[[0, 2]]]  # next best allowed class, not "logit 0 can win"


def test_suppressed_classes_never_appear_and_background_survives() -> None:
    torch.manual_seed(0)
    for _ in range(20):
        scores = torch.randn(4, 6, 8, 8)
        class_probs = torch.rand(4, 6)
        class_probs[:, 0] = 0.0  # background probability 0: still never suppressed
        labels, suppressed = gated_argmax(scores, class_probs, tau=0.5, background_index=0)
        assert not suppressed[:, 0].any()
        for n in range(4):
            present = set(labels[n].unique().tolist())
            assert not present & set(torch.nonzero(suppressed[n]).flatten().tolist())


def test_gate_with_negative_logits_does_not_let_suppressed_win() -> None:
    # The public code multiplies logits by 0/1: a suppressed class gets 0 and beats negatives.
    scores = torch.tensor([[[[-3.0]], [[-1.0]], [[-2.0]]]])
    labels, _ = gated_argmax(scores, torch.tensor([[0.9, 0.9, 0.1]]), 0.2, background_index=0)
    assert labels.item() == 1
    labels, _ = gated_argmax(scores, torch.tensor([[0.9, 0.1, 0.9]]), 0.2, background_index=0)
    assert labels.item() == 2


def test_all_suppressed_without_background_keeps_ungated_argmax() -> None:
    scores = torch.randn(2, 5, 4, 4)
    class_probs = torch.tensor([[0.1] * 5, [0.1, 0.1, 0.9, 0.1, 0.1]])
    labels, suppressed = gated_argmax(scores, class_probs, tau=0.2, background_index=None)
    assert torch.equal(labels[0], scores[0].argmax(0))
    assert (labels[1] == 2).all()
    # What was applied: nothing in the first image (issue 20, item 9), four classes in the second.
    assert not suppressed[0].any()
    assert suppressed[1].tolist() == [True, True, False, True, True]


def test_tau_per_call_changes_the_result() -> None:
    scores = torch.tensor([[[[0.1]], [[0.9]]]])
    probs = torch.tensor([[1.0, 0.3]])
    assert gated_argmax(scores, probs, 0.2, 0)[0].item() == 1
    assert gated_argmax(scores, probs, 0.4, 0)[0].item() == 0
    assert gated_argmax(scores, probs, torch.tensor(0.4), 0)[0].item() == 0
