"""torch.optim's classes in the torch bridge: ``AdamW`` (for-loop and fused), ``Adam``,
``SGD``, ``Adagrad`` and ``RMSprop`` <-> their funcopt twins (one registration each; see
``funcopt/torch/_layouts.py``).

torch keeps ``state["step"]`` as a float32 0-d tensor (``Reference.tensor_step``), as the
funcopt states do (:func:`float_step`); ``SGD`` keeps no step at all, and a
``momentum_buffer`` of None when ``momentum`` is 0. torch 2.x's ``AdamW`` is ``Adam`` with
``decoupled_weight_decay=True``: the class and the flag (and ``fused``) pick the function.
"""

from __future__ import annotations

import jax.numpy as jnp

import funcopt
from funcopt.torch._layouts import Layout, Reference
from funcopt.torch._registry import register

__all__ = ["ADAMW_TORCH", "ADAMW_TORCH_FUSED", "ADAM_TORCH", "SGD", "ADAGRAD", "RMSPROP"]


def float_step(rule, count, step, fields):
    """The funcopt state's ``step`` as torch's: float32 (the layouts hand an int)."""
    del rule, count, fields
    return {"step": jnp.asarray(step, jnp.float32)}


def _groups(optimizer, test) -> bool:
    return bool(optimizer.param_groups) and all(test(g) for g in optimizer.param_groups)


def adam_config(group):
    """``torch.optim.Adam``/``AdamW`` group hyperparameters as ``funcopt.adamw_torch``
    keywords (``adam_torch`` adds ``fused``)."""
    b1, b2 = group["betas"]
    return {"learning_rate": group["lr"], "b1": float(b1), "b2": float(b2),
            "eps": group["eps"], "weight_decay": group["weight_decay"],
            "amsgrad": group["amsgrad"], "maximize": group["maximize"]}


def _adam_layout(fn, config, where, label):
    return register(Layout(
        fn, funcopt.AdamTorchState,
        keys={"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq",
              "max_exp_avg_sq": "max_exp_avg_sq"},
        derived=float_step,
        references=(Reference("torch.optim.adam", "Adam", config, tensor_step=True,
                              where=where, label=label),),
    ))


ADAMW_TORCH_FUSED = _adam_layout(
    funcopt.adamw_torch_fused, adam_config,
    lambda opt: _groups(opt, lambda g: g["decoupled_weight_decay"] and bool(g["fused"])),
    "torch.optim.AdamW(fused=True)")
ADAMW_TORCH = _adam_layout(
    funcopt.adamw_torch, adam_config,
    lambda opt: _groups(opt, lambda g: g["decoupled_weight_decay"] and not g["fused"]),
    "torch.optim.AdamW")
ADAM_TORCH = _adam_layout(
    funcopt.adam_torch, lambda g: {**adam_config(g), "fused": bool(g["fused"])},
    lambda opt: _groups(opt, lambda g: not g["decoupled_weight_decay"]), "torch.optim.Adam")


def sgd_config(group):
    """``torch.optim.SGD`` group hyperparameters as ``funcopt.sgd`` keywords."""
    return {"learning_rate": group["lr"], "momentum": group["momentum"],
            "dampening": group["dampening"], "weight_decay": group["weight_decay"],
            "nesterov": group["nesterov"], "maximize": group["maximize"]}


SGD = register(Layout(
    funcopt.sgd, funcopt.SGDState, keys={"momentum_buffer": "momentum_buffer"}, step=None,
    references=(Reference("torch.optim.sgd", "SGD", sgd_config, keeps_step=False,
                          label="torch.optim.SGD"),),
))


def adagrad_config(group):
    """``torch.optim.Adagrad`` group hyperparameters as ``funcopt.adagrad`` keywords."""
    return {"learning_rate": group["lr"], "lr_decay": group["lr_decay"],
            "weight_decay": group["weight_decay"],
            "initial_accumulator_value": group["initial_accumulator_value"],
            "eps": group["eps"], "maximize": group["maximize"]}


ADAGRAD = register(Layout(
    funcopt.adagrad, funcopt.AdagradState, keys={"sum": "sum"}, derived=float_step,
    references=(Reference("torch.optim.adagrad", "Adagrad", adagrad_config, tensor_step=True,
                          where=lambda opt: _groups(opt, lambda g: not g["fused"]),
                          label="torch.optim.Adagrad"),),
))


def rmsprop_config(group):
    """``torch.optim.RMSprop`` group hyperparameters as ``funcopt.rmsprop`` keywords."""
    return {"learning_rate": group["lr"], "alpha": group["alpha"], "eps": group["eps"],
            "weight_decay": group["weight_decay"], "momentum": group["momentum"],
            "centered": group["centered"], "maximize": group["maximize"]}


RMSPROP = register(Layout(
    funcopt.rmsprop, funcopt.RMSpropState,
    keys={"square_avg": "square_avg", "momentum_buffer": "momentum_buffer",
          "grad_avg": "grad_avg"},
    derived=float_step,
    references=(Reference("torch.optim.rmsprop", "RMSprop", rmsprop_config,
                          tensor_step=True, label="torch.optim.RMSprop"),),
))
