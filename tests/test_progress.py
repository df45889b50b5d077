"""What a fit shows: bars where a person watches, the table at verbose=2."""

import io
import sys

from helpers import make_classifier

import sktune.progress


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as a watched console does."""

    def isatty(self):
        return True


def watched(monkeypatch) -> Terminal:
    """Make stderr a terminal (in the test body: pytest's capture replaces
    sys.stderr between fixture setup and the test)."""
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_default_shows_a_bar_and_a_summary_in_a_terminal(blobs, monkeypatch, capsys):
    X, y = blobs
    terminal = watched(monkeypatch)
    make_classifier(freeze=1, max_epochs=2).fit(X, y)
    out = capsys.readouterr().out
    assert "FineTuneClassifier on Sequential" in out
    assert "blocks: 3, frozen 1" in out
    # 688 in the blocks, 51 in the head; the last two blocks and the head train.
    assert "parameters: 739, trainable 595 (80.5%)" in out
    assert "learning rates: head 0.01, backbone 0.01 (blocks 1-2)" in out
    assert "cache: on" in out
    assert "train_loss" not in out  # the table waits for verbose=2
    bars = terminal.getvalue()
    # 150 samples in batches of 32: 5 batches an epoch, 2 epochs.
    assert "10/10" in bars and "batch" in bars


def test_default_is_silent_where_nobody_watches(blobs, capsys):
    X, y = blobs
    clf = make_classifier(max_epochs=2).fit(X, y)
    clf.predict(X)
    assert capsys.readouterr() == ("", "")


def test_verbose_0_is_silent_even_in_a_terminal(blobs, monkeypatch, capsys):
    X, y = blobs
    terminal = watched(monkeypatch)
    make_classifier(max_epochs=2, verbose=0).fit(X, y).predict(X)
    assert capsys.readouterr().out == ""
    assert terminal.getvalue() == ""


def test_verbose_2_prints_the_table_and_why_the_cache_is_off(blobs, capsys):
    X, y = blobs
    # A chain of children that trains from the first block on: nothing to cache.
    make_classifier(freeze=0, max_epochs=2, verbose=2).fit(X, y)
    out = capsys.readouterr().out
    assert "train_loss" in out and "dur" in out  # the table
    assert "FineTuneClassifier on" in out
    assert "Frozen-prefix cache off:" in out


def record_bars(monkeypatch) -> list:
    """Record the description of every bar sktune makes.

    Patched wherever a module of sktune imported ``progress.bar``, so that
    the record does not depend on which module draws which bar.
    """
    shown = []
    real = sktune.progress.bar

    def recording(verbose, iterable=None, **kwargs):
        shown.append(kwargs.get("desc"))
        return real(verbose, iterable, **kwargs)

    for name, module in list(sys.modules.items()):
        if name.startswith("sktune") and getattr(module, "bar", None) is real:
            monkeypatch.setattr(module, "bar", recording)
    return shown


def test_bars_wrap_the_prefix_pass_and_predictions(blobs, monkeypatch):
    X, y = blobs
    shown = record_bars(monkeypatch)
    clf = make_classifier(freeze="all", max_epochs=1).fit(X, y)
    assert shown.count("frozen prefix, once") == 1  # with the fit's own bars
    shown.clear()
    # The samples fit saw are cached: predicting them runs no prefix pass.
    clf.predict(X)
    assert shown == ["predict"]
    shown.clear()
    clf.predict(X + 1)
    assert shown == ["frozen prefix, once", "predict"]


def test_restarts_and_set_params_re_initialize_without_a_word(blobs, capsys):
    X, y = blobs
    clf = make_classifier(max_epochs=2, n_restarts=2, restart_epochs=1).fit(X, y)
    clf.set_params(lr=0.05, verbose=1)
    clf.initialize()
    assert clf.verbose == 1 and clf.lr == 0.05
    assert capsys.readouterr() == ("", "")
    clf.set_params(verbose=2)
    clf.initialize()
    assert "Re-initializing module" in capsys.readouterr().out
