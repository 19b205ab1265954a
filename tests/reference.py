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

    def _adadelta(self, p, g, state, o):
        T = p.dtype.type
        if not state:
            state.update(step=0.0, square_avg=np.zeros_like(p), acc_delta=np.zeros_like(p))
        state["step"] += 1
        if o["maximize"]:
            g = -g
        if o["weight_decay"] != 0:
            g = g + T(o["weight_decay"]) * p
        rho, eps = o["rho"], o["eps"]
        sq = state["square_avg"] = state["square_avg"] * T(rho) + T(1 - rho) * g * g
        std = np.sqrt(sq + T(eps))
        delta = np.sqrt(state["acc_delta"] + T(eps)) / std * g
        state["acc_delta"] = state["acc_delta"] * T(rho) + T(1 - rho) * delta * delta
        p[...] = p + T(-o["lr"]) * delta

    def _adamax(self, p, g, state, o):
        T = p.dtype.type
        if not state:
            state.update(step=0.0, exp_avg=np.zeros_like(p), exp_inf=np.zeros_like(p))
        if o["maximize"]:
            g = -g
        state["step"] += 1
        (beta1, beta2), wd = o["betas"], o["weight_decay"]
        if wd != 0:
            g = g + T(wd) * p
        state["exp_avg"] = _lerp(state["exp_avg"], g, 1 - beta1)
        # torch.maximum propagates NaN, as np.maximum does.
        state["exp_inf"] = np.maximum(state["exp_inf"] * T(beta2), np.abs(g) + T(o["eps"]))
        clr = o["lr"] / (1 - beta1 ** state["step"])
        p[...] = p + T(-clr) * state["exp_avg"] / state["exp_inf"]

    def _nadam(self, p, g, state, o):
        T = p.dtype.type
        if not state:
            # torch keeps mu_product as a 0-d float32 tensor, whatever the parameter's dtype.
            state.update(step=0.0, mu_product=np.array(1.0, dtype=np.float32),
                         exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
        if o["maximize"]:
            g = -g
        state["step"] += 1
        step = state["step"]
        lr, (beta1, beta2), wd = o["lr"], o["betas"], o["weight_decay"]
        bias_correction2 = 1 - beta2 ** step
        if wd != 0:
            if o["decoupled_weight_decay"]:
                p[...] = p * T(1 - lr * wd)
            else:
                g = g + T(wd) * p
        mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * o["momentum_decay"])))
        mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * o["momentum_decay"])))
        # float32 tensor *= Python float: torch casts the scalar to float32 and
        # multiplies in float32 (not float64 then round).
        state["mu_product"] = np.array(np.float32(state["mu_product"]) * np.float32(mu))
        mu_product = float(state["mu_product"])
        state["exp_avg"] = _lerp(state["exp_avg"], g, 1 - beta1)
        state["exp_avg_sq"] = state["exp_avg_sq"] * T(beta2) + T(1 - beta2) * g * g
        denom = np.sqrt(state["exp_avg_sq"] / T(bias_correction2)) + T(o["eps"])
        mu_product_next = mu_product * mu_next
        p[...] = p + T(-lr * (1.0 - mu) / (1.0 - mu_product)) * g / denom
        p[...] = p + T((-lr * mu_next) / (1.0 - mu_product_next)) * state["exp_avg"] / denom

    def _radam(self, p, g, state, o):
        T = p.dtype.type
        if not state:
            state.update(step=0.0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
        if o["maximize"]:
            g = -g
        state["step"] += 1
        step = state["step"]
        lr, (beta1, beta2), wd = o["lr"], o["betas"], o["weight_decay"]
        if wd != 0:
            if o["decoupled_weight_decay"]:
                p[...] = p * T(1 - lr * wd)
            else:
                g = g + T(wd) * p
        state["exp_avg"] = _lerp(state["exp_avg"], g, 1 - beta1)
        state["exp_avg_sq"] = state["exp_avg_sq"] * T(beta2) + T(1 - beta2) * g * g
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        x = state["exp_avg"] / T(bias_correction1) * T(lr)
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
        if rho_t > 5.0:
            rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                    / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
            # float / tensor is tensor.reciprocal() * float in torch.
            adaptive_lr = (T(1) / (np.sqrt(state["exp_avg_sq"]) + T(o["eps"]))
                           * T(bias_correction2 ** 0.5))
            x = x * adaptive_lr * T(rect)
        p[...] = p - x

    def _asgd(self, p, g, state, o):
        T = p.dtype.type
        if not state:
            # step, eta and mu are 0-d float32 tensors in torch; eta starts at float32(lr).
            state.update(step=0.0, eta=np.array(o["lr"], dtype=np.float32),
                         mu=np.array(1.0, dtype=np.float32), ax=np.zeros_like(p))
        if o["maximize"]:
            g = -g
        state["step"] += 1
        lr, lambd = o["lr"], o["lambd"]
        if o["weight_decay"] != 0:
            g = g + T(o["weight_decay"]) * p
        eta = float(state["eta"])
        p[...] = p * T(1 - lambd * eta)
        p[...] = p + T(-eta) * g
        mu = float(state["mu"])
        if mu != 1:
            state["ax"] = state["ax"] + (p - state["ax"]) * T(mu)
        else:
            state["ax"] = p.copy()
        step = state["step"]
        state["eta"] = np.array(lr / ((1 + lambd * lr * step) ** o["alpha"]), dtype=np.float32)
        state["mu"] = np.array(1 / max(1, step - o["t0"]), dtype=np.float32)

    def _rprop(self, p, g, state, o):
        T = p.dtype.type
        if not state:
            state.update(step=0.0, prev=np.zeros_like(p), step_size=np.full_like(p, o["lr"]))
        state["step"] += 1
        if o["maximize"]:
            g = -g
        etaminus, etaplus = T(o["etas"][0]), T(o["etas"][1])
        lo, hi = T(o["step_sizes"][0]), T(o["step_sizes"][1])

        def sign(x):  # torch.sign: 0 for NaN (np.sign gives NaN)
            return (x > 0).astype(p.dtype) - (x < 0).astype(p.dtype)

        s = sign(g * state["prev"])
        s = np.where(s > 0, etaplus, s)
        s = np.where(s < 0, etaminus, s)
        s = np.where(s == 0, T(1), s).astype(p.dtype)
        # clamp_(min, max) = min(max(x, min), max), NaN propagating.
        state["step_size"] = np.minimum(np.maximum(state["step_size"] * s, lo), hi)
        g = np.where(s == etaminus, T(0), g).astype(p.dtype)
        p[...] = p + T(-1) * sign(g) * state["step_size"]
        state["prev"] = g


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
    "Adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, maximize=False),
    "Adamax": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, maximize=False),
    "NAdam": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
                  decoupled_weight_decay=False, maximize=False),
    "RAdam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                  decoupled_weight_decay=False, maximize=False),
    "ASGD": dict(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0, maximize=False),
    "Rprop": dict(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), maximize=False),
}


def reference_optimizer(name, groups, **kwargs):
    return ReferenceOptimizer(name, groups, dict(DEFAULTS[name], **kwargs))
