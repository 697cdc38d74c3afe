"""Drop-in replacements for schedulefree's ``AdamWScheduleFree``, ``SGDScheduleFree`` and
``RAdamScheduleFree``, run by ``funcopt.schedule_free_adamw``/``_sgd``/``_radam``."""

from __future__ import annotations

import jax.numpy as jnp
import torch

import funcopt
from funcopt import _double_float as df
from funcopt._schedule_free_rule import ScheduleFreeState
from funcopt.torch import _dlpack, _menu_schedulefree
from funcopt.torch._optimizer import Optimizer

__all__ = ["AdamWScheduleFree", "SGDScheduleFree", "RAdamScheduleFree"]

_NOT_TRAINING = ("Optimizer was not in train mode when step is called. Please insert .train() "
                 "and .eval() calls on the optimizer (as schedulefree requires).")


class _ScheduleFree(Optimizer):
    r"""What the three drop-ins share: the reference's param-group keys (``k``,
    ``train_mode``, ``weight_sum``, ``lr_max``, ``scheduled_lr``, ``foreach``), its
    per-parameter state (``z``, ``exp_avg_sq``; no ``step`` in its state dicts' meaning: ours
    adds an int ``step`` per parameter, which the reference ignores), ``train()``/``eval()``
    and a ``step()`` that raises outside train mode, as the reference's does.

    ``eval()`` sets each parameter that has state to x (``p.lerp_(z, 1 - 1/beta1)``),
    ``train()`` back to y (``p.lerp_(z, 1 - beta1)``), with
    :func:`funcopt.schedule_free_eval_params` / :func:`funcopt.schedule_free_train_params`:
    bitwise the reference's lerps. ``scheduled_lr`` (the reference's logging value) is not
    updated; ``foreach`` is accepted and ignored (the arithmetic is the same).

    A param group whose stepping parameters are all float32 contiguous CPU tensors is
    stepped in place by one C call (``funcopt/_kernels/schedule_free.cc``: one pass over y,
    g, z and exp_avg_sq), its group entries by the rule's own JAX code; otherwise the whole
    group takes the jitted XLA path. Both give the same bits."""

    _beta1_key = "b1"

    def _setup(self, params, layout, fn, defaults, foreach):
        self._layout = layout
        self._optimizer_fn = fn
        self._init_caches()
        defaults = {**defaults, "k": 0, "train_mode": False, "weight_sum": 0.0, "lr_max": -1.0,
                    "scheduled_lr": 0.0, "foreach": foreach}
        torch.optim.Optimizer.__init__(self, params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One step (see :class:`funcopt.torch.Optimizer`); raises outside train mode."""
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError(_NOT_TRAINING)
        return super().step(closure)

    @torch.no_grad()
    def eval(self):
        """Sets the parameters to x, the weights to evaluate (no-op in eval mode)."""
        for group in self.param_groups:
            if group["train_mode"]:
                self._swap(group, funcopt.schedule_free_eval_params)
                group["train_mode"] = False

    @torch.no_grad()
    def train(self):
        """Sets the parameters back to y, where gradients are taken (no-op in train mode)."""
        for group in self.param_groups:
            if not group["train_mode"]:
                self._swap(group, funcopt.schedule_free_train_params)
                group["train_mode"] = True

    def _swap(self, group, move):
        params = [p for p in group["params"] if "z" in self.state[p]]
        if not params:
            return
        b1 = self.group_config(group)[self._beta1_key]
        zero = jnp.zeros([], jnp.int32)
        state = ScheduleFreeState(
            zero, zero, df.pair_from_float(0.0), df.pair_from_float(-1.0), jnp.bool_(True),
            df.pair_from_float(b1), [_dlpack.to_jax(self.state[p]["z"]) for p in params], None)
        for p, value in zip(params, move(state, [_dlpack.to_jax(p) for p in params]),
                            strict=True):
            _dlpack.write(p, value)


class AdamWScheduleFree(_ScheduleFree):
    r"""``schedulefree.AdamWScheduleFree``, run by :func:`funcopt.schedule_free_adamw`: same
    signature, param groups, state and numbers (see the shared notes on :class:`_ScheduleFree`
    and :class:`funcopt.torch.Optimizer`). Call ``train()`` before training, ``eval()``
    before evaluating or saving, as with the reference.

    Example:
      >>> import torch, funcopt.torch
      >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
      >>> opt = funcopt.torch.AdamWScheduleFree([w], lr=0.1)
      >>> opt.train()
      >>> w.grad = torch.tensor([0.5, -0.5])
      >>> opt.step()
      >>> opt.eval()  # w now holds x, the average to evaluate
      >>> w.detach(), opt.param_groups[0]["k"]
      (tensor([ 0.9000, -1.9000]), 1)
    """

    _aliases = {"learning_rate": "lr", "b1": "betas[0]", "b2": "betas[1]"}
    group_config = staticmethod(_menu_schedulefree.adamw_config)

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 warmup_steps=0, r=0.0, weight_lr_power=2.0, foreach=True):
        self._setup(params, _menu_schedulefree.SCHEDULE_FREE_ADAMW, funcopt.schedule_free_adamw,
                    {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                     "warmup_steps": warmup_steps, "r": r, "weight_lr_power": weight_lr_power},
                    foreach)


class SGDScheduleFree(_ScheduleFree):
    r"""``schedulefree.SGDScheduleFree``, run by :func:`funcopt.schedule_free_sgd` (see
    :class:`AdamWScheduleFree`).

    Example:
      >>> import torch, funcopt.torch
      >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
      >>> opt = funcopt.torch.SGDScheduleFree([w], lr=0.1)
      >>> opt.train()
      >>> w.grad = torch.tensor([1.0, 1.0])
      >>> opt.step()
      >>> opt.eval()
      >>> w.detach()
      tensor([ 0.9000, -2.1000])
    """

    _aliases = {"learning_rate": "lr"}
    _beta1_key = "momentum"
    group_config = staticmethod(_menu_schedulefree.sgd_config)

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=0, warmup_steps=0, r=0.0,
                 weight_lr_power=2, foreach=True):
        self._setup(params, _menu_schedulefree.SCHEDULE_FREE_SGD, funcopt.schedule_free_sgd,
                    {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                     "warmup_steps": warmup_steps, "r": r, "weight_lr_power": weight_lr_power},
                    foreach)


class RAdamScheduleFree(_ScheduleFree):
    r"""``schedulefree.RAdamScheduleFree``, run by :func:`funcopt.schedule_free_radam` (see
    :class:`AdamWScheduleFree`).

    Example:
      >>> import torch, funcopt.torch
      >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
      >>> opt = funcopt.torch.RAdamScheduleFree([w], lr=0.1)
      >>> opt.train()
      >>> w.grad = torch.tensor([0.5, -0.5])
      >>> opt.step()  # RAdam's first steps are silent (rho_t <= 4)
      >>> w.detach()
      tensor([ 1., -2.])
    """

    _aliases = {"learning_rate": "lr", "b1": "betas[0]", "b2": "betas[1]"}
    group_config = staticmethod(_menu_schedulefree.radam_config)

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, r=0.0,
                 weight_lr_power=2.0, foreach=True, silent_sgd_phase=True):
        self._setup(params, _menu_schedulefree.SCHEDULE_FREE_RADAM, funcopt.schedule_free_radam,
                    {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                     "r": r, "weight_lr_power": weight_lr_power,
                     "silent_sgd_phase": silent_sgd_phase}, foreach)
