"""Torch layouts for the benchmark of optimizers whose bridge registration has not landed yet
(``funcopt/torch/_registry.py`` is the real home: once an optimizer is registered there, this
does nothing for it)."""

from __future__ import annotations


def ensure_registered(fn) -> None:
    """Registers ``fn``'s layout with ``funcopt.torch`` unless it already has one."""
    import funcopt
    from funcopt.torch import _registry
    from funcopt.torch._layouts import Layout

    if fn in _registry.LAYOUTS:
        return
    layouts = {
        funcopt.adamw_torch: (funcopt.AdamTorchState, {
            "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq",
            "max_exp_avg_sq": "max_exp_avg_sq"}, "step"),
        funcopt.sgd: (funcopt.SGDState, {"momentum_buffer": "momentum_buffer"}, None),
        funcopt.lion: (funcopt.LionState, {"state1": "state1"}, "step"),
    }
    state_type, keys, step = layouts[fn]
    _registry.register(Layout(fn, state_type, keys=keys, step=step))
