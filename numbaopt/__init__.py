"""numbaopt: torch.optim for NumPy and Numba code.

All parameters of an optimizer live in one flat arena; a step is one compiled
kernel call over all of it.
"""

from . import optim
from .parameter import Parameter

__all__ = ["Parameter", "optim"]
__version__ = "0.1.0"
