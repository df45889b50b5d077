"""The module skorch trains: a backbone copy, pooling, and a fresh head."""

from __future__ import annotations

from torch import nn

from .freeze import FreezePlan, set_frozen_eval
from .heads import pool_features

__all__ = ["FineTuneNetwork"]


class FineTuneNetwork(nn.Module):
    """``head(pool(backbone(X)))``, with frozen backbone parts kept in eval mode.

    Parameters
    ----------
    backbone : nn.Module
        The private training copy of the pretrained backbone.
    head : nn.Module
        The fresh task head.
    plan : FreezePlan
        Which backbone modules stay in eval mode while the rest trains.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, plan: FreezePlan):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.plan = plan

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            set_frozen_eval(self.backbone, self.plan)
        return self

    def forward(self, X):
        return self.head(pool_features(self.backbone(X)))
