"""A seed ensemble: several copies of one backbone, trained alike from different seeds, whose class
probabilities are averaged.

Averaging independently trained networks usually removes part of their error (Lakshminarayanan et al.
2017, "deep ensembles"); what it gains depends on how much the members' errors differ. On one
UrbanSound8K fold the gain is small next to the seed-to-seed spread (benchmarks/select_recipe.md,
benchmarks/accuracy.md), but it was there over the five inner groups of fold 1, so the default recipe
trains 4 members. The ensemble is an ordinary backbone: it maps features to (log-)scores, so the model
file, inference, windowed prediction and export treat it like any other model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class SeedEnsemble(nn.Module):
    """``members`` share input and output; the output is the log of their mean class probabilities.

    Returning log-probabilities keeps the contract of every backbone (softmax of the output gives the
    class probabilities, argmax gives the class), and ``softmax(log(mean p)) == mean p`` exactly.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, 1, n_bands, frames)
        log_probabilities = []
        for member in self.members:  # a plain loop: TorchScript and ONNX export handle it
            log_probabilities.append(torch.log_softmax(member(x), dim=-1))  # (batch, n_classes)
        stacked = torch.stack(log_probabilities)  # (members, batch, n_classes)
        return torch.logsumexp(stacked, dim=0) - math.log(len(self.members))  # (batch, n_classes)
