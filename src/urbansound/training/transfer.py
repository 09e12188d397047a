"""Fine-tuning controls that belong to training, not to the saved model: which parameters the optimiser
moves at which rate, and freezing the backbone (a linear probe, or the head-only warm-up epochs).

The class head is each backbone's output layer (:meth:`AudioClassifier.output_layers`); everything else
with parameters is "backbone" here, including a pretrained network's own input normalisation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import nn

from urbansound.config import TrainingConfig
from urbansound.models.classifier import AudioClassifier

logger = logging.getLogger(__name__)


def head_parameter_ids(model: AudioClassifier) -> set[int]:
    """``id`` of every parameter of the class head(s)."""
    return {id(p) for layer in model.output_layers() for p in layer.parameters()}


def parameter_groups(
    model: AudioClassifier, config: TrainingConfig
) -> tuple[list[dict[str, object]] | Iterator[nn.Parameter], float | list[float]]:
    """The optimiser's parameters and peak learning rate(s).

    Without ``backbone_lr_scale`` < 1 or ``freeze_backbone``: every parameter at ``max_lr`` (what every
    recipe trained from scratch does). Otherwise two groups, the backbone at ``max_lr * backbone_lr_scale``
    and the head at ``max_lr``; a frozen backbone is left out of the optimiser altogether.
    """
    if config.backbone_lr_scale == 1.0 and not config.freeze_backbone:
        return model.parameters(), config.max_lr
    head = head_parameter_ids(model)
    head_params = [p for p in model.parameters() if id(p) in head]
    if config.freeze_backbone:
        return [{"params": head_params, "lr": config.max_lr}], [config.max_lr]
    rest = [p for p in model.parameters() if id(p) not in head]
    backbone_lr = config.max_lr * config.backbone_lr_scale
    groups: list[dict[str, object]] = [
        {"params": rest, "lr": backbone_lr},
        {"params": head_params, "lr": config.max_lr},
    ]
    return groups, [backbone_lr, config.max_lr]


class BackboneFreezer:
    """Holds everything but the class head fixed while :meth:`set` says so: no gradients, and its
    BatchNorm and dropout layers in evaluation mode even though the training loop calls ``train()`` (a
    forward pre-hook puts them back), so the pretrained running statistics are neither updated nor replaced
    by batch statistics.
    """

    def __init__(self, model: AudioClassifier) -> None:
        head = head_parameter_ids(model)
        heads = {id(m) for m in model.output_layers()}
        self.params = [p for p in model.backbone.parameters() if id(p) not in head]
        self.modules = [m for m in model.backbone.modules() if id(m) not in heads and m is not model.backbone]
        self.backbone = model.backbone
        self.frozen = False
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    def _hold_eval(self, module: nn.Module, args: object) -> None:
        del module, args
        for m in self.modules:
            m.eval()

    def set(self, frozen: bool) -> None:
        """Freeze (``True``) or release the backbone; a no-op when already so."""
        if frozen == self.frozen:
            return
        for p in self.params:
            p.requires_grad_(not frozen)
        if frozen:
            self._hook = self.backbone.register_forward_pre_hook(self._hold_eval)
        elif self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.frozen = frozen
        logger.info(
            "backbone %s", "frozen: only the class head trains" if frozen else "released: all layers train"
        )

    def update(self, config: TrainingConfig, epoch: int) -> None:
        """Frozen for a linear probe, and in the first ``head_warmup_epochs`` epochs (epochs count from 1)."""
        self.set(config.freeze_backbone or epoch <= config.head_warmup_epochs)
