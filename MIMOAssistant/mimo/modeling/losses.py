"""MIMO's training objective: next-token cross-entropy on the answer, BCE + Dice on the masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Label of prompt tokens (image, question, history): the model is not taught to write them."""


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ``labels[t + 1]`` from position ``t``."""
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shifted_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX)


def mask_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary cross-entropy, averaged over pixels and masks: (K, m, m) each."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def mask_dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per mask, averaged: it weighs small structures as much as large ones,
    which per-pixel BCE alone does not."""
    probabilities = torch.sigmoid(logits.float()).flatten(1)
    targets = targets.float().flatten(1)
    overlap = (probabilities * targets).sum(-1)
    total = probabilities.sum(-1) + targets.sum(-1)
    return (1 - (2 * overlap + smooth) / (total + smooth)).mean()
