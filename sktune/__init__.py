"""sktune: scikit-learn estimators that fine-tune pretrained neural networks."""

from .backbones import Backbone
from .cache import clear_cache, set_cache_budget
from .estimators import FineTuneClassifier, FineTuneRegressor
from .freeze import Freeze

__all__ = [
    "Backbone",
    "FineTuneClassifier",
    "FineTuneRegressor",
    "Freeze",
    "clear_cache",
    "set_cache_budget",
]
__version__ = "0.1.0.dev0"
