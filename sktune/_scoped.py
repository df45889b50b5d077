"""Attributes of the estimator that need more than a plain slot.

- :class:`ScopedParam`: a parameter that skorch reads with another value
  for the length of a call;
- :func:`private`: skorch's fitted attributes set in ``__init__``, kept out
  of scikit-learn's sight;
- :func:`restored_on_error`: a call that fails leaves the attributes as
  they were.

skorch reads ``self.device`` where it moves modules and batches, and prints
its "Re-initializing ..." messages whenever ``self.verbose`` is set. sktune
wants ``device="auto"`` resolved for those reads and the messages kept for
``verbose >= 2``, without writing over the value the user set:
``get_params()``, ``clone`` and another thread sharing the estimator keep
seeing the user's value.

A :class:`ScopedParam` stores the user's value where a plain attribute
would (the instance ``__dict__``, so pickling and skorch's parameter listing
are unchanged). Inside :func:`scoped`, reads in the same thread, by the
same estimator, see the scoped value instead.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

__all__ = ["ScopedParam", "private", "restored_on_error", "scoped"]

_local = threading.local()
_UNSET = object()


def _views() -> dict:
    views = getattr(_local, "views", None)
    if views is None:
        views = _local.views = {}
    return views


class ScopedParam:
    """A parameter whose reads :func:`scoped` can redirect, for one thread.

    Read before it is set: ``default``, or AttributeError without one.
    """

    def __init__(self, default=_UNSET):
        self.default = default

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = _views().get((id(obj), self.name), _UNSET)
        if value is not _UNSET:
            return value
        try:
            return obj.__dict__[self.name]
        except KeyError:
            if self.default is not _UNSET:
                return self.default
            raise AttributeError(self.name) from None

    def __set__(self, obj, value):
        obj.__dict__[self.name] = value


@contextmanager
def scoped(obj, **values):
    """Inside, this thread reads ``obj.<name>`` as ``values[name]``."""
    views = _views()
    keys = [(id(obj), name) for name in values]
    before = {key: views.get(key, _UNSET) for key in keys}
    views.update(zip(keys, values.values(), strict=True))
    try:
        yield
    finally:
        for key, value in before.items():
            if value is _UNSET:
                views.pop(key, None)
            else:
                views[key] = value


def private(name: str) -> property:
    """Back a skorch attribute set in ``__init__`` with a private slot.

    skorch's ``__init__`` sets ``history_``, ``initialized_`` and
    ``virtual_params_``; scikit-learn requires ``__init__`` to set nothing but
    parameters. Storing them under ``_name`` keeps both happy, and raising
    AttributeError while unset keeps skorch's "first init" detection working.
    """
    key = "_" + name.rstrip("_")

    def fget(self):
        try:
            return self.__dict__[key]
        except KeyError:
            raise AttributeError(name) from None

    def fset(self, value):
        self.__dict__[key] = value

    return property(fget, fset)


@contextmanager
def restored_on_error(obj):
    """A call that fails inside leaves ``obj``'s attributes as they were.

    A fit sets fitted attributes (``input_spec_``, ``classes_``,
    ``n_features_in_``, ``module_``) one by one; bad input found halfway
    must not leave a fitted estimator predicting with a mix of the old
    network and the new input's spec.
    """
    state = dict(obj.__dict__)
    try:
        yield
    except BaseException:
        obj.__dict__.clear()
        obj.__dict__.update(state)
        raise
