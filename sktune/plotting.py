"""Learning curves and search results as matplotlib plots.

matplotlib is an optional dependency (``pip install matplotlib``); it is
imported when a plot is drawn, not with sktune.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["plot_history", "plot_search"]


def _axes(ax):
    if ax is not None:
        return ax
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "Plotting needs matplotlib: pip install matplotlib"
        ) from error
    return plt.subplots()[1]


def plot_history(estimator, *, ax=None):
    """Loss per epoch of a fitted estimator, phase changes marked.

    Draws the training loss and, when the fit held out a validation split,
    the validation loss; a validation score skorch recorded (``valid_acc``)
    goes on a second y axis. Epochs where the number of frozen blocks changes
    (``Freeze(probe_epochs=..., unfreeze_every=...)``, or the stages of
    ``freeze="auto"``) get a dotted vertical line; the epochs of a
    ``freeze="auto"`` search are shaded, and the line where the fit goes on
    at the depth it chose says so.

    Parameters
    ----------
    estimator : FineTuneClassifier or FineTuneRegressor
        A fitted estimator (its ``history_`` is read).
    ax : matplotlib Axes, optional
        Where to draw; a new figure's Axes by default.

    Returns
    -------
    matplotlib Axes
        The Axes with the loss lines (the score's twin Axes, if any, shares
        its x axis).

    Examples
    --------
    >>> from sktune import plot_history
    >>> ax = plot_history(clf.fit(X, y))  # doctest: +SKIP
    >>> ax.figure.savefig("history.png")  # doctest: +SKIP
    """
    history = getattr(estimator, "history_", None)
    if not history:
        raise ValueError(
            f"estimator={type(estimator).__name__} has no history: fit it first."
        )
    ax = _axes(ax)
    epochs = np.asarray(history[:, "epoch"])
    for key, label in (("train_loss", "train loss"), ("valid_loss", "valid loss")):
        # (freeze="auto" on an internal split validates its search epochs only)
        xs, values = _partial(history, key)
        if len(xs):
            ax.plot(xs, values, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    frozen = _column(history, "frozen_blocks")
    searched = _column(history, "freeze_search")
    if searched is not None and searched.any():
        first, last = epochs[searched > 0][[0, -1]]
        ax.axvspan(
            first - 0.5,
            last + 0.5,
            color="grey",
            alpha=0.12,
            label="freeze='auto' search",
        )
    if frozen is not None:
        for i in np.flatnonzero(np.diff(frozen)) + 1:
            chosen = searched is not None and searched[i - 1] > searched[i]
            ax.axvline(
                epochs[i] - 0.5,
                color="grey",
                linestyle=":",
                label=("chosen: " if chosen else "")
                + f"{int(frozen[i])} block{'' if frozen[i] == 1 else 's'} "
                f"frozen from epoch {epochs[i]}",
            )
    scores = [
        k
        for k in dict.fromkeys(k for row in history for k in row)
        if k.startswith("valid_")
        and k not in ("valid_loss", "valid_batch_count")
        and not k.endswith("_best")
    ]
    handles, labels = ax.get_legend_handles_labels()
    if scores:
        twin = ax.twinx()
        for key in scores:
            xs, values = _partial(history, key)
            if len(xs):
                twin.plot(xs, values, color="C2", marker="s", label=key)
        twin.set_ylabel(", ".join(scores))
        more, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more, labels + more_labels
    # Below the plot: over it, the score's axes would hide it or lines.
    ax.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=min(len(labels), 3),
        frameon=False,
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(type(estimator).__name__)
    return ax


def _column(history, key):
    """A numeric history column, or None when some epoch lacks it."""
    try:
        values = history[:, key]
    except KeyError:
        return None
    return np.asarray(values, dtype=float)


def _partial(history, key):
    """The epochs that recorded ``key``, and its values there."""
    rows = [row for row in history if key in row]
    return (
        np.asarray([row["epoch"] for row in rows]),
        np.asarray([row[key] for row in rows], dtype=float),
    )


def plot_search(search, param, *, ax=None):
    """Mean cross-validated score against one searched parameter.

    One line per combination of the other searched parameters; error bars
    show the standard deviation over the folds. Values that are not all
    numbers (``freeze=[0, 2, "all"]``) are placed at even steps in the order
    the search listed them.

    Parameters
    ----------
    search : fitted GridSearchCV or RandomizedSearchCV
    param : str
        The parameter's name, as in the search's grid (``"freeze"``,
        ``"adapter__r"``).
    ax : matplotlib Axes, optional
        Where to draw; a new figure's Axes by default.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> from sktune import plot_search
    >>> search = GridSearchCV(clf, {"freeze": [0, 2, 4, "all"]})  # doctest: +SKIP
    >>> plot_search(search.fit(X, y), "freeze")  # doctest: +SKIP
    """
    results = getattr(search, "cv_results_", None)
    if results is None:
        raise ValueError("search is not fitted: it has no cv_results_.")
    params = results["params"]
    searched = sorted({k for p in params for k in p})
    if param not in searched:
        raise ValueError(f"param={param!r} was not searched; searched: {searched}.")
    ax = _axes(ax)
    values = [p.get(param) for p in params]
    numeric = all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values
    )
    order = list(dict.fromkeys(repr(v) for v in values))
    x = np.array(
        [float(v) if numeric else order.index(repr(v)) for v in values], dtype=float
    )
    mean = np.asarray(results["mean_test_score"], dtype=float)
    std = np.asarray(results["std_test_score"], dtype=float)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(params):
        rest = ", ".join(f"{k}={p[k]!r}" for k in sorted(p) if k != param)
        groups.setdefault(rest, []).append(i)
    for rest, rows in groups.items():
        rows = sorted(rows, key=lambda i: x[i])
        (line,) = ax.plot(x[rows], mean[rows], marker="o", label=rest or param)
        ax.errorbar(
            x[rows],
            mean[rows],
            yerr=std[rows],
            fmt="none",
            capsize=3,
            ecolor=line.get_color(),
        )
    if not numeric:
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order)
    ax.set_xlabel(param)
    scoring = search.scoring if isinstance(search.scoring, str) else "score"
    ax.set_ylabel(f"mean test {scoring}")
    if len(groups) > 1:
        ax.legend(loc="best")
    return ax
