"""The process-wide store: fingerprints, its budget, clearing it."""

import torch
from helpers import (
    mlp_backbone,
)

from sktune.cache import fingerprint


def test_fingerprint_follows_in_place_updates():
    module = mlp_backbone()
    before = fingerprint(module)
    assert fingerprint(module) == before
    with torch.no_grad():
        module[2].bias.add_(1.0)
    assert fingerprint(module) != before
