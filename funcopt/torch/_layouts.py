"""How each funcopt optimizer's state maps to torch's per-parameter state dicts.

A *layout* names the tensor entries torch keeps for a parameter (besides the integer
``"step"``), their shapes and dtypes, and assembles/splits the funcopt state from/into one
dict per leaf. The *config* of a param group is the keyword arguments of the funcopt
optimizer it stands for (``learning_rate`` included).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import funcopt


def _tree(treedef, leaves):
    """A state field from its per-leaf values; ``None`` (absent) if no leaf has one."""
    if all(x is None for x in leaves):
        return None
    return jax.tree_util.tree_unflatten(treedef, list(leaves))


def _leaves(treedef, field):
    if field is None:
        return [None] * treedef.num_leaves
    return treedef.flatten_up_to(field)


class AdamWLayout:
    """``funcopt.adamw`` <-> ``transformers.AdamW``: ``step``, ``exp_avg``, ``exp_avg_sq``,
    moments in the parameter's dtype."""

    name = "funcopt.adamw"
    state_type = funcopt.AdamWState
    order = ("exp_avg", "exp_avg_sq")

    def keys(self, shape, config):
        return ("exp_avg", "exp_avg_sq")

    def key_shape(self, key, shape):
        return tuple(shape)

    def state_dtype(self, dtype):
        return jnp.dtype(dtype)

    def to_state(self, treedef, count, steps, leaves, lrs=None):
        return funcopt.AdamWState(
            count=count,
            step=_tree(treedef, steps),
            exp_avg=_tree(treedef, [d["exp_avg"] for d in leaves]),
            exp_avg_sq=_tree(treedef, [d["exp_avg_sq"] for d in leaves]),
        )

    def from_state(self, state, treedef):
        steps = treedef.flatten_up_to(state.step)
        pairs = zip(_leaves(treedef, state.exp_avg), _leaves(treedef, state.exp_avg_sq),
                    strict=True)
        return steps, [{"exp_avg": m, "exp_avg_sq": v} for m, v in pairs]


_ADAFACTOR_FIELDS = ("exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq")


class AdafactorLayout:
    """``funcopt.adafactor`` <-> ``transformers.Adafactor``: ``step``, ``exp_avg`` (with
    ``beta1``), ``exp_avg_sq_row``/``exp_avg_sq_col`` (ndim >= 2) or ``exp_avg_sq``, and
    ``RMS`` (a 0-d tensor); float32 state for bf16/fp16 parameters."""

    name = "funcopt.adafactor"
    state_type = funcopt.AdafactorState
    order = (*_ADAFACTOR_FIELDS, "RMS")

    def keys(self, shape, config):
        first = ("exp_avg",) if config.get("beta1") is not None else ()
        second = ("exp_avg_sq_row", "exp_avg_sq_col") if len(shape) >= 2 else ("exp_avg_sq",)
        return first + second + ("RMS",)

    def key_shape(self, key, shape):
        shape = tuple(shape)
        return {
            "exp_avg_sq_row": shape[:-1],
            "exp_avg_sq_col": shape[:-2] + shape[-1:],
            "RMS": (),
        }.get(key, shape)

    def state_dtype(self, dtype):
        return jnp.promote_types(dtype, jnp.float32)

    def to_state(self, treedef, count, steps, leaves, lrs=None):
        if lrs is None:
            lrs = [jnp.zeros([], jnp.float32)] * len(leaves)
        fields = [_tree(treedef, [d.get(k) for d in leaves]) for k in _ADAFACTOR_FIELDS]
        return funcopt.AdafactorState(
            count, _tree(treedef, steps), _tree(treedef, [d["RMS"] for d in leaves]),
            _tree(treedef, lrs), *fields,
        )

    def from_state(self, state, treedef):
        steps = treedef.flatten_up_to(state.step)
        rms = treedef.flatten_up_to(state.rms)
        columns = [_leaves(treedef, getattr(state, k)) for k in _ADAFACTOR_FIELDS]
        dicts = []
        for i, r in enumerate(rms):
            d = {k: col[i] for k, col in zip(_ADAFACTOR_FIELDS, columns, strict=True)
                 if col[i] is not None}
            d["RMS"] = r
            dicts.append(d)
        return steps, dicts


ADAMW = AdamWLayout()
ADAFACTOR = AdafactorLayout()
LAYOUTS = {funcopt.adamw: ADAMW, funcopt.adafactor: ADAFACTOR}


def layout_of(optimizer_fn):
    """The layout of a supported funcopt optimizer function, or a TypeError."""
    try:
        return LAYOUTS[optimizer_fn]
    except (KeyError, TypeError):
        pass
    raise TypeError(
        f"optimizer_fn={getattr(optimizer_fn, '__name__', optimizer_fn)!r} is not supported: "
        "funcopt.torch.Optimizer runs funcopt.adamw or funcopt.adafactor (their state has a "
        "torch layout). For torch.optim.AdamW math, use torch.optim.AdamW and convert its "
        "state to optax.adamw with funcopt.torch.state_from_torch."
    )


def hf_adamw_config(group):
    """``transformers.AdamW`` group hyperparameters as ``funcopt.adamw`` keywords."""
    b1, b2 = group["betas"]
    return {"learning_rate": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"],
            "weight_decay": group["weight_decay"], "correct_bias": group["correct_bias"]}


def hf_adafactor_config(group):
    """``transformers.Adafactor`` group hyperparameters as ``funcopt.adafactor`` keywords."""
    config = {k: group[k] for k in (
        "clip_threshold", "decay_rate", "beta1", "weight_decay", "scale_parameter",
        "relative_step", "warmup_init")}
    config["learning_rate"] = group["lr"]
    config["eps"] = tuple(group["eps"])
    return config
