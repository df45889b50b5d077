"""FineTuneClassifier and FineTuneRegressor: skorch estimators over a backbone."""

from __future__ import annotations

import inspect

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import type_of_target
from skorch import NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import EpochScoring
from torch import nn

from ._base import FineTuneMixin
from ._params import CLASSIFIER_CONSTRAINTS, CONSTRAINTS
from ._restarts import encoded_score
from .data.inputs import encode_labels
from .data.weights import class_weights, fit_weights

__all__ = ["FineTuneClassifier", "FineTuneRegressor"]

_COMMON_PARAMS = """
    Parameters
    ----------
    backbone : nn.Module, callable, str or Backbone
        The pretrained network. A module instance is never modified: every
        fit trains a private copy. A zero-argument callable is called once per
        fit. A string spec loads a pretrained model: ``"timm:NAME"``,
        ``"torchvision:NAME"``, ``"hf:ID_OR_DIR"`` (Hugging Face
        transformers), or a local Hugging Face directory; its classifier is
        replaced by the fresh head. ``Backbone(spec, weights=PATH)`` loads
        local weights instead of downloading them. A :class:`sktune.Backbone`
        keeps the pristine weights shared between clones.
    freeze : None, int, float, "all", "auto", list of str or Freeze, default=None
        Which part of the backbone stays frozen, counted in blocks from the
        input side (see ``describe()`` and ``n_blocks_``): None or 0 trains
        everything; ``k`` freezes the first k blocks; ``-k`` all but the last
        k; a float in [0, 1] that fraction of the blocks (rounded down);
        ``"all"`` trains the head only (linear probe); ``"auto"`` chooses
        the depth in the fit, unfreezing one block more per stage while the
        validation score gains (``Freeze("auto", stage_epochs, step, tol,
        min_frozen)`` sets the search; see ``freeze_depth_``); a list of fnmatch
        patterns freezes the matching parameter names; a :class:`Freeze`
        adds options: BitFit (``train_bias``), LP-FT (``probe_epochs``),
        gradual unfreezing (``unfreeze_every``). Frozen parts run in eval
        mode while the rest trains.
    adapter : None, "lora", "ia3" or Adapter, default=None
        Train small adapters (Hugging Face PEFT) instead of the backbone's
        own weights, which all stay frozen: LoRA's low-rank updates or
        (IA)^3's scales, in the parts of the backbone ``freeze`` leaves
        trainable (``freeze=k`` keeps the first k blocks adapter-free, so the
        frozen-prefix cache still serves them). An :class:`Adapter` sets the
        rank, scale, dropout and target modules (``adapter__r`` in a grid).
    head : "linear", "mlp" or callable, default="linear"
        The fresh head, sized in ``fit`` from the backbone's feature width
        and the targets. A callable is called as ``head(in_features,
        out_features)``.
    random_state : None, int or numpy RandomState, default=None
        Seeds head initialization, batch order and dropout, so that the same
        value gives the same model. The global RNG state is left as it was.
    pooling : None, "mean", "cls" or "max", default=None
        How token sequences become one feature vector: the mean or maximum
        over (unpadded) tokens, or the first token. None uses the backbone's
        own default (a sentence-transformers model states its pooling; other
        Hugging Face encoders default to "mean").
    max_length : None or int, default=None
        Text is truncated to this many tokens (None: the tokenizer's limit,
        at most 512). Batches are padded only to their longest member.
    group_by_length : bool, default=False
        Draw training batches of texts of similar token length, so that a
        batch pads less: the shuffled texts are sorted by length within
        mega-batches of up to 50 batches (transformers'
        ``LengthGroupedSampler``). Faster on texts of mixed lengths; batches
        are less random. It takes the place of shuffling, so it has no effect
        with ``iterator_train__shuffle=False`` or a sampler of your own, and
        it needs a ``train_split`` that returns subsets of the fit data (as
        skorch's ``ValidSplit`` does).
    image_size : None, "auto", int or (int, int), default=None
        Resize uint8 images to this size before the backbone, in fit and
        predict (a fitted estimator then takes images of any size); "auto"
        uses the backbone's pretrained input size, None keeps the images'
        size (predict then takes the size fit saw). Photos (paths, PIL
        images) are centre-cropped to it after a resize by the backbone's
        ``crop_pct``; None and "auto" are then the backbone's input size.
    augment : None, "light", "strong" or callable, default=None
        Augment uint8 images in training batches only (evaluation,
        prediction, ``embed`` and the frozen-prefix pass never augment), each
        image with its own random draw from torch's RNG, which
        ``random_state`` seeds. "light": a random resized crop back to the
        image's own size (keeping 35-100% of its area) and a horizontal flip;
        "strong": "light", then TrivialAugmentWide (both from
        ``torchvision.transforms.v2``). A callable takes a uint8 ``N x C x H
        x W`` batch (torchvision's convention; on the training device) and
        returns a uint8 batch of the same N and C, e.g. a ``v2.Compose``
        (a module-level function or a transform object, so that it can be
        cloned and pickled). Blocks that see augmented input cannot be
        cached: training runs without the frozen-prefix cache
        (``cache_info_["reason"]`` says so), predictions still use it. None
        by default: on the ant and bee photos both policies lowered
        cross-validated accuracy (README, "Augmentation").
    cache : "auto", True or False, default="auto"
        Compute the frozen input side of the backbone once per sample instead
        of every epoch, and reuse it across refits, folds and grid-search
        candidates that share the backbone and the cut (see
        :mod:`sktune.cache`). "auto" caches whenever that is exact and fits
        in ``cache_size``; True raises if it cannot; False never caches.
    cache_size : float, default=1024
        The most one fit may cache, in MB: a fit whose prefix outputs need
        more runs without the cache. What the process keeps across fits is
        bounded by the store's own budget (:func:`sktune.set_cache_budget`)
        and freed by :func:`sktune.clear_cache`. Photos decoded at working
        size are held within the same number of MB for the length of a
        call; those beyond it are decoded again when used.
    cache_dtype : None, "float16", "bfloat16", "float32" or torch.dtype, default=None
        Store the cached prefix outputs at this precision (None: as
        computed). "float16" halves the cache's memory, so twice the data
        fits in ``cache_size``; batches are cast back as they are used. The
        model then differs slightly from one trained with ``cache=False``,
        and ``embed`` returns the rounded features of a linear probe.
    channels_last : "auto", True or False, default="auto"
        Run a convolutional backbone on images (uint8 N x H x W x C, or float
        N x C x H x W) in channels-last memory layout, which PyTorch's CPU
        (oneDNN) and cuDNN convolution kernels run faster: EfficientNet-Lite0
        fine-tunes about 1.5x faster on a CPU (``benchmarks/speed.py``). The
        values do not change, only their rounding. "auto" uses it whenever the
        backbone has 2-D convolutions and runs correctly in that layout on a
        probe sample; True raises if it cannot; False never. Resolved when the
        network is built (``fit``, or the first ``partial_fit``).
    precision : "32", "bf16" or "16", default="32"
        Run the backbone's forward and backward under ``torch.autocast`` at
        bfloat16 or float16 (float16 gradients scaled by torch's
        ``GradScaler``); the head and the loss stay in float32, and the
        frozen-prefix cache stores at the compute precision unless
        ``cache_dtype`` says otherwise. Fast on GPUs with tensor cores; on a
        CPU it works, but slowly.
    criterion : torch criterion class, default={criterion}
{criterion_doc}    optimizer : torch optimizer class, default=torch.optim.AdamW
    lr : float, default=1e-3
        The learning rate of the head, and the most the backbone trains at
        under ``backbone_lr="auto"`` (backbone parameters outside every block
        train at ``backbone_lr``).
    backbone_lr : "auto" or float, default="auto"
        The learning rate of the backbone's trainable block nearest the head
        (discriminative learning rates: a pretrained backbone moves far less
        than a fresh head). "auto": the family's fine-tuning rate, or ``lr``
        where that is lower: 1e-5 for Hugging Face encoders, 3e-5 for vision
        transformers, 1e-4 for convolutional networks (AdamW rates), ``lr``
        for other modules; with an adapter, ``lr``: adapters are fresh
        parameters, like the head. So ``lr=5e-5``, the rate transformers
        are fine-tuned at, trains a Hugging Face encoder at 1e-5 and the
        head at 5e-5. The rates in effect show in the fit's summary and in
        :meth:`describe`; a fit that ends no better than a constant
        prediction warns (``ConvergenceWarning``) with them.
    layer_decay : None or float in (0, 1], default=None
        Layer-wise learning-rate decay: each block below the top trainable
        one trains at ``layer_decay`` times the rate of the block above it
        (counted over all blocks, frozen ones included).
    lr_schedule : None, "linear", "cosine" or LRSchedule, default=None
        Linear warmup over the first 10% of the fit, then linear or cosine
        decay to zero, stepped every batch (an :class:`LRSchedule` sets the
        warmup). None keeps the rates constant; pass skorch's
        ``LRScheduler`` callback for any other schedule.
    max_epochs : int, default=10
    n_restarts : int, default=1
        Train this many runs, each with its own initialization and data-order
        seeds (derived from ``random_state``), for ``restart_epochs`` epochs;
        keep the one with the best validation score and continue only it.
        Without a ``train_split``, 20% of the data (stratified for
        classifiers) is held out to choose; the chosen run then continues on
        all of it.
    restart_epochs : int, default=1
        How long each restart trains before the choice.
    batch_size : int, default=32
    train_split : None or callable, default=None
        No validation split unless asked for, e.g. ``skorch.dataset.ValidSplit
        (0.1)`` together with ``callbacks=[skorch.callbacks.EarlyStopping()]``.
    verbose : int, default=1
        0: silent. 1: progress bars (fit, the cache's prefix pass, long
        predictions) and a summary at the start of a fit, only where a
        person is watching (a terminal or a notebook; never in pipes or CI
        logs), removed when done. 2: also skorch's per-epoch table and why
        the frozen-prefix cache is off, wherever the output goes.
    **kwargs
        Any other skorch parameter (``device``: also ``"auto"``, CUDA where
        available, else the CPU; ``callbacks``,
        ``iterator_train__*``, ``optimizer__*``, ...). Training batches are
        shuffled unless ``iterator_train__shuffle=False``.
"""

