"""VirNucPro's MLP head, with the submodule names of its published checkpoints."""

from __future__ import annotations

import torch
from torch import nn


class MLPClassifier(nn.Module):
    def __init__(self, input_dim: int = 3328, hidden_dim: int = 512, num_class: int = 2):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.dropout = nn.Dropout(0.5)
        self.output_layer = nn.Linear(hidden_dim, num_class)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B, num_class]: P(others), P(virus)."""
        x = self.dropout(torch.relu(self.bn1(self.hidden_layer(x))))
        return torch.softmax(self.output_layer(x), dim=-1)
