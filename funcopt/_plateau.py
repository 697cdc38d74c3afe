r"""PyTorch's ``ReduceLROnPlateau`` (what transformers' ``reduce_lr_on_plateau`` returns) as a
pure optax transformation that scales the updates."""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcopt import _checks

__all__ = ["ReduceOnPlateauState", "reduce_on_plateau"]

_TABLE = 1024  # reductions whose scale is read from a table of factor**n


class ReduceOnPlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau`, field for field torch's scheduler attributes.

    Attributes:
      scale: float32 scalar, the current learning rate divided by the base learning rate
        (``optimizer.param_groups[i]["lr"] / base_learning_rate`` in torch); the updates are
        multiplied by it.
      num_reductions: int32, the reductions made so far (``scale`` is ``factor**n``, correctly
        rounded, or ``min_lr / base_learning_rate`` once that floor is reached).
      best: the best metric so far (``+inf``/``-inf`` before the first one), in the default
        float dtype (float64 when ``jax_enable_x64`` is on, as torch's Python float).
      num_bad_epochs: int32, evaluations without improvement since the last one (or reduction).
      cooldown_counter: int32, evaluations left in the cooldown after a reduction.
      last_epoch: int32, the number of evaluations (``update`` calls) so far.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import reduce_on_plateau
      >>> tx = reduce_on_plateau(patience=0)
      >>> _, state = tx.update({}, tx.init({}), value=2.0)
      >>> _, state = tx.update({}, state, value=3.0)
      >>> float(state.scale), float(state.best), int(state.num_reductions)
      (0.10000000149011612, 2.0, 1)
    """

    scale: jax.Array
    num_reductions: jax.Array
    best: jax.Array
    num_bad_epochs: jax.Array
    cooldown_counter: jax.Array
    last_epoch: jax.Array


@dataclasses.dataclass(frozen=True)
class _Config:
    """The validated hyperparameters (hashable: the step's static argument); ``min_lr`` and
    ``eps`` divided by the base learning rate."""

    mode: str
    threshold_mode: str
    factor: float
    patience: int
    cooldown: int
    threshold: float
    min_scale: float
    eps_scale: float

    @property
    def sign(self) -> float:
        return 1.0 if self.mode == "min" else -1.0


@functools.lru_cache(maxsize=64)
def _powers(factor):
    """``factor**n`` correctly rounded to float32 (torch multiplies in float64; a float32
    running product would drift by an ulp per reduction)."""
    return np.array([factor**n for n in range(_TABLE)], np.float32)


def _is_better(cfg, a, best):
    if cfg.threshold_mode == "rel":
        rel_epsilon = 1.0 - cfg.sign * cfg.threshold  # torch: 1 - threshold or threshold + 1
        bound = best * jnp.asarray(rel_epsilon, best.dtype)
    else:
        bound = best - cfg.sign * jnp.asarray(cfg.threshold, best.dtype)
    return a < bound if cfg.mode == "min" else a > bound


@functools.partial(jax.jit, static_argnums=0)  # one small compiled step: eager calls are fast
def _step(cfg, state, value):
    """torch's ``scheduler.step(value)``."""
    current = value.reshape(()).astype(state.best.dtype)
    better = _is_better(cfg, current, state.best)
    bad = jnp.where(better, 0, state.num_bad_epochs + 1)
    in_cooldown = state.cooldown_counter > 0
    bad = jnp.where(in_cooldown, 0, bad)  # bad evaluations in cooldown are ignored
    reduce = bad > cfg.patience
    n = state.num_reductions + 1
    power = jnp.where(n < _TABLE, jnp.asarray(_powers(cfg.factor))[jnp.minimum(n, _TABLE - 1)],
                      state.scale * np.float32(cfg.factor))  # beyond the table: multiply
    reduced = jnp.maximum(power, np.float32(cfg.min_scale))
    apply = reduce & (state.scale - reduced > cfg.eps_scale)
    cooldown_counter = state.cooldown_counter - in_cooldown
    return ReduceOnPlateauState(
        scale=jnp.where(apply, reduced, state.scale),
        num_reductions=jnp.where(apply, n, state.num_reductions),
        best=jnp.where(better, current, state.best),
        num_bad_epochs=jnp.where(reduce, 0, bad).astype(jnp.int32),
        cooldown_counter=jnp.where(reduce, cfg.cooldown, cooldown_counter).astype(jnp.int32),
        last_epoch=optax.safe_increment(state.last_epoch),
    )


def reduce_on_plateau(
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
    eps: float = 1e-8,
    *,
    base_learning_rate: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
    r"""``torch.optim.lr_scheduler.ReduceLROnPlateau``: scale the updates down when a metric
    stops improving.

    Chain it after an optimizer, ``optax.chain(funcopt.adamw(lr), reduce_on_plateau(...,
    base_learning_rate=lr))``, and pass the monitored metric to every update:
    ``tx.update(grads, state, params, value=loss)``. Each update is one torch
    ``scheduler.step(value)``, after which the updates are multiplied by the new ``scale``
    (torch: evaluate, ``scheduler.step(metric)``, then train with the new lr).

    A value :math:`a` improves on the best :math:`b` if :math:`a < b (1 - \theta)` (``mode="min"``,
    ``threshold_mode="rel"``), :math:`a < b - \theta` (``"min"``, ``"abs"``), :math:`a > b
    (1 + \theta)` or :math:`a > b + \theta` (``"max"``). When the number of evaluations
    without improvement exceeds ``patience``, the learning rate :math:`\eta` becomes
    :math:`\max(\eta \cdot \text{factor}, \text{min\_lr})`, unless that lowers it by no more
    than ``eps``; then ``cooldown`` evaluations are ignored.

    The learning rate here is ``base_learning_rate * scale``: ``min_lr`` and ``eps`` are
    absolute learning rates, as in torch, compared against it. Pass the optimizer's learning
    rate as ``base_learning_rate`` for torch's behaviour exactly (``get_scheduler`` does); with
    the default 1.0 they bound the scale itself. Torch keeps the lr in float64; here the scale
    is ``factor**n`` correctly rounded to float32.

    Differences from ``optax.contrib.reduce_on_plateau``: that one reduces one evaluation
    earlier (when the count of bad evaluations *reaches* ``patience``, torch when it *exceeds*
    it), combines a relative and an absolute tolerance in ``mode="min"`` only, has a minimum
    *scale* rather than a minimum lr, no ``eps`` rule, and can average the value over a window.

    Args:
      mode: ``"min"`` (the metric should decrease, e.g. a loss) or ``"max"``.
      factor: the multiplier of a reduction, in [0, 1).
      patience: evaluations without improvement tolerated before a reduction, an int >= 0.
      threshold: :math:`\theta >= 0`, the margin an improvement needs.
      threshold_mode: ``"rel"`` or ``"abs"``.
      cooldown: evaluations to wait after a reduction before counting bad ones, an int >= 0.
      min_lr: the smallest learning rate, >= 0 (absolute: see ``base_learning_rate``).
      eps: a reduction of the learning rate by ``eps`` or less is skipped, >= 0.
      base_learning_rate: the learning rate of the optimizer whose updates are scaled (> 0);
        used only to read ``min_lr`` and ``eps`` as learning rates.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires the keyword
      argument ``value``; its state is a :class:`ReduceOnPlateauState`.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import reduce_on_plateau
      >>> tx = reduce_on_plateau(factor=0.5, patience=1)
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> scales = []
      >>> for loss in [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]:
      ...     updates, state = tx.update({"w": jnp.ones(2)}, state, value=loss)
      ...     scales.append(float(state.scale))
      >>> scales
      [1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
      >>> updates["w"]
      Array([0.25, 0.25], dtype=float32)
    """
    _checks.choice("mode", mode, ("min", "max"))
    _checks.choice("threshold_mode", threshold_mode, ("rel", "abs"))
    factor = _checks.static_number("factor", factor, low=0.0, high=1.0, high_open=True,
                                   allowed="in [0.0, 1.0) (torch: 'Factor should be < 1.0.')")
    patience = _checks.integer("patience", patience, low=0)
    cooldown = _checks.integer("cooldown", cooldown, low=0)
    threshold = _checks.static_number("threshold", threshold, low=0.0)
    min_lr = _checks.static_number("min_lr", min_lr, low=0.0)
    eps = _checks.static_number("eps", eps, low=0.0)
    base = _checks.static_number("base_learning_rate", base_learning_rate, low=0.0, low_open=True)
    cfg = _Config(mode=mode, threshold_mode=threshold_mode, factor=factor, patience=patience,
                  cooldown=cooldown, threshold=threshold, min_scale=min_lr / base,
                  eps_scale=eps / base)

    def init(params):
        del params
        dtype = jnp.result_type(float)
        return ReduceOnPlateauState(
            scale=jnp.ones([], jnp.float32),
            num_reductions=jnp.zeros([], jnp.int32),
            best=jnp.asarray(cfg.sign * jnp.inf, dtype),
            num_bad_epochs=jnp.zeros([], jnp.int32),
            cooldown_counter=jnp.zeros([], jnp.int32),
            last_epoch=jnp.zeros([], jnp.int32),
        )

    def update(updates, state, params=None, *, value, **extra_args):
        del params, extra_args
        value = jnp.asarray(value)
        if value.size != 1:
            raise ValueError(
                f"value must be a scalar (the monitored metric), got shape {value.shape}."
            )
        state = _step(cfg, state, value)
        return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)
