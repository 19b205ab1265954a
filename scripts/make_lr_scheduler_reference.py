"""Write tests/data/lr_scheduler_reference.json: torch's learning-rate schedules.

Regenerate (needs torch; deterministic, so an unchanged torch gives an unchanged file)::

    /work/venv/bin/python scripts/make_lr_scheduler_reference.py

The case table and the driver below are backend-neutral: they take a
``lr_scheduler`` module and an optimizer factory, so tests/test_lr_scheduler.py
runs the very same cases on numbaopt (and, when torch is importable, on torch
live). torch is imported only in :func:`main` and :func:`make_torch_optimizer`.

For every case the file holds, after the constructor and after each of the
``steps`` scheduler steps, each param group's ``lr`` and, for the cases that
cycle it, the momentum (SGD's ``momentum`` or Adam's ``betas[0]``). The
``lr_array`` cases hold each group's lr in a 0-d array of that dtype (a tensor
in torch, an ndarray in numbaopt), which the schedulers write in place.
"""

import json
import pathlib
import pickle
import re
import sys
import warnings

OUTPUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "lr_scheduler_reference.json"

STEPS = 50

SGD_GROUPS = [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.03, "momentum": 0.5}]
ADAM_GROUPS = [{"lr": 0.01, "betas": (0.9, 0.999)}, {"lr": 0.002, "betas": (0.8, 0.99)}]


# -- callables the cases use (module level, so both backends share them) -------------------------
def inverse_epoch(epoch):
    return 1.0 / (1.0 + epoch)