_COMMON_ATTRIBUTES = """
    Attributes
    ----------
    module_ : FineTuneNetwork
        The trained network: ``backbone`` (the private copy), ``head``.
    n_blocks_ : int
        Number of blocks in the backbone's block map.
    blocks_ : list of Block
        The block map, input side first.
    n_features_in_ : int
        The size of X's second axis in fit, as scikit-learn counts features
        (columns; channels of float ``N x C x H x W`` images, the height of
        uint8 ``N x H x W x C`` ones).
    feature_names_in_ : ndarray of str
        Column names, when X was a DataFrame with string column names.
    history_ : skorch History
        Per-epoch and per-batch training records.
    device_ : str or torch.device
        The device the network trained on (``device="auto"`` resolved).
    adapted_modules_ : list of str
        The backbone modules that carry adapters.
    backbone_lr_ : float
        The learning rate the backbone's top trainable block trained at
        (``backbone_lr`` resolved; set when the optimizer is built).
    freeze_depth_ : int
        With ``freeze="auto"``: the number of blocks frozen at the depth the
        search chose (the fit finished there).
    freeze_search_ : list of dict
        With ``freeze="auto"``: each stage of the search, in order, with its
        ``depth`` (blocks frozen), ``epochs``, ``valid_loss`` and the
        ``score`` chosen by (minus the loss), a classifier's ``valid_acc``,
        and ``seconds``; ``history_`` marks its epochs (``freeze_search``).
    restarts_ : list of dict
        With ``n_restarts > 1``: each restart's ``init_seed``, ``data_seed``
        and validation ``score``; ``best_restart_`` is the one kept.
    cache_info_ : dict
        Whether the frozen-prefix cache was used ("enabled"), why not
        ("reason"), and how many samples' prefix outputs were computed or
        reused.
    prefix_cache_ : PrefixCache
        The frozen-prefix cache: its cut (``split``), key and settings.
    input_spec_ : FittedInput
        What fit saw of X (its kind, one sample's shape and dtype), never a
        sample: the network is rebuilt from it and the parameters alone.
    tokenizer_ : tokenizer or None
        The backbone's tokenizer, for text input.
"""


