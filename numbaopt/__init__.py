"""numbaopt: torch.optim for NumPy and Numba code.

All parameters of an optimizer live in one flat arena; a step is one compiled
kernel call over all of it.
"""

from . import nn, optim, sparse, utils
from .checkpoint import load, load_parameters, save, save_parameters
from .parameter import Parameter

__all__ = ["Parameter", "nn", "optim", "sparse", "utils", "save", "load", "save_parameters",
           "load_parameters"]
__version__ = "0.1.0"
