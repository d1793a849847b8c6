"""The smallest training loop that trains MIMO: one optimiser step, and a loop over batches.

Batches come from :meth:`MimoProcessor.collate` (with ``labels`` and ``target_masks``) and may
carry cached ``image_features`` instead of pixels when the image encoders are frozen, which
makes CPU training an order of magnitude cheaper. Distributed and mixed-precision training
belong to the ``mimo-assistant train`` command built on top of this.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def train_step(model, batch: dict, optimizer: torch.optim.Optimizer, max_grad_norm: float | None = 1.0) -> dict[str, float]:
    """One optimiser step on ``batch``; returns the losses (before the step) as floats."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    output = model(**batch)
    if output.loss is None:
        raise ValueError("the batch has neither labels nor target_masks: nothing to learn from")
    output.loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(trainable_parameters(model), max_grad_norm)
    optimizer.step()
    losses = {"loss": output.loss, "lm_loss": output.lm_loss, "mask_bce_loss": output.mask_bce_loss, "mask_dice_loss": output.mask_dice_loss,
              "mask_teacher_loss": output.mask_teacher_loss}
    return {name: float(value.detach()) for name, value in losses.items() if value is not None}


def fit(
    model,
    batches: Iterable[dict],
    steps: int,
    learning_rate: float = 1e-4,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """``steps`` optimiser steps with AdamW over the trainable parameters, cycling ``batches``."""
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=learning_rate, weight_decay=weight_decay)
    history = []
    for step, batch in zip(range(steps), itertools.cycle(batches)):
        losses = train_step(model, batch, optimizer, max_grad_norm)
        history.append(losses)
        if log is not None:
            log(step, losses)
    model.eval()
    return history
