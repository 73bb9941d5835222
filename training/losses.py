"""The s4GAN losses (paper eq. 1-5) and the helpers that prepare the discriminator's inputs;
OHEM cross-entropy, the labeled loss of UniMatch's public Cityscapes recipe."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from s4seg import IGNORE_INDEX


def one_hot_with_ignore(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) labels -> (N, C, H, W) one-hot; ignore pixels become all-zero vectors."""
    valid = mask != IGNORE_INDEX
    safe = torch.where(valid, mask, torch.zeros_like(mask))
    one_hot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float()
    return one_hot * valid.unsqueeze(1)


def fake_maps(logits: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """What D sees of S's prediction: the softmax; with ``pad`` (N, H, W bool, ``gan.d_ignore``
    zero), all-zero vectors where the crop was padded, as the real maps have there, so that
    a zero vector no longer tells D that a map is real."""
    probs = logits.softmax(1)
    return probs if pad is None else probs * (~pad).unsqueeze(1).to(probs.dtype)


def minmax01(images: torch.Tensor) -> torch.Tensor:
    """Scale each image to [0, 1] (what D sees next to the maps, as in the authors' code)."""
    flat = images.flatten(1)
    low = flat.min(1).values.view(-1, 1, 1, 1)
    high = flat.max(1).values.view(-1, 1, 1, 1)
    return (images - low) / (high - low).clamp_min(1e-8)


def feature_matching_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Eq. 2: L1 distance of the batch means of D's pooled features (mean over dimensions)."""
    return (real.mean(0) - fake.mean(0)).abs().mean()


def self_training_loss(
    logits: torch.Tensor, d_fake_prob: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3: cross-entropy of unlabeled predictions against their own argmax, for the samples
    whose discriminator score is at least ``gamma`` (the paper's condition; the authors' code
    uses ``>``). Returns the loss (0 when no sample qualifies) and the per-sample selection.

    Written without data-dependent control flow (no ``if selected.any()``, no boolean
    indexing), so the step never waits for the GPU: the mean cross-entropy of each sample,
    averaged over the selected ones. Every sample has the same pixel count, so this equals the
    cross-entropy over the selected samples' pixels."""
    selected = (d_fake_prob.detach() >= gamma).reshape(-1)
    pseudo = logits.detach().argmax(1)
    per_sample = F.cross_entropy(logits, pseudo, reduction="none").flatten(1).mean(1)
    weights = selected.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp_min(1.0), selected


def discriminator_loss(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """Eq. 5 as a loss to minimise: (BCE(D(fake), 0) + BCE(D(real), 1)) / 2."""
    fake = F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
    real = F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
    return (fake + real) / 2


def generator_adversarial_loss(fake_logit: torch.Tensor) -> torch.Tensor:
    """The standard GAN loss for S (Table 6's CE+SGAN row): BCE(D(S(x_u)), 1)."""
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


def ohem_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.7, min_kept: int = 100_000
) -> torch.Tensor:
    """Cross-entropy over the hard pixels only (online hard example mining, as UniMatch's
    Cityscapes config): the pixels whose softmax probability of their true class is at most
    ``threshold``, raised to the ``min_kept``-th smallest probability when fewer are that hard,
    so at least ``min_kept`` pixels count. With fewer valid pixels than ``min_kept``, plain
    cross-entropy (as the public code)."""
    valid = target != IGNORE_INDEX
    count = int(valid.sum())
    if count == 0 or count < min_kept:
        return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    with torch.no_grad():
        safe = torch.where(valid, target, torch.zeros_like(target))
        prob = logits.detach().float().softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)
        prob = prob.masked_fill(~valid, 1.0)
        kth = prob.flatten().kthvalue(max(1, min(count, min_kept))).values
        cut = torch.maximum(kth, torch.tensor(threshold, device=prob.device))
        kept = valid & (prob <= cut)
    hard = torch.where(kept, target, torch.full_like(target, IGNORE_INDEX))
    return F.cross_entropy(logits, hard, ignore_index=IGNORE_INDEX)