def _signature(own: dict | None = None, **defaults) -> inspect.Signature:
    """The shared constructor signature (``FineTuneMixin.__init__``) with
    this estimator's defaults, and its ``own`` keyword parameters (name:
    default) after ``criterion``: one definition, two estimators."""
    parameters = []
    for p in inspect.signature(FineTuneMixin.__init__).parameters.values():
        parameters.append(
            p.replace(default=defaults[p.name]) if p.name in defaults else p
        )
        if p.name == "criterion":
            parameters += [
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value)
                for name, value in (own or {}).items()
            ]
    return inspect.signature(FineTuneMixin.__init__).replace(parameters=parameters)


_CLASSIFIER_LOSS_DOC = """        Multilabel targets (a 0/1 indicator matrix ``y``) switch the default
        to ``torch.nn.BCEWithLogitsLoss``, one sigmoid output per label; a
        criterion passed explicitly is kept.
    class_weight : None, "balanced" or dict, default=None
        Weights of the classes in the loss, scikit-learn's meaning: a dict
        ``{class label: weight}`` (classes left out weigh 1; a key that is
        not a class is an error), or "balanced": ``n_samples / (n_classes *
        np.bincount(y))`` over the classes in ``y`` (each ``fit`` or
        ``partial_fit`` call's), so that a rare class counts as much as a
        common one. Multiplied with ``fit``'s
        ``sample_weight``; see :meth:`fit` for how the weights enter the
        loss. Not for multilabel targets (pass ``sample_weight``, or
        ``criterion__pos_weight`` for a positive weight per label).
"""


