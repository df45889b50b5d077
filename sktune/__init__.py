"""sktune: scikit-learn estimators that fine-tune pretrained neural networks."""

from ._version import __version__ as __version__
from .adapters import Adapter
from .backbones import Backbone
from .cache import clear_cache, set_cache_budget
from .cluster import share_backbones
from .estimators import FineTuneClassifier, FineTuneRegressor
from .freeze import Freeze
from .plotting import plot_history, plot_search
from .schedules import LRSchedule

__all__ = [
    "Adapter",
    "Backbone",
    "FineTuneClassifier",
    "FineTuneRegressor",
    "Freeze",
    "LRSchedule",
    "clear_cache",
    "plot_history",
    "plot_search",
    "set_cache_budget",
    "share_backbones",
]
