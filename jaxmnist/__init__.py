"""jaxmnist: the tiny-MNIST challenge (< 25,000 parameters, > 95% after one epoch) in JAX + Flax NNX.

The small public API; `fit` is imported on first use, as it brings in every compiled program (and
`import jaxmnist` stays quick for what needs only the configuration).
"""

from jaxmnist.config import Config
from jaxmnist.data import load as load_dataset
from jaxmnist.errors import ConfigError, DataError, JaxMnistError
from jaxmnist.models import MODELS, count_params
from jaxmnist.recipes import RECIPES

__version__ = "0.1.0"
__all__ = ["MODELS", "RECIPES", "Config", "ConfigError", "DataError", "JaxMnistError", "count_params", "fit",
           "load_dataset"]


def __getattr__(name: str):
    if name == "fit":
        from jaxmnist.loop import fit

        return fit
    raise AttributeError(f"module 'jaxmnist' has no attribute {name!r}")
