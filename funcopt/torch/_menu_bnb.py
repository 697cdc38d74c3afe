"""bitsandbytes' optimizers in the torch bridge: the 32-bit ``Lion``, ``AdEMAMix``,
``RMSprop`` and ``AdamW`` <-> ``funcopt.lion``, ``ademamix``, ``rmsprop_bnb``, ``adamw_bnb``;
the 8-bit ones (``optim_bits=8``, ``Lion8bit``, ...) <-> ``funcopt.lion_8bit``,
``ademamix_8bit``, ``rmsprop_8bit``, ``adamw_8bit``.

bitsandbytes keeps ``state["step"]`` (a Python int), ``state1`` and (two-state optimizers)
``state2``, float32 whatever the parameter's dtype (``AdEMAMix``'s ``state1`` stacks its two
EMAs, shape ``(2, *p.shape)``). Its ``state_dict()`` moves them under
``"__bnb_optimizer_quant_state__"`` (:func:`flatten` takes them back out). A class is matched
by bitsandbytes' base class and ``optimizer_name`` with its ``args`` (``optim_bits``), so
``Lion``, ``Lion32bit``, ``PagedLion`` (unpaged on CPU) ... all pair with ``funcopt.lion``.
The 8-bit state adds ``absmax1``/``absmax2`` (float32, one per block of 256) to the
``uint8`` codes, and the maps ``qmap1``/``qmap2``, constants funcopt does not keep (written
back from :func:`funcopt._quantize.dynamic_map`). bitsandbytes keeps ``absmax`` flat
(``(blocks,)``, AdEMAMix's ``absmax1`` ``(2, blocks)``); funcopt in the parameter's block grid
where its last axis is a multiple of 256 (:func:`funcopt._quantize.block_grid`), the same
numbers in the same order: the converters reshape, and ``funcopt.torch.Optimizer`` keeps
funcopt's shape (its state dicts load into funcopt's ``Optimizer`` and from bitsandbytes';
into bitsandbytes itself, move the state with ``state_to_torch``). A parameter below
``min_8bit_size`` has 32-bit states in both. Settings funcopt does not follow
(``max_unorm``, ``skip_zeros``) are refused when converting, with their names.
"""

from __future__ import annotations

import torch

import funcopt
from funcopt import _quantize
from funcopt.torch._layouts import Layout, Reference
from funcopt.torch._registry import register

__all__ = ["LION", "ADEMAMIX", "RMSPROP_BNB", "ADAMW_BNB", "LION_8BIT", "ADEMAMIX_8BIT",
           "RMSPROP_8BIT", "ADAMW_8BIT", "flatten", "settings"]

_NESTED = "__bnb_optimizer_quant_state__"
_QMAPS = ("qmap1", "qmap2")  # 8-bit: the dynamic maps, constants funcopt builds itself


def flatten(state, p):
    """A bitsandbytes per-parameter state (live or from ``state_dict()``) by plain key,
    ``absmax`` in funcopt's block grid for ``p``."""
    flat = {k: v for k, v in state.items() if k != _NESTED}
    flat.update(state.get(_NESTED, {}))
    for key, codes in (("absmax1", "state1"), ("absmax2", "state2")):
        value = flat.get(key)
        if value is not None and p is not None:
            lead = (2,) if flat[codes].ndim == p.ndim + 1 else ()  # AdEMAMix's stacked EMAs
            flat[key] = value.reshape(*lead, *_quantize.block_grid(tuple(p.shape)))
    return {k: v for k, v in flat.items() if k not in _QMAPS}


def to_reference(state, p, group):
    """funcopt's 8-bit state as bitsandbytes keeps it: flat ``absmax`` (AdEMAMix's stacked
    ``absmax1``: one row per EMA), and the maps."""
    del group
    for key, signed, codes in (("absmax1", True, "state1"), ("absmax2", False, "state2")):
        value = state.get(key)
        if value is not None:
            stacked = state[codes].ndim == p.ndim + 1
            state[key] = value.reshape(2, -1) if stacked else value.reshape(-1)
            state[f"qmap{key[-1]}"] = torch.from_numpy(_quantize.dynamic_map(signed)).to(
                value.device)
    return state


def settings(optimizer) -> dict:
    """The optimizer-level ``args`` the update depends on, seen under each group."""
    args = optimizer.args
    return {key: getattr(args, key, default) for key, default in (
        ("optim_bits", 32), ("min_8bit_size", 4096), ("max_unorm", 0.0),
        ("skip_zeros", False))}


def _check(group) -> None:
    for key, plain in (("max_unorm", 0.0), ("skip_zeros", False)):
        if group.get(key, plain) != plain:
            raise ValueError(
                f"bitsandbytes' {key}={group[key]!r} is not followed by funcopt (only "
                f"{key}={plain!r} converts).")


