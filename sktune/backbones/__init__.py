"""Backbones: the pristine pretrained module, shared by clones, never trained.

The pristine backbone is read-only: estimators never train it, never register
hooks on it and never move it. ``clone`` and ``copy.deepcopy`` share it; each
``fit`` makes its own training copy (DESIGN.md, invariants 1 and 2).

A backbone is an ``nn.Module``, a zero-argument factory, or a string spec
resolved lazily (timm, torchvision and transformers are imported only then):

- ``"timm:NAME"``: ``timm.create_model(NAME, pretrained=True, num_classes=0)``,
  pooled features without the classifier;
- ``"torchvision:NAME"``: ``torchvision.models.get_model(NAME,
  weights="DEFAULT")`` with its final classification layer replaced by
  ``nn.Identity``;
- ``"hf:ID_OR_DIR"``: a transformers ``AutoModel`` from the hub or a local
  directory, wrapped in :class:`sktune.families.hf.HFEncoder` (pooled features);
- a local directory in Hugging Face layout (with ``config.json``), or a
  checkpoint file that names its architecture (timm's ``{"arch": ...,
  "state_dict": ...}``).

:class:`Backbone` lives in :mod:`sktune.backbones.backbone` (with the cache of
string specs), loading in :mod:`sktune.backbones.specs` (one loader per model
family) and :mod:`sktune.backbones.weights` (safe local weights), pickling by
reference inside :func:`sktune.share_backbones` in
:mod:`sktune.backbones.shared`. This package only re-exports.

``Backbone(spec, weights=PATH)`` builds the architecture with random weights
and loads a local state dict (``.safetensors``, or ``.pth``/``.pt``/``.bin``
read with ``torch.load(weights_only=True)``), so no network is needed.
"""

from .backbone import BACKBONE_ACCEPTED, Backbone, as_backbone, is_backbone_source
from .specs import WeightsUnavailableError
from .weights import load_weights, read_state_dict

__all__ = [
    "BACKBONE_ACCEPTED",
    "Backbone",
    "WeightsUnavailableError",
    "as_backbone",
    "is_backbone_source",
    "load_weights",
    "read_state_dict",
]
