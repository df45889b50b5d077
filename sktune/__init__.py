"""sktune: scikit-learn estimators that fine-tune pretrained neural networks."""

from .backbones import Backbone
from .estimators import FineTuneClassifier, FineTuneRegressor
from .freeze import Freeze

__all__ = ["Backbone", "FineTuneClassifier", "FineTuneRegressor", "Freeze"]
__version__ = "0.1.0.dev0"
