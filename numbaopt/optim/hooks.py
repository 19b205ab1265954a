"""torch's optimizer hooks: per-optimizer and global, each with a removable handle.

A step with no hook registered pays one instance-attribute read (``_hooks_on``),
so the compiled one-call step costs what it did before hooks existed.
Registering a hook turns the flag on for that optimizer (a global hook: for
every live optimizer); removing the last one turns it off.
"""

import itertools
import sys
import weakref
from collections import OrderedDict

__all__ = ["RemovableHandle", "register_optimizer_step_pre_hook",
           "register_optimizer_step_post_hook"]

_global_optimizer_pre_hooks = OrderedDict()
_global_optimizer_post_hooks = OrderedDict()
_ids = itertools.count()
_optimizers = weakref.WeakSet()     # every optimizer whose flag a global hook must set


class RemovableHandle:
    """Removes the hook it was returned for: ``handle.remove()``, or use it as a context manager."""

    def __init__(self, hooks_dict, on_change=None):
        self.id = next(_ids)
        self._hooks = weakref.ref(hooks_dict) if _weakrefable(hooks_dict) else (lambda: hooks_dict)
        self._on_change = on_change

    def remove(self):
        hooks = self._hooks()
        if hooks is not None and self.id in hooks:
            del hooks[self.id]
            if self._on_change is not None:
                self._on_change()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _weakrefable(obj):
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False


def _register(hooks, hook, prepend=False, on_change=None):
    if not callable(hook):
        raise TypeError(f"a hook must be callable, got {type(hook).__name__}")
    handle = RemovableHandle(hooks, on_change)
    hooks[handle.id] = hook
    if prepend:
        hooks.move_to_end(handle.id, last=False)
    if on_change is not None:
        on_change()
    return handle


def _global_on():
    return bool(_global_optimizer_pre_hooks or _global_optimizer_post_hooks)


def _refresh_global():
    for optimizer in list(_optimizers):
        refresh(optimizer)


def register_optimizer_step_pre_hook(hook):
    """Register ``hook(optimizer, args, kwargs)`` to run before every optimizer's ``step``.

    It may return ``(new_args, new_kwargs)``; ``args`` starts with the optimizer.
    """
    return _register(_global_optimizer_pre_hooks, hook, on_change=_refresh_global)


def register_optimizer_step_post_hook(hook):
    """Register ``hook(optimizer, args, kwargs)`` to run after every optimizer's ``step``."""
    return _register(_global_optimizer_post_hooks, hook, on_change=_refresh_global)


def track(optimizer):
    """Give a new optimizer its hook flag and let global hooks reach it."""
    _optimizers.add(optimizer)
    refresh(optimizer)


# the flag in the table shared with compiled code (numbaopt.compiled.HOOKS)
_FLAG_HOOKS = 8


def refresh(optimizer):
    """Set the optimizer's hook flag: its own hooks, or a global one; and mirror it into
    the flags compiled code reads, whose steps then run the hooks too. (A lane of an
    optimizer over several dtypes never runs hooks: its optimizer does, once a step.)"""
    on = optimizer.__dict__["_hooks_on"] = bool(
        optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
        or _global_on())
    flags = optimizer.__dict__.get("_flags")
    if flags is not None and _owns(optimizer, flags):
        flags[_FLAG_HOOKS] = on and "_lane_groups" not in optimizer.__dict__


def _owns(optimizer, flags):
    """Whether the flags table is ``optimizer``'s: not the one of another optimizer that
    compiled handles know it by (a shallow copy shares its original's table)."""
    compiled = sys.modules.get("numbaopt.compiled")     # (no handle exists before its import)
    if compiled is None or flags[compiled.OWNER] == 0:
        return True
    current = compiled._owners.get(int(flags[compiled.OWNER]))
    return current is None or current is optimizer


def call_with_hooks(func, args, kwargs):
    """Run ``func(*args, **kwargs)`` (``args[0]`` the optimizer) between torch's step hooks.

    Pre-hooks run global first, post-hooks the optimizer's own first, as in torch.
    The hooks are switched off inside, so a subclass's ``super().step()`` does not
    run them twice.
    """
    self = args[0]
    args, kwargs = run_pre_hooks(self, args, kwargs, func)
    self.__dict__["_hooks_on"] = False
    try:
        out = func(*args, **kwargs)
    finally:
        refresh(self)
    run_post_hooks(self, args, kwargs)
    return out


def run_pre_hooks(self, args, kwargs, func):
    """The step pre-hooks, global first: the ``(args, kwargs)`` the step then takes."""
    for hook in itertools.chain(tuple(_global_optimizer_pre_hooks.values()),
                                tuple(self._optimizer_step_pre_hooks.values())):
        result = hook(self, args, kwargs)
        if result is not None:
            if isinstance(result, tuple) and len(result) == 2:
                args, kwargs = result
            else:
                raise RuntimeError(f"{func} must return None or a tuple of (new_args, "
                                   f"new_kwargs), but got {result}.")
    return args, kwargs


def run_post_hooks(self, args, kwargs):
    """The step post-hooks, the optimizer's own first."""
    for hook in itertools.chain(tuple(self._optimizer_step_post_hooks.values()),
                                tuple(_global_optimizer_post_hooks.values())):
        hook(self, args, kwargs)


def hookable(func):
    """Wrap a subclass's Python ``step`` so that the step hooks run around it."""
    import functools

    @functools.wraps(func)
    def step(self, *args, **kwargs):
        if self._hooks_on:
            return call_with_hooks(func, (self,) + args, kwargs)
        return func(self, *args, **kwargs)

    step._runs_hooks = True
    return step


def runs_hooks(func):
    """Mark a ``step`` that checks ``self._hooks_on`` itself (the compiled-step classes)."""
    func._runs_hooks = True
    return func
