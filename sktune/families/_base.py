"""What a model family answers, and what its loaders share."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..blocks import BlockOf

__all__ = ["CNN_LR", "BlockOf", "Family", "Loaded", "did_you_mean", "loaded"]

#: ``backbone_lr="auto"`` of convolutional networks (timm, torchvision, others).
CNN_LR = 1e-4


@dataclass
class Loaded:
    """A backbone built from a spec, and what the data side needs to feed it.

    Attributes
    ----------
    module : nn.Module
        The pretrained network, its classifier removed.
    data_config : dict or None
        The pretrained preprocessing of an image model (see
        :meth:`sktune.Backbone.data_config`).
    text_source : str or None
        Where a text model's tokenizer is loaded from.
    pooling : str or None
        A text model's default pooling.
    removed : tuple of str
        Module names of the classifier that was removed: a weights file may
        still hold them.
    """

    module: nn.Module
    data_config: dict | None = None
    text_source: str | None = None
    pooling: str | None = None
    removed: tuple[str, ...] = field(default_factory=tuple)


class Family:
    """What sktune knows about one family of models (the base: nothing).

    A family recognises its models (:meth:`matches`), builds them from a spec
    ``"<spec_prefix>:NAME"`` (:meth:`load`), maps their parameters to blocks
    (:meth:`block_of`), knows their pretrained preprocessing
    (:meth:`data_config`) and classifier (:meth:`removed_classifier`,
    :meth:`remove_classifier`), and where the frozen-prefix cache may cut them
    (:meth:`plan_cut`). Each method may answer None: the generic rule applies.
    """

    name = "generic"
    spec_prefix: str | None = None
    spec_example: str = ""

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return False

    def backbone_lr(self, module: nn.Module) -> float | None:
        """``backbone_lr="auto"``: the family's fine-tuning rate (AdamW).

        ``backbone_lr="auto"`` trains the backbone at this rate, or at ``lr``
        where ``lr`` is lower (see :func:`sktune.schedules.auto_backbone_lr`).
        1e-4 for convolutional networks (pretrained filters move little);
        for a module of no known family without convolutions nothing is known
        about it: None, the head's rate.
        """
        convolutional = any(
            isinstance(m, nn.modules.conv._ConvNd) for m in module.modules()
        )
        return CNN_LR if convolutional else None

    def load(
        self,
        name: str,
        pretrained: bool,
        kwargs: dict,
        family_of: Callable[[nn.Module], Family],
    ) -> Loaded:
        """Build the model ``name`` (pretrained weights fetched if asked).

        ``family_of`` is the registry's lookup (:func:`sktune.families.family_of`),
        for a built model that a more specific family knows better (a timm or
        torchvision vision transformer): a family module never imports the
        registry that lists it.
        """
        raise NotImplementedError

    def fetches(self, name: str, pretrained: bool) -> bool:
        """Whether :meth:`load` reaches the network (its failures mean offline)."""
        return pretrained

    def block_of(self, module: nn.Module) -> BlockOf | None:
        """The block of each parameter and buffer name, or None (generic rule)."""
        return None

    def data_config(self, module: nn.Module) -> dict | None:
        """The preprocessing the pretrained weights expect, if the module says."""
        return None

    def removed_classifier(self, module: nn.Module) -> tuple[str, ...]:
        """Names of the pretrained classifier that ``module`` no longer has."""
        return ()

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module as sktune runs it (e.g. a text model returning features)."""
        return module

    def remove_classifier(self, module: nn.Module) -> tuple[str, ...] | None:
        """Replace the final classification layer by ``nn.Identity``.

        Returns the names removed, or None when the family does not know
        where the classifier is.
        """
        return None

    def adapter_targets(self, module: nn.Module, kind: str):
        """The modules an adapter of ``kind`` adapts by default.

        Returns ``(names, feedforward)`` (the feed-forward ones get (IA)^3's
        input scaling), or None for the generic rule: every linear and
        convolution layer PEFT can adapt.
        """
        return None

    def plan_cut(self, backbone, static, blocks, order):
        """Where the frozen-prefix cache may cut ``backbone``.

        Parameters
        ----------
        backbone : nn.Module
            The training copy, frozen as planned.
        static : sktune.cache.split.StaticParts
            Which parts never change during a fit.
        blocks : list of Block
            The block map.
        order : list of str
            Top-level children in the order the probe's forward ran them.

        Returns
        -------
        Split, NoCache or None
            A cut (verified afterwards on the probe sample), the reason there
            is none, or None for the generic rule (a chain of children).
        """
        return None


def loaded(name: str):
    """The module ``name`` if it is already imported, else None.

    A model of a library can only exist once that library is imported, so
    recognising one never pays for an import.
    """
    return sys.modules.get(name)


def did_you_mean(name: str, choices) -> str:
    """A hint naming the closest of ``choices`` (empty if none is close)."""
    close = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.6)
    return f" Did you mean one of {close}?" if close else ""
