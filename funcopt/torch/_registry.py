"""The funcopt optimizers that ``funcopt.torch`` runs and converts: one registration each.

See ``funcopt/torch/_layouts.py`` for what a :class:`Layout` holds and a registration
example. A registered optimizer runs in :class:`funcopt.torch.Optimizer` and converts, with
``state_from_torch``/``state_to_torch``, to and from its reference classes.
"""

from __future__ import annotations

import jax.numpy as jnp

import funcopt
from funcopt.torch._layouts import Layout, Reference

__all__ = ["LAYOUTS", "layout_of", "reference_of", "register"]

#: optimizer function -> its layout, in registration order.
LAYOUTS: dict = {}


def register(layout: Layout) -> Layout:
    """Makes ``layout.optimizer_fn`` runnable by ``funcopt.torch.Optimizer`` and its
    reference classes convertible; returns the layout."""
    LAYOUTS[layout.optimizer_fn] = layout
    return layout


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def layout_of(optimizer_fn) -> Layout:
    """The layout of a registered funcopt optimizer function, or a TypeError."""
    try:
        return LAYOUTS[optimizer_fn]
    except (KeyError, TypeError):
        pass
    raise TypeError(
        f"optimizer_fn={getattr(optimizer_fn, '__name__', optimizer_fn)!r} is not supported: "
        f"funcopt.torch.Optimizer runs {_names([lay.name for lay in LAYOUTS.values()])} "
        "(their state has a torch layout)."
    )


def reference_of(optimizer) -> tuple[Layout, Reference] | None:
    """The layout and reference entry of a registered reference optimizer class, or None."""
    for layout in LAYOUTS.values():
        for reference in layout.references:
            if reference.matches(optimizer):
                return layout, reference
    return None


def supported() -> str:
    """The convertible classes, for messages."""
    pairs = [f"{r.label or r.module.split('.')[0] + '.' + r.name} <-> {lay.name}"
             for lay in LAYOUTS.values() for r in lay.references]
    return "; ".join(pairs) + "; and funcopt.torch.Optimizer running any of these"


# -- transformers.AdamW <-> funcopt.adamw ------------------------------------------------------

def hf_adamw_config(group):
    """``transformers.AdamW`` group hyperparameters as ``funcopt.adamw`` keywords."""
    b1, b2 = group["betas"]
    return {"learning_rate": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"],
            "weight_decay": group["weight_decay"], "correct_bias": group["correct_bias"]}


ADAMW = register(Layout(
    funcopt.adamw, funcopt.AdamWState,
    keys={"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"},
    references=(Reference("transformers.optimization", "AdamW", hf_adamw_config),),
))


# -- transformers.Adafactor <-> funcopt.adafactor ----------------------------------------------

def hf_adafactor_config(group):
    """``transformers.Adafactor`` group hyperparameters as ``funcopt.adafactor`` keywords."""
    config = {k: group[k] for k in (
        "clip_threshold", "decay_rate", "beta1", "weight_decay", "scale_parameter",
        "relative_step", "warmup_init")}
    config["learning_rate"] = group["lr"]
    config["eps"] = tuple(group["eps"])
    return config


def hf_adafactor_reference_config(group):
    """:func:`hf_adafactor_config` of a ``transformers.Adafactor`` group, whose ``lr`` the
    reference ignores under ``relative_step`` (``AdafactorSchedule`` sets it to 0.0)."""
    config = hf_adafactor_config(group)
    if config["relative_step"]:
        config["learning_rate"] = None
    return config


def adafactor_lr(rule, count, step, fields):
    """``lr``, which torch does not keep: the step size the leaf used at its last step
    (``rule.step_size`` of its ``step`` and ``RMS``), 0.0 before its first."""
    alpha = rule.step_size(step, fields["rms"], rule.scalars(count)).astype(jnp.float32)
    return {"lr": jnp.where(jnp.asarray(step) > 0, alpha, jnp.float32(0))}


ADAFACTOR = register(Layout(
    funcopt.adafactor, funcopt.AdafactorState,
    keys={"exp_avg": "exp_avg", "exp_avg_sq_row": "exp_avg_sq_row",
          "exp_avg_sq_col": "exp_avg_sq_col", "exp_avg_sq": "exp_avg_sq", "RMS": "rms"},
    derived=adafactor_lr,
    references=(Reference("transformers.optimization", "Adafactor",
                          hf_adafactor_reference_config),),
))
