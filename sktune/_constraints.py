"""What a parameter accepts, declared once, and the error when it does not.

The estimators' own parameters are declared in :mod:`sktune._params`; the
nested parameter objects (:class:`~sktune.Freeze`, :class:`~sktune.Adapter`,
:class:`~sktune.LRSchedule`) are :class:`NestedParams` and declare their
fields' constraints in their own class. Either way a bad value raises
:class:`InvalidParameterError` naming the parameter (``freeze__depth`` for
a field), the value and what is accepted. This module is the bottom layer:
it imports nothing from the package.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from sklearn.base import BaseEstimator

__all__ = [
    "BOOL",
    "Constraint",
    "InvalidParameterError",
    "NestedParams",
    "is_int",
    "is_real",
    "one_of",
]


class InvalidParameterError(ValueError, TypeError):
    """A parameter has a value it does not accept.

    A ValueError and a TypeError (as scikit-learn's own), so code that
    catches either keeps working.
    """


@dataclass(frozen=True)
class Constraint:
    """What one parameter accepts.

    Attributes
    ----------
    accepted : str
        The accepted values, in words (ends the error message).
    valid : callable
        ``valid(value) -> bool``.
    hint : callable, optional
        ``hint(value) -> str``: a sentence on how to fix this value.
    """

    accepted: str
    valid: Callable[[object], bool]
    hint: Callable[[object], str] | None = None

    def check(self, name: str, value) -> None:
        if self.valid(value):
            return
        hint = self.hint(value) if self.hint is not None else ""
        raise InvalidParameterError(
            f"{name}={value!r} is not valid; use {self.accepted}."
            + (f" {hint}" if hint else "")
        )


def is_int(value, low: int) -> bool:
    """An int (not a bool) of at least ``low``."""
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and value >= low
    )


def is_real(value) -> bool:
    """A real number (not a bool, not NaN)."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and not math.isnan(value)
    )


def one_of(*values) -> Callable[[object], bool]:
    """Equal to one of ``values``, by type and value (True == 1, but
    ``cache=1`` is no setting)."""
    return lambda v: any(type(v) is type(a) and v == a for a in values)


BOOL = Constraint("True or False", lambda v: isinstance(v, bool))


class NestedParams(BaseEstimator):
    """A parameter object with nested parameters that checks its own fields.

    ``GridSearchCV`` sets its fields as ``freeze__depth``; the estimator's
    parameter check calls :meth:`check` with the parameter's name.
    Subclasses declare ``_constraints`` (field -> :class:`Constraint`) and
    may add checks across fields in :meth:`_check_fields_together`.
    """

    _constraints: ClassVar[dict[str, Constraint]] = {}

    def check(self, name: str) -> None:
        """Raise :class:`InvalidParameterError` for the first bad field."""
        for field, constraint in self._constraints.items():
            constraint.check(f"{name}__{field}", getattr(self, field))
        self._check_fields_together(name)

    def _check_fields_together(self, name: str) -> None:
        """Checks that involve several fields (none by default)."""