#: scikit-learn's estimator checks that these estimators fail, with the
#: reason: the way scikit-learn declares them for its SGD estimators
#: (``sklearn.utils._test_common.instance_generator``), for
#: ``parametrize_with_checks(..., expected_failed_checks=...)``.
EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data": (
        "sample_weight is not equivalent to removing/repeating samples: "
        "mini-batch training puts a repeated sample into several batch slots "
        "and a weighted one into one, so the batches differ, and float32 sums "
        "round differently even in one full batch (batch_size=-1 gives equal "
        "models to rounding: tests/test_weights.py)."
    ),
}

_TARGETS = {True: "a multilabel indicator matrix", False: "1-D class labels"}


class FineTuneClassifier(FineTuneMixin, NeuralNetClassifier):
    __doc__ = (
        """Fine-tune a pretrained backbone with a fresh classification head.

    The head outputs logits and is trained with cross-entropy;
    ``predict_proba`` applies the softmax and ``predict`` returns the original
    labels (ints, strings, bools).

    A multilabel target, a 0/1 indicator matrix ``y`` of shape ``(n_samples,
    n_labels)`` (``MultiLabelBinarizer`` makes one), is handled as
    scikit-learn's ``MLPClassifier`` handles it: one output per label,
    trained with binary cross-entropy (``BCEWithLogitsLoss``); ``predict_proba``
    returns each label's sigmoid probability (n_samples x n_labels),
    ``predict`` the indicator matrix (probability above 0.5), ``score`` and
    ``valid_acc`` the subset accuracy, and ``classes_`` is
    ``np.arange(n_labels)``.
"""
        + _COMMON_PARAMS.format(
            criterion="torch.nn.CrossEntropyLoss", criterion_doc=_CLASSIFIER_LOSS_DOC
        )
        + _COMMON_ATTRIBUTES
        + """    classes_ : ndarray
        The class labels, in the order of ``predict_proba``'s columns
        (multilabel: the label columns, ``np.arange(n_labels)``).

    Examples
    --------
    >>> from torch import nn
    >>> from sklearn.datasets import load_digits
    >>> from sktune import FineTuneClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> backbone = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32))
    >>> clf = FineTuneClassifier(backbone, freeze=1, random_state=0).fit(X, y)
    >>> clf.predict(X[:3]).shape
    (3,)
"""
    )

    def __init__(
        self, backbone, *, criterion=nn.CrossEntropyLoss, class_weight=None, **kwargs
    ):
        super().__init__(backbone, criterion=criterion, **kwargs)
        self.class_weight = class_weight

    __init__.__signature__ = _signature(
        {"class_weight": None}, criterion=nn.CrossEntropyLoss
    )

    _constraints = {**CONSTRAINTS, **CLASSIFIER_CONSTRAINTS}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    @property
    def _default_callbacks(self):
        # skorch scores valid_acc with ``predict``, which returns the original
        # labels, against the encoded targets of the validation set.
        return [
            (
                name,
                EpochScoring(encoded_score, name="valid_acc", lower_is_better=False),
            )
            if name == "valid_acc"
            else (name, cb)
            for name, cb in super()._default_callbacks
        ]

    _regression = False

    def _encode_targets(self, y, *, reset, classes=None):
        multilabel = type_of_target(y) == "multilabel-indicator"
        if reset:
            self._multilabel = multilabel
        elif multilabel != self._multilabel:
            raise ValueError(
                f"y is {_TARGETS[multilabel]}, but {type(self).__name__} was fitted "
                f"on {_TARGETS[self._multilabel]}."
            )
        if multilabel:
            return self._encode_indicator(y, reset=reset, classes=classes)
        if reset:
            if classes is None:
                classes = np.unique(y) if self.classes is None else self.classes
            classes = np.asarray(classes)
            if len(classes) < 2:
                raise ValueError(
                    f"y has 1 class ({classes.tolist()}); a classifier needs at least "
                    "2 classes."
                )
            if self.classes is None:
                self.classes_inferred_ = classes
            self._n_head_outputs = len(classes)
        return encode_labels(y, self.classes_)

    def _encode_indicator(self, y, *, reset, classes=None):
        """A multilabel indicator matrix as float targets of the sigmoid outputs."""
        y = y.toarray() if sp.issparse(y) else np.asarray(y)
        n_labels = y.shape[1]
        for name, given in (
            ("classes", self.classes),
            ("partial_fit's classes", classes),
        ):
            if given is not None and list(np.asarray(given)) != list(range(n_labels)):
                raise ValueError(
                    f"{name}={given!r} names class labels, but y is a multilabel "
                    f"indicator matrix with {n_labels} label columns, whose classes "
                    f"are their indices (np.arange({n_labels})); leave it None."
                )
        if reset:
            self.classes_inferred_ = np.arange(n_labels)
            self._n_head_outputs = n_labels
        elif n_labels != self._n_head_outputs:
            raise ValueError(
                f"y has {n_labels} label columns, but {type(self).__name__} was "
                f"fitted with {self._n_head_outputs}."
            )
        return y.astype(np.float32)

    def _sample_weights(self, y, sample_weight):
        weights = class_weights(
            self.class_weight, y, self.classes_, multilabel=self._multilabel
        )
        return fit_weights(sample_weight, len(y), weights)

    def initialize_criterion(self):
        """skorch's, with ``BCEWithLogitsLoss`` for multilabel targets where
        ``criterion`` was left at its default."""
        if not (self._multilabel and self.criterion is nn.CrossEntropyLoss):
            return super().initialize_criterion()
        kwargs = self.get_params_for("criterion")
        self.criterion_ = self.initialized_instance(nn.BCEWithLogitsLoss, kwargs)
        return self

    def _get_predict_nonlinearity(self):
        # skorch's "auto" takes BCEWithLogitsLoss for a binary net with one
        # output; a multilabel head has one sigmoid output per label.
        if self._multilabel and self.predict_nonlinearity == "auto":
            self.check_is_fitted()
            return torch.sigmoid
        return super()._get_predict_nonlinearity()

    def predict_proba(self, X):
        """Class probabilities, one column per entry of ``classes_``.

        Parameters
        ----------
        X : array-like, list of str or mapping
            Samples to classify, of the input kind fit saw.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Rows sum to 1; for multilabel targets, each label's probability
            (n_samples x n_labels), independent of the others.
        """
        return self._forward_numpy(self._check_predict_X(X))

    def predict(self, X):
        """The most probable class label for each sample.

        Parameters
        ----------
        X : array-like, list of str or mapping
            Samples to label, of the input kind fit saw.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_labels)
            Labels from ``classes_``; for multilabel targets the 0/1
            indicator matrix of the labels with probability above 0.5.
        """
        proba = self.predict_proba(X)
        if self._multilabel:
            return (proba > 0.5).astype(int)
        return self.classes_[proba.argmax(axis=1)]


