"""The optimizer and its per-epoch learning-rate schedule (``optimizer`` config group)."""

from __future__ import annotations

import logging
from enum import StrEnum

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR

log = logging.getLogger(__name__)


class OptimizerName(StrEnum):
    """``optimizer.name``: the paper's SGD (the key names the optimizer in run configs and tables)."""

    sgd = "sgd"


class Schedule(StrEnum):
    """``optimizer.schedule``: steps at ``milestones`` (the paper), or cosine decay to 0."""

    multistep = "multistep"
    cosine = "cosine"


def build_optimizer(
    model: nn.Module, cfg: DictConfig, epochs: int
) -> tuple[torch.optim.Optimizer, LRScheduler]:
    """SGD from ``cfg`` and its schedule, stepped once per epoch.

    ``multistep`` multiplies the rate by ``gamma`` at each milestone, given as a fraction of the epochs
    (the paper: 0.5 and 0.75 of 500 epochs are epochs 250 and 375; never before the first epoch);
    ``cosine`` decays it to 0.

    Every parameter gets a zero gradient up front, and the trainer zeroes gradients instead of
    dropping them, so that a dropped block's weights still get weight decay and momentum, as in the
    paper's code (one flat gradient tensor) and in frameworks that mask the branch. With ``None``
    gradients, PyTorch's SGD would skip those weights altogether.

    On CUDA the fused implementation updates all parameters in a few kernels (PyTorch's default there
    is ``foreach``); elsewhere PyTorch's default is kept, so CPU runs stay as they were.
    """
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        dampening=cfg.dampening,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
        fused=True if all(p.is_cuda for p in model.parameters()) else None,
    )
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    if Schedule(cfg.schedule) == Schedule.cosine:
        if cfg.milestones:  # a warning, not an error: runs made so (optimizer.schedule=cosine) resume
            log.warning(
                "optimizer.milestones %s are not used: optimizer.schedule=cosine decays the rate by itself",
                list(cfg.milestones),
            )
        return optimizer, CosineAnnealingLR(optimizer, T_max=epochs)
    milestones = [max(1, round(m * epochs)) for m in cfg.milestones]  # the rate drops after these epochs
    twice = sorted(
        {m for m in milestones if milestones.count(m) > 1 and m < epochs}
    )  # after the last: unused
    if twice:  # e.g. the paper's 0.5 and 0.75 of 3 epochs: both after epoch 2
        log.warning(
            "optimizer.milestones %s of %d epochs round to the same epoch: after epoch %s the rate drops "
            "by gamma more than once", list(cfg.milestones), epochs, ", ".join(map(str, twice)),
        )  # fmt: skip
    return optimizer, MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)
