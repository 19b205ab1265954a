"""Plain NumPy reference of torch.optim's single-tensor updates: the oracle the
compiled kernels (CPU and CUDA) are checked against.

One Python loop over parameters, NumPy over each parameter's elements, and the
operations in torch's order and dtype (scalars cast to the parameter's dtype
where torch casts them). Slow and obvious on purpose.
"""

import numpy as np


def _lerp(start, end, weight):
    w = start.dtype.type(weight)
    if abs(weight) < 0.5:
        return start + w * (end - start)
    return end - (end - start) * (start.dtype.type(1) - w)


class ReferenceOptimizer:
    """``ReferenceOptimizer(name, groups, defaults)`` over plain arrays.

    ``groups`` is a list of dicts with ``"params"`` (a list of arrays, updated in
    place) and options; ``step(grads)`` takes one gradient (or None) per parameter,
    in group order. ``state[i]`` is torch's state dict of parameter ``i``.
    """

    def __init__(self, name, groups, defaults):
        self.name = name
        self.groups = [dict(defaults, **g) for g in groups]
        self.params = [p for g in self.groups for p in g["params"]]
        self.state = [{} for _ in self.params]
        if name == "Adagrad":
            for s, p in zip(self.state, self.params):
                s["step"] = 0.0
                s["sum"] = np.full_like(p, defaults["initial_accumulator_value"])

    def step(self, grads):
        i = 0
        for group in self.groups:
            for p in group["params"]:
                if grads[i] is not None:
                    getattr(self, "_" + self.name.lower())(p, grads[i].astype(p.dtype),
                                                           self.state[i], group)
                i += 1

    def _sgd(self, p, g, state, o):
        T = p.dtype.type
        if o["maximize"]:
            g = -g
        if o["weight_decay"] != 0:
            g = g + T(o["weight_decay"]) * p
        if o["momentum"] != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = g.copy()
            else:
                buf = buf * T(o["momentum"]) + T(1 - o["dampening"]) * g
            state["momentum_buffer"] = buf
            g = g + T(o["momentum"]) * buf if o["nesterov"] else buf
        p[...] = p + T(-o["lr"]) * g

    def _adam(self, p, g, state, o):
        T = p.dtype.type
        if not state:
            state.update(step=0.0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
            if o["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p)
        if o["maximize"]:
            g = -g
        state["step"] += 1
        lr, (beta1, beta2), wd = o["lr"], o["betas"], o["weight_decay"]
        if wd != 0:
            if o.get("decoupled_weight_decay", False):
                p[...] = p * T(1 - lr * wd)
            else:
                g = g + T(wd) * p
        state["exp_avg"] = _lerp(state["exp_avg"], g, 1 - beta1)
        state["exp_avg_sq"] = state["exp_avg_sq"] * T(beta2) + T(1 - beta2) * g * g
        t = state["step"]
        bias_correction1 = 1 - beta1 ** t
        bias_correction2 = 1 - beta2 ** t
        step_size = lr / bias_correction1
        v = state["exp_avg_sq"]
        if o["amsgrad"]:
            state["max_exp_avg_sq"] = np.maximum(state["max_exp_avg_sq"], v)
            v = state["max_exp_avg_sq"]
        denom = np.sqrt(v) / T(bias_correction2 ** 0.5) + T(o["eps"])
        p[...] = p + T(-step_size) * state["exp_avg"] / denom

    def _adamw(self, p, g, state, o):
        self._adam(p, g, state, dict(o, decoupled_weight_decay=True))

    def _rmsprop(self, p, g, state, o):
        T = p.dtype.type
        if not state:
            state.update(step=0.0, square_avg=np.zeros_like(p))
            if o["momentum"] > 0:
                state["momentum_buffer"] = np.zeros_like(p)
            if o["centered"]:
                state["grad_avg"] = np.zeros_like(p)
        if o["maximize"]:
            g = -g
        state["step"] += 1
        if o["weight_decay"] != 0:
            g = g + T(o["weight_decay"]) * p
        alpha = o["alpha"]
        sq = state["square_avg"] = state["square_avg"] * T(alpha) + T(1 - alpha) * g * g
        if o["centered"]:
            ga = state["grad_avg"] = _lerp(state["grad_avg"], g, 1 - alpha)
            avg = np.sqrt(sq + T(-1) * ga * ga)
        else:
            avg = np.sqrt(sq)
        avg = avg + T(o["eps"])
        if o["momentum"] > 0:
            buf = state["momentum_buffer"] = state["momentum_buffer"] * T(o["momentum"]) + g / avg
            p[...] = p + T(-o["lr"]) * buf
        else:
            p[...] = p + T(-o["lr"]) * g / avg

    def _adagrad(self, p, g, state, o):
        T = p.dtype.type
        state["step"] += 1
        if o["maximize"]:
            g = -g
        if o["weight_decay"] != 0:
            g = g + T(o["weight_decay"]) * p
        clr = o["lr"] / (1 + (state["step"] - 1) * o["lr_decay"])
        state["sum"] = state["sum"] + g * g
        p[...] = p + T(-clr) * g / (np.sqrt(state["sum"]) + T(o["eps"]))


DEFAULTS = {
    "SGD": dict(lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False),
    "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                 maximize=False),
    "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                  maximize=False),
    "RMSprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                    maximize=False),
    "Adagrad": dict(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                    maximize=False),
}


def reference_optimizer(name, groups, **kwargs):
    return ReferenceOptimizer(name, groups, dict(DEFAULTS[name], **kwargs))
