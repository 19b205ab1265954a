"""Optimizers with torch.optim's API over one flat arena per optimizer."""

from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .arena_optimizer import ArenaOptimizer
from .asgd import ASGD
from .elementwise import ElementwiseOptimizer
from .lbfgs import LBFGS
from .muon import Muon
from .nadam import NAdam
from .optimizer import Optimizer
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .sgd import SGD
from .sparse_adam import SparseAdam
from . import lr_scheduler  # noqa: E402  (needs Optimizer)
from . import swa_utils  # noqa: E402  (needs lr_scheduler)
from .hooks import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

__all__ = ["Optimizer", "ArenaOptimizer", "ElementwiseOptimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad",
           "Adadelta", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop", "LBFGS",
           "Muon", "SparseAdam", "Adafactor", "lr_scheduler", "swa_utils",
           "register_optimizer_step_pre_hook", "register_optimizer_step_post_hook"]