def _is(name: str, bits: int):
    def where(optimizer) -> bool:
        return (getattr(optimizer, "optimizer_name", None) == name
                and settings(optimizer)["optim_bits"] == bits)
    return where


def lion_config(group):
    """A bitsandbytes Lion group as ``funcopt.lion`` keywords."""
    _check(group)
    b1, b2 = group["betas"][:2]
    return {"learning_rate": group["lr"], "b1": b1, "b2": b2,
            "weight_decay": group["weight_decay"]}


def ademamix_config(group):
    """A bitsandbytes AdEMAMix group as ``funcopt.ademamix`` keywords."""
    _check(group)
    b1, b2, b3 = group["betas"]
    return {"learning_rate": group["lr"], "b1": b1, "b2": b2, "b3": b3,
            "alpha": group["alpha"], "t_alpha": group["t_alpha"],
            "t_beta3": group["t_beta3"], "eps": group["eps"],
            "weight_decay": group["weight_decay"]}


def rmsprop_config(group):
    """A bitsandbytes RMSprop group (``betas = (alpha, momentum)``) as
    ``funcopt.rmsprop_bnb`` keywords."""
    _check(group)
    alpha, momentum = group["betas"][:2]
    return {"learning_rate": group["lr"], "alpha": alpha, "momentum": momentum,
            "eps": group["eps"], "weight_decay": group["weight_decay"]}


def adam_config(group):
    """A bitsandbytes Adam/AdamW group as ``funcopt.adamw_bnb`` keywords."""
    _check(group)
    b1, b2 = group["betas"][:2]
    return {"learning_rate": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"],
            "weight_decay": group["weight_decay"]}


def _reference(base: str, name: str, bits: int, config, label: str) -> Reference:
    return Reference("bitsandbytes.optim.optimizer", base, config, where=_is(name, bits),
                     settings=settings, label=label)


LION = register(Layout(
    funcopt.lion, funcopt.LionState, keys={"state1": "state1"}, flatten=flatten,
    references=(_reference("Optimizer1State", "lion", 32, lion_config,
                           "bitsandbytes.optim.Lion (32-bit)"),),
))
ADEMAMIX = register(Layout(
    funcopt.ademamix, funcopt.AdEMAMixState, keys={"state1": "state1", "state2": "state2"},
    flatten=flatten,
    references=(_reference("Optimizer2State", "ademamix", 32, ademamix_config,
                           "bitsandbytes.optim.AdEMAMix (32-bit)"),),
))
RMSPROP_BNB = register(Layout(
    funcopt.rmsprop_bnb, funcopt.RMSpropBnbState, keys={"state1": "state1"}, flatten=flatten,
    references=(_reference("Optimizer1State", "rmsprop", 32, rmsprop_config,
                           "bitsandbytes.optim.RMSprop (32-bit)"),),
))
ADAMW_BNB = register(Layout(
    funcopt.adamw_bnb, funcopt.AdamWBnbState, keys={"state1": "state1", "state2": "state2"},
    flatten=flatten,
    references=(_reference("Optimizer2State", "adam", 32, adam_config,
                           "bitsandbytes.optim.AdamW (32-bit)"),),
))


# -- 8-bit (blockwise) ---------------------------------------------------------------------

def _eight_bit(config):
    def config_8bit(group):  # min_8bit_size: the optimizer's (settings), absent in a saved group
        return {**config(group), **{k: group[k] for k in ("min_8bit_size",) if k in group}}
    return config_8bit


def _register_8bit(fn, state_type, keys, base, name, config, label):
    return register(Layout(
        fn, state_type, keys=keys, flatten=flatten,
        references=(Reference("bitsandbytes.optim.optimizer", base, _eight_bit(config),
                              where=_is(name, 8), settings=settings,
                              to_reference=to_reference, label=label),),
    ))


_ONE = {"state1": "state1", "absmax1": "absmax1"}
_TWO = {"state1": "state1", "state2": "state2", "absmax1": "absmax1", "absmax2": "absmax2"}
LION_8BIT = _register_8bit(funcopt.lion_8bit, funcopt.Lion8bitState, _ONE, "Optimizer1State",
                           "lion", lion_config, "bitsandbytes.optim.Lion8bit")
ADEMAMIX_8BIT = _register_8bit(funcopt.ademamix_8bit, funcopt.AdEMAMix8bitState, _TWO,
                               "Optimizer2State", "ademamix", ademamix_config,
                               "bitsandbytes.optim.AdEMAMix8bit")
RMSPROP_8BIT = _register_8bit(funcopt.rmsprop_8bit, funcopt.RMSprop8bitState, _ONE,
                              "Optimizer1State", "rmsprop", rmsprop_config,
                              "bitsandbytes.optim.RMSprop8bit")
ADAMW_8BIT = _register_8bit(funcopt.adamw_8bit, funcopt.AdamW8bitState, _TWO, "Optimizer2State",
                            "adam", adam_config, "bitsandbytes.optim.AdamW8bit")