def _no_proba(estimator):
    raise AttributeError(
        f"{type(estimator).__name__} has no predict_proba; use predict."
    )


class FineTuneRegressor(FineTuneMixin, NeuralNetRegressor):
    __doc__ = (
        """Fine-tune a pretrained backbone with a fresh regression head.

    One output per target: a 1-D ``y`` gives 1-D predictions, a 2-D ``y``
    gives 2-D predictions.
"""
        + _COMMON_PARAMS.format(criterion="torch.nn.MSELoss", criterion_doc="")
        + _COMMON_ATTRIBUTES
        + """
    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktune import FineTuneRegressor
    >>> X = np.random.RandomState(0).normal(size=(64, 4))
    >>> y = X.sum(axis=1)
    >>> backbone = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
    >>> reg = FineTuneRegressor(backbone, random_state=0).fit(X, y)
    >>> reg.predict(X[:2]).shape
    (2,)
"""
    )

    def __init__(self, backbone, *, criterion=nn.MSELoss, **kwargs):
        super().__init__(backbone, criterion=criterion, **kwargs)

    __init__.__signature__ = _signature(criterion=nn.MSELoss)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    _regression = True

    def _encode_targets(self, y, *, reset, classes=None):
        y = np.asarray(y, dtype=np.float32)
        n_targets = 1 if y.ndim == 1 else y.shape[1]
        if reset:
            self._y_ndim = y.ndim
            self._n_head_outputs = n_targets
        elif n_targets != self._n_head_outputs:
            raise ValueError(
                f"y has {n_targets} targets, but {type(self).__name__} was fitted "
                f"with {self._n_head_outputs}."
            )
        return y.reshape(len(y), n_targets)

    @available_if(_no_proba)
    def predict_proba(self, X):
        """A regressor has none (skorch's NeuralNetRegressor inherits one)."""

    def predict(self, X):
        """Predicted targets: 1-D if fitted on a 1-D ``y``, else 2-D.

        Parameters
        ----------
        X : array-like, list of str or mapping
            Samples to predict for, of the input kind fit saw.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_targets)
        """
        out = self._forward_numpy(self._check_predict_X(X)).astype(np.float64)
        return out.ravel() if self._y_ndim == 1 else out