def step_decay(epoch):
    return 0.5 ** (epoch // 7)


def constant_095(epoch):
    return 0.95


def wavy(epoch):
    return 1.0 + 0.05 * ((epoch % 5) - 2)


class Power:
    """A callable object: its ``__dict__`` travels in state_dict, unlike a function."""

    def __init__(self, base):
        self.base = base

    def __call__(self, x):
        return self.base ** x


def harmonic_scale(x):
    return 1.0 / (1.0 + 0.5 * (x - 1))


# ReduceLROnPlateau's metric after step t (t = 1, 2, ...): improvements every few
# steps, tiny wiggles below the relative threshold, and worse values in between.
def plateau_metric(t):
    return 1.0 / (1 + t // 8) + 1e-5 * (t % 4)


def rising_metric(t):
    return 1.0 - 1.0 / (1 + t // 6) + 0.05 * ((7 * t) % 3)


def noisy_metric(t):
    return 0.5 + 0.3 * ((11 * t) % 7) / 7.0 - 0.01 * t


METRICS = {"plateau": plateau_metric, "rising": rising_metric, "noisy": noisy_metric}

# Epochs passed to the deprecated ``step(epoch)`` (closed form where available).
EPOCHS = {
    "jumpy": [(7 * t) % 23 for t in range(1, STEPS + 1)],
    "quarters": [t / 4 for t in range(1, STEPS + 1)],
}


# -- the case table ---------------------------------------------------------------------------------
def _case(name, scheduler, optimizer="sgd", groups=None, group_state=None, metrics=None,
          epochs=None, momentum=False, closed_form=False, lr_array=None):
    """One schedule. ``scheduler`` is ``(class name, kwargs)``; ``group_state`` entries are
    set in the groups after the optimizer is built (keys a resumed scheduler expects);
    ``lr_array`` (a dtype name) holds the groups' lr in 0-d arrays of that dtype."""
    if groups is None:
        groups = SGD_GROUPS if optimizer == "sgd" else ADAM_GROUPS
    return {"name": name, "scheduler": scheduler, "optimizer": optimizer, "groups": groups,
            "group_state": group_state, "metrics": metrics, "epochs": epochs,
            "momentum": momentum, "closed_form": closed_form, "lr_array": lr_array}


def _s(name, **kwargs):
    return (name, kwargs)


RESUME_LR = [{"initial_lr": 0.2}, {"initial_lr": 0.06}]
ONECYCLE_RESUME = [
    {"initial_lr": 0.004, "max_lr": 0.1, "min_lr": 4e-8, "max_momentum": 0.95, "base_momentum": 0.85},
    {"initial_lr": 0.002, "max_lr": 0.05, "min_lr": 2e-8, "max_momentum": 0.9, "base_momentum": 0.8},
]

CASES = [
    # closed_form=True: the scheduler has _get_closed_form_lr and the chainable
    # sequence must equal it (tests/test_lr_scheduler.py checks).
    _case("StepLR_seed", _s("StepLR", step_size=4, gamma=0.1),
          groups=[{"lr": 100, "momentum": 0.0}, {"lr": 7, "momentum": 0.0}], closed_form=True),
    _case("StepLR_default_gamma", _s("StepLR", step_size=7), closed_form=True),
    _case("StepLR_half", _s("StepLR", step_size=3, gamma=0.5), closed_form=True),
    _case("MultiStepLR", _s("MultiStepLR", milestones=[5, 12, 12, 30], gamma=0.5), closed_form=True),
    _case("ConstantLR_default", _s("ConstantLR"), closed_form=True),
    _case("ConstantLR", _s("ConstantLR", factor=0.25, total_iters=10), closed_form=True),
    _case("LinearLR_default", _s("LinearLR"), closed_form=True),
    _case("LinearLR_warmup", _s("LinearLR", start_factor=0.1, end_factor=0.8, total_iters=20),
          closed_form=True),
    _case("LinearLR_decay", _s("LinearLR", start_factor=1.0, end_factor=0.0, total_iters=30),
          closed_form=True),
    _case("ExponentialLR", _s("ExponentialLR", gamma=0.95), closed_form=True),
    _case("PolynomialLR_default", _s("PolynomialLR"), closed_form=True),
    _case("PolynomialLR_square", _s("PolynomialLR", total_iters=30, power=2.0), closed_form=True),
    _case("PolynomialLR_sqrt", _s("PolynomialLR", total_iters=40, power=0.5), closed_form=True),
    _case("CosineAnnealingLR_periodic", _s("CosineAnnealingLR", T_max=10), closed_form=True),
    _case("CosineAnnealingLR_eta_min", _s("CosineAnnealingLR", T_max=40, eta_min=0.001),
          closed_form=True),
    _case("CosineAnnealingLR_odd", _s("CosineAnnealingLR", T_max=7, eta_min=0.01), closed_form=True),
    _case("LambdaLR", _s("LambdaLR", lr_lambda=inverse_epoch)),
    _case("LambdaLR_per_group", _s("LambdaLR", lr_lambda=[step_decay, Power(0.97)])),
    _case("MultiplicativeLR", _s("MultiplicativeLR", lr_lambda=constant_095)),
    _case("MultiplicativeLR_per_group", _s("MultiplicativeLR", lr_lambda=[wavy, Power(0.999)])),
    _case("SequentialLR_warmup",
          _s("SequentialLR", schedulers=[_s("LinearLR", start_factor=0.1, total_iters=10),
                                         _s("ExponentialLR", gamma=0.9)], milestones=[10])),
    _case("SequentialLR_three",
          _s("SequentialLR", schedulers=[_s("ConstantLR", factor=0.5, total_iters=3),
                                         _s("CosineAnnealingLR", T_max=20, eta_min=0.001),
                                         _s("StepLR", step_size=5, gamma=0.5)],
             milestones=[5, 25])),
    _case("SequentialLR_lambda",
          _s("SequentialLR", schedulers=[_s("LambdaLR", lr_lambda=inverse_epoch),
                                         _s("MultiStepLR", milestones=[3, 9], gamma=0.3)],
             milestones=[15])),
    _case("ChainedScheduler",
          _s("ChainedScheduler", schedulers=[_s("ConstantLR", factor=0.1, total_iters=20),
                                             _s("ExponentialLR", gamma=0.9)], optimizer=True)),
    _case("ChainedScheduler_three",
          _s("ChainedScheduler", schedulers=[_s("LinearLR", start_factor=0.2, total_iters=8),
                                             _s("CosineAnnealingLR", T_max=50),
                                             _s("StepLR", step_size=10, gamma=0.7)])),
    _case("CyclicLR_triangular",
          _s("CyclicLR", base_lr=[0.01, 0.001], max_lr=[0.1, 0.01], step_size_up=5), momentum=True),
    _case("CyclicLR_triangular2",
          _s("CyclicLR", base_lr=0.01, max_lr=[0.1, 0.05], step_size_up=4, step_size_down=8,
             mode="triangular2", base_momentum=[0.8, 0.7], max_momentum=[0.9, 0.95]),
          momentum=True),
    _case("CyclicLR_exp_range",
          _s("CyclicLR", base_lr=[0.01, 0.002], max_lr=0.1, step_size_up=6, mode="exp_range",
             gamma=0.97), momentum=True),
    _case("CyclicLR_scale_fn_cycle",
          _s("CyclicLR", base_lr=0.001, max_lr=0.01, step_size_up=3, step_size_down=7,
             scale_fn=harmonic_scale), momentum=True),
    _case("CyclicLR_scale_fn_iterations",
          _s("CyclicLR", base_lr=0.001, max_lr=[0.01, 0.02], step_size_up=5, scale_fn=Power(0.98),
             scale_mode="iterations", cycle_momentum=False)),
    _case("CyclicLR_sawtooth_no_momentum",
          _s("CyclicLR", base_lr=0.01, max_lr=0.05, step_size_up=9, step_size_down=0,
             cycle_momentum=False)),
    _case("CyclicLR_adam_betas",
          _s("CyclicLR", base_lr=[0.001, 0.0005], max_lr=[0.01, 0.004], step_size_up=8,
             base_momentum=0.85, max_momentum=[0.95, 0.9]),
          optimizer="adam", momentum=True),
    _case("OneCycleLR_cos", _s("OneCycleLR", max_lr=[0.1, 0.05], total_steps=STEPS), momentum=True),
    _case("OneCycleLR_linear",
          _s("OneCycleLR", max_lr=0.1, total_steps=STEPS + 10, anneal_strategy="linear"),
          momentum=True),
    _case("OneCycleLR_three_phase",
          _s("OneCycleLR", max_lr=[0.1, 0.02], total_steps=STEPS, three_phase=True,
             base_momentum=[0.85, 0.8], max_momentum=[0.95, 0.99]), momentum=True),
    _case("OneCycleLR_adam_betas",
          _s("OneCycleLR", max_lr=[0.01, 0.004], epochs=5, steps_per_epoch=10, pct_start=0.25,
             div_factor=10.0, final_div_factor=100.0),
          optimizer="adam", momentum=True),
    _case("OneCycleLR_adam_three_phase_linear",
          _s("OneCycleLR", max_lr=0.01, total_steps=STEPS, three_phase=True,
             anneal_strategy="linear", pct_start=0.4), optimizer="adam", momentum=True),
    _case("OneCycleLR_no_momentum",
          _s("OneCycleLR", max_lr=[0.1, 0.05], total_steps=STEPS + 1, cycle_momentum=False)),
    _case("CosineAnnealingWarmRestarts", _s("CosineAnnealingWarmRestarts", T_0=10)),
    _case("CosineAnnealingWarmRestarts_mult",
          _s("CosineAnnealingWarmRestarts", T_0=5, T_mult=2, eta_min=0.001)),
    _case("ReduceLROnPlateau_min_rel",
          _s("ReduceLROnPlateau", factor=0.5, patience=2, cooldown=1, min_lr=[0.01, 0.004]),
          metrics="plateau"),
    _case("ReduceLROnPlateau_max_abs",
          _s("ReduceLROnPlateau", mode="max", factor=0.1, patience=0, threshold=0.1,
             threshold_mode="abs", cooldown=3, min_lr=0.001), metrics="rising"),
    _case("ReduceLROnPlateau_eps",
          _s("ReduceLROnPlateau", patience=3, eps=0.002),
          groups=[{"lr": 0.1, "momentum": 0.9}, {"lr": 0.004, "momentum": 0.0}], metrics="plateau"),
    _case("ReduceLROnPlateau_min_abs",
          _s("ReduceLROnPlateau", factor=0.7, patience=1, threshold=0.05, threshold_mode="abs"),
          metrics="noisy"),
    _case("ReduceLROnPlateau_max_rel",
          _s("ReduceLROnPlateau", mode="max", factor=0.3, patience=4, threshold=0.01, cooldown=2,
             min_lr=[1e-3, 1e-4]), metrics="noisy"),
    # Resuming with last_epoch >= 0 on groups that already hold initial_lr & co.
    _case("StepLR_last_epoch", _s("StepLR", step_size=4, gamma=0.5, last_epoch=5),
          group_state=RESUME_LR),
    _case("ExponentialLR_last_epoch", _s("ExponentialLR", gamma=0.9, last_epoch=3),
          group_state=RESUME_LR),
    _case("CosineAnnealingLR_last_epoch", _s("CosineAnnealingLR", T_max=10, last_epoch=4),
          group_state=RESUME_LR),
    _case("LambdaLR_last_epoch", _s("LambdaLR", lr_lambda=inverse_epoch, last_epoch=2),
          group_state=RESUME_LR),
    _case("CyclicLR_last_epoch",
          _s("CyclicLR", base_lr=0.01, max_lr=0.1, step_size_up=5, last_epoch=7),
          group_state=RESUME_LR, momentum=True),
    _case("OneCycleLR_last_epoch", _s("OneCycleLR", max_lr=0.1, total_steps=STEPS + 10, last_epoch=9),
          group_state=ONECYCLE_RESUME, momentum=True),
    _case("CosineAnnealingWarmRestarts_last_epoch",
          _s("CosineAnnealingWarmRestarts", T_0=6, last_epoch=4), group_state=RESUME_LR),
    # The deprecated step(epoch): closed form where the scheduler has one.
    _case("StepLR_epochs", _s("StepLR", step_size=4), epochs="jumpy"),
    _case("MultiStepLR_epochs", _s("MultiStepLR", milestones=[3, 8, 8, 15]), epochs="jumpy"),
    _case("ConstantLR_epochs", _s("ConstantLR", factor=0.5, total_iters=10), epochs="jumpy"),
    _case("LinearLR_epochs", _s("LinearLR", start_factor=0.25, total_iters=12), epochs="jumpy"),
    _case("ExponentialLR_epochs", _s("ExponentialLR", gamma=0.9), epochs="jumpy"),
    _case("PolynomialLR_epochs", _s("PolynomialLR", total_iters=15, power=1.5), epochs="jumpy"),
    _case("CosineAnnealingLR_epochs", _s("CosineAnnealingLR", T_max=9, eta_min=0.002),
          epochs="jumpy"),
    _case("LambdaLR_epochs", _s("LambdaLR", lr_lambda=inverse_epoch), epochs="jumpy"),
    _case("CosineAnnealingWarmRestarts_quarters",
          _s("CosineAnnealingWarmRestarts", T_0=3, T_mult=2, eta_min=0.001), epochs="quarters"),
    _case("CosineAnnealingWarmRestarts_jumpy", _s("CosineAnnealingWarmRestarts", T_0=4),
          epochs="jumpy"),
    _case("CosineAnnealingWarmRestarts_mult_jumpy",
          _s("CosineAnnealingWarmRestarts", T_0=2, T_mult=3), epochs="jumpy"),
    # lr held in a 0-d array (torch: a tensor lr), written in place: float32 rounds each write.
    _case("StepLR_float32_lr", _s("StepLR", step_size=3, gamma=0.7), lr_array="float32"),
    _case("CosineAnnealingLR_float32_lr", _s("CosineAnnealingLR", T_max=10, eta_min=0.001),
          lr_array="float32"),
    _case("OneCycleLR_float32_lr", _s("OneCycleLR", max_lr=[0.1, 0.05], total_steps=STEPS),
          momentum=True, lr_array="float32"),
    _case("ReduceLROnPlateau_float32_lr",
          _s("ReduceLROnPlateau", factor=0.5, patience=2, min_lr=[0.01, 0.004]),
          metrics="plateau", lr_array="float32"),
    _case("SequentialLR_float64_lr",
          _s("SequentialLR", schedulers=[_s("LinearLR", start_factor=0.1, total_iters=10),
                                         _s("ExponentialLR", gamma=0.9)], milestones=[10]),
          lr_array="float64"),
]


# -- the driver -------------------------------------------------------------------------------------
def build_scheduler(lr_scheduler, optimizer, spec):
    """Build ``spec = (class name, kwargs)`` from ``lr_scheduler`` (numbaopt's or torch's)."""
    name, kwargs = spec
    kwargs = dict(kwargs)
    cls = getattr(lr_scheduler, name)
    if "schedulers" in kwargs:
        kwargs["schedulers"] = [build_scheduler(lr_scheduler, optimizer, s)
                                for s in kwargs["schedulers"]]
    if name == "ChainedScheduler":
        return cls(kwargs["schedulers"], optimizer=optimizer if kwargs.get("optimizer") else None)
    return cls(optimizer, **kwargs)


def new_optimizer(case, make_optimizer):
    optimizer = make_optimizer(case["optimizer"], case["groups"])
    for group, extra in zip(optimizer.param_groups, case["group_state"] or ()):
        group.update(extra)
    if case["lr_array"]:
        for group in optimizer.param_groups:
            group["lr"] = lr_array(optimizer, group["lr"], case["lr_array"])
    return optimizer


def lr_array(optimizer, value, dtype):
    """``value`` in a 0-d array of ``dtype``: a tensor for a torch optimizer, else an ndarray."""
    if type(optimizer).__module__.startswith("torch"):
        import torch
        return torch.tensor(value, dtype=getattr(torch, dtype))
    import numpy as np
    return np.asarray(value, dtype=dtype)


def number(value):
    """A Python int or float as it is; a 0-d array's value as a float."""
    return value if isinstance(value, (int, float)) else float(value)


def momenta(optimizer):
    return [group["betas"][0] if "betas" in group else group["momentum"]
            for group in optimizer.param_groups]


def run_case(case, lr_scheduler, make_optimizer, steps=STEPS, resume_at=None):
    """Run one case; return lists over steps 0..steps of per-group ``lr``, ``last_lr``, momentum.

    With ``resume_at=k``, after k steps the optimizer's and the scheduler's
    state_dicts are saved (the scheduler's through pickle), loaded into a fresh
    optimizer and scheduler, and the run goes on with those.
    """
    optimizer = new_optimizer(case, make_optimizer)
    scheduler = build_scheduler(lr_scheduler, optimizer, case["scheduler"])
    metric = METRICS[case["metrics"]] if case["metrics"] else None
    epochs = EPOCHS[case["epochs"]] if case["epochs"] else None
    out = {"lr": [], "last_lr": [], "momentum": []}

    def record():
        out["lr"].append([number(group["lr"]) for group in optimizer.param_groups])
        out["last_lr"].append([number(lr) for lr in scheduler.get_last_lr()])
        out["momentum"].append([number(m) for m in momenta(optimizer)])

    record()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=re.escape("The epoch parameter in `scheduler"))
        for t in range(1, steps + 1):
            if t == resume_at:
                optimizer_state = optimizer.state_dict()
                scheduler_state = pickle.loads(pickle.dumps(scheduler.state_dict()))
                optimizer = new_optimizer(case, make_optimizer)
                scheduler = build_scheduler(lr_scheduler, optimizer, case["scheduler"])
                optimizer.load_state_dict(optimizer_state)
                scheduler.load_state_dict(scheduler_state)
            optimizer.step()
            if metric is not None:
                scheduler.step(metric(t))
            elif epochs is not None:
                scheduler.step(epochs[t - 1])
            else:
                scheduler.step()
            record()
    return out


def make_torch_optimizer(kind, groups):
    """A torch optimizer over one dummy tensor per group: only a holder of param_groups."""
    import torch

    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[kind]
    params = [{"params": [torch.zeros(2, requires_grad=True)], **group} for group in groups]
    return cls(params, lr=groups[0]["lr"])


def main():
    import torch
    from torch.optim import lr_scheduler

    cases = {}
    for case in CASES:
        run = run_case(case, lr_scheduler, make_torch_optimizer)
        entry = {"lr": run["lr"]}
        if case["momentum"]:
            entry["momentum"] = run["momentum"]
        cases[case["name"]] = entry
    lines = ["{",
             f'"torch_version": {json.dumps(torch.__version__)},',
             f'"steps": {STEPS},',
             '"cases": {']
    for i, (name, entry) in enumerate(cases.items()):
        comma = "," if i < len(cases) - 1 else ""
        lines.append(f"{json.dumps(name)}: {json.dumps(entry)}{comma}")
    lines += ["}", "}"]
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(cases)} cases to {OUTPUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
