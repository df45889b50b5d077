"""Did a fit learn anything? The loss against the constant predictor's.

A fit whose rates are far too low (the head barely moves, the backbone not
at all) or far too high (a pretrained network destroyed in its first steps)
ends with a loss no better than always predicting the class prior, or the
mean target (or each label's frequency, for multilabel targets), weighted
as the fit's loss is. Nothing else tells the user: the loss curve is flat and
``predict`` returns near-constant labels. :func:`learning_report` compares
each stage of a fit (a run of epochs with the same frozen blocks) with that
constant predictor; the estimator warns once per fit, with scikit-learn's
``ConvergenceWarning``, when the last stage did not get clearly below it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from .data.weights import with_weights
from .schedules import format_rates

__all__ = [
    "LEARNED_SHARE",
    "StageLoss",
    "constant_loss",
    "learning_report",
    "warn_if_learned_nothing",
]

#: The share of the constant predictor's loss a fit must remove to count as
#: having learned: a training MSE at most 95% of the targets' variance (an R²
#: of 0.05 or more), a cross-entropy at most 95% of the class prior's entropy.
LEARNED_SHARE = 0.05


@dataclass(frozen=True)
class StageLoss:
    """One stage of a fit: epochs ``first..last`` with ``frozen`` blocks frozen.

    ``loss`` is what the check reads: the best validation loss of the stage
    where there is a validation split, else its last epoch's training loss;
    ``best_train`` the stage's lowest training loss (did it ever learn?),
    ``first_train`` and ``last_train`` those of its first and last epochs.
    """

    first: int
    last: int
    frozen: int | None
    loss: float
    kind: str
    best_train: float
    first_train: float
    last_train: float


def constant_loss(
    get_loss,
    y,
    *,
    regression: bool,
    n_outputs: int,
    device,
    multilabel: bool = False,
    sample_weight=None,
) -> float:
    """The loss of the best constant prediction of encoded targets ``y``.

    Classifiers: logits of the class prior (every class counted from 1e-12,
    so classes absent from ``y`` cost no infinity); multilabel classifiers:
    the logit of each label's frequency (clipped to [1e-12, 1 - 1e-12]).
    Regressors: the mean of each target. With ``sample_weight``, the prior
    and the mean are weighted: the best constant under the weighted loss.
    ``get_loss(y_pred, y_true)`` is the estimator's own loss (weighted by
    the same weights, where there are some).
    """
    w = None if sample_weight is None else np.asarray(sample_weight, np.float64)
    if regression or multilabel:
        targets = np.asarray(y, dtype=np.float32)
        mean = np.average(targets, axis=0, weights=w)
        if multilabel:
            p = np.clip(mean, 1e-12, 1 - 1e-12)
            mean = np.log(p) - np.log1p(-p)
        y_true = torch.as_tensor(targets, device=device)
        y_pred = torch.as_tensor(mean, dtype=torch.float32, device=device)
        y_pred = y_pred.reshape(1, *y_true.shape[1:]).expand_as(y_true)
    else:
        labels = np.asarray(y, dtype=np.int64)
        counts = np.bincount(labels, weights=w, minlength=n_outputs)
        prior = np.clip(counts / counts.sum(), 1e-12, None)
        y_true = torch.as_tensor(labels, device=device)
        y_pred = torch.as_tensor(np.log(prior), dtype=torch.float32, device=device)
        y_pred = y_pred.expand(len(labels), n_outputs)
    with torch.no_grad():
        return float(get_loss(y_pred, y_true))


def stage_losses(history, first_epoch: int) -> list[StageLoss]:
    """The stages among the epochs from ``first_epoch`` (counted from 1) on."""
    rows = [row for row in history if row["epoch"] >= first_epoch]
    stages: list[list[dict]] = []
    for row in rows:
        if "train_loss" not in row:
            continue  # an epoch interrupted before its end
        if stages and stages[-1][-1].get("frozen_blocks") == row.get("frozen_blocks"):
            stages[-1].append(row)
        else:
            stages.append([row])
    result = []
    for epochs in stages:
        valid = [r["valid_loss"] for r in epochs if "valid_loss" in r]
        loss, kind = (
            (min(valid), "validation")
            if valid
            else (epochs[-1]["train_loss"], "training")
        )
        result.append(
            StageLoss(
                first=epochs[0]["epoch"],
                last=epochs[-1]["epoch"],
                frozen=epochs[-1].get("frozen_blocks"),
                loss=float(loss),
                kind=kind,
                best_train=float(min(r["train_loss"] for r in epochs)),
                first_train=float(epochs[0]["train_loss"]),
                last_train=float(epochs[-1]["train_loss"]),
            )
        )
    return result


def learning_report(
    stages: list[StageLoss],
    baseline: float,
    *,
    name: str,
    what: str,
    rates: str,
    lr: float,
    backbone_lr: float | None = None,
    family_lr: float | None = None,
) -> str | None:
    """The warning's text when the fit's last stage learned nothing, else None.

    Parameters
    ----------
    stages : list of StageLoss
        The fit's stages, in order.
    baseline : float
        The constant predictor's loss (:func:`constant_loss`).
    name : str
        The estimator's class name.
    what : str
        The constant predictor, in words ("the class prior").
    rates : str
        The rates in effect, in words.
    lr : float
        The head's rate.
    backbone_lr, family_lr : float, optional
        The backbone's top rate and its family's fine-tuning rate: a backbone
        far above it was likely destroyed in the first steps.
    """
    if not stages or not np.isfinite(baseline) or baseline <= 1e-8:
        return None  # nothing to learn: constant targets
    bar = (1 - LEARNED_SHARE) * baseline
    last = stages[-1]
    if last.loss <= bar:
        return None
    high = (
        backbone_lr is not None
        and family_lr is not None
        and backbone_lr > 3 * family_lr
    )
    lost = next((s for s in stages if s.best_train <= bar), None)
    if high:
        advice = (
            f"The backbone trains at {backbone_lr:g}, {backbone_lr / family_lr:.0f}x "
            f"its family's fine-tuning rate ({family_lr:g}): a pretrained network "
            "is likely destroyed in the first steps; leave backbone_lr='auto' or "
            "lower it."
        )
    elif lost is not None:
        advice = (
            f"The training loss got clearly below it in epochs {lost.first}-"
            f"{lost.last} and rose again: the rates are likely too high; try "
            "lower ones (lr, backbone_lr), or freeze more blocks."
        )
    else:
        # Too low and too high look alike from the loss alone (a random
        # head's first loss is above the constant's on imbalanced classes):
        # the figures, and both ways out.
        moved = (
            f"The training loss was {last.last_train:.4g} after the only epoch."
            if stages[0].first == last.last
            else f"The training loss went from {stages[0].first_train:.4g} (epoch "
            f"{stages[0].first}) to {last.last_train:.4g} (epoch {last.last})."
        )
        advice = (
            f"{moved} If it barely moved, the rates are likely too low or the fit too "
            f"short: try a higher lr (now {lr:g}) or backbone_lr, or more epochs "
            "(max_epochs); if it jumped or rose, they are too high: try lower ones."
        )
    history = ""
    if len(stages) > 1:
        history = (
            " By stage: "
            + "; ".join(
                f"epochs {s.first}-{s.last} ({s.frozen} blocks frozen) "
                f"{s.loss / baseline:.0%}"
                for s in stages
            )
            + "."
        )
    return (
        f"{name} learned little: its {last.kind} loss at the end of the fit, "
        f"{last.loss:.4g}, is {last.loss / baseline:.0%} of the loss of always "
        f"predicting {what} ({baseline:.4g}); a fit that learned removes at least "
        f"{LEARNED_SHARE:.0%} of it.{history} Learning rates in effect: {rates}. "
        f"{advice}"
    )


def warn_if_learned_nothing(
    net, y, first_epoch: int, *, stacklevel: int, sample_weight=None
) -> None:
    """One ``ConvergenceWarning`` when ``net``'s fit, from ``first_epoch`` on,
    ended no better than a constant prediction of ``y``.

    ``stacklevel`` as :func:`warnings.warn`'s, counted from this function:
    the frame of the user's ``fit`` call. ``sample_weight``: the fit's
    normalized weights, which its losses were weighted by.
    """
    stages = stage_losses(net.history_, first_epoch)
    if not stages or y is None:
        return
    weights = None
    if sample_weight is not None:
        weights = with_weights(None, torch.as_tensor(sample_weight))
    try:
        baseline = constant_loss(
            lambda y_pred, y_true: net.get_loss(
                y_pred, y_true, X=weights, training=False
            ),
            y,
            regression=net._regression,
            n_outputs=net._n_head_outputs,
            device=net.device_,
            multilabel=net._multilabel,
            sample_weight=sample_weight,
        )
    except (RuntimeError, ValueError, TypeError):
        return  # a criterion that takes no constant prediction: no check
    rates = net._rates()
    backbone = net._network.backbone
    message = learning_report(
        stages,
        baseline,
        name=type(net).__name__,
        what=(
            "the mean target"
            if net._regression
            else "each label's frequency"
            if net._multilabel
            else "the class prior"
        ),
        rates=format_rates(rates),
        lr=float(net.get_params_for("optimizer").get("lr", net.lr)),
        backbone_lr=None if rates["top"] is None else rates["top"][1],
        family_lr=None if net.adapted_modules_ else net._family.backbone_lr(backbone),
    )
    if message is not None:
        warnings.warn(message, ConvergenceWarning, stacklevel=stacklevel)
