r"""transformers 5.x's ``GreedyLR`` (``get_scheduler("greedy")``) as a pure optax transformation
that scales the updates.

torch keeps the learning rate, the best metric and the smoothing window's sum in Python floats
(IEEE float64), and its decisions hang on their exact roundings: after the lr has gone up
from ``min_lr`` and down again, ``(min_lr / factor) * factor`` may round one float64 ulp above
``min_lr``, and then the lr is no longer "at the minimum" and the reset countdown stops. So
the step here computes in float64 too, inside ``jax.enable_x64(True)`` whatever the global
setting, and the state carries those float64 values as their bit patterns (``uint32[2]``
arrays, which every JAX configuration can hold): the same operations in the same order as
torch, bit for bit. The step needs float64 arithmetic on the device that runs it (CPU and GPU
have it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from funcopt import _checks
from funcopt._numerics import divide, unfused

__all__ = ["GreedyLRState", "StreamingAverageState", "greedy_lr"]

_INT32_LIMIT = 2**31 - 1  # counters are int32 and count up to one past their limit


def _host_bits(x) -> np.ndarray:
    """A float64 number as its ``uint32[2]`` bit pattern (NumPy, on the host)."""
    return np.array([x], np.float64).view(np.uint32)


def float64_value(bits) -> np.ndarray:
    """The float64 numbers whose bit patterns are ``bits`` (``uint32[..., 2]``), on the host."""
    bits = np.ascontiguousarray(np.asarray(bits, np.uint32))
    return bits.view(np.float64)[..., 0]


def _value(bits):
    return lax.bitcast_convert_type(bits, jnp.float64)  # inside enable_x64


def _bits(x):
    return lax.bitcast_convert_type(x, jnp.uint32)


class StreamingAverageState(NamedTuple):
    """transformers' ``StreamingAverage`` (``smooth=True``): the last ``window_size`` metrics.

    Attributes:
      values_bits: ``uint32[window_size, 2]``, a ring buffer of float64 metrics, the oldest at
        ``head``.
      sum_bits: ``uint32[2]``, torch's running float64 ``sum`` (added to and subtracted from,
        not recomputed, exactly as torch does).
      count: int32, ``len(values)``.
      head: int32, the index of the oldest value once the window is full.

    >>> from funcopt import greedy_lr
    >>> tx = greedy_lr(smooth=True, window_size=3)
    >>> state = tx.init({})
    >>> for v in (1.0, 2.0, 4.0):
    ...     _, state = tx.update({}, state, value=v)
    >>> int(state.smoothing.count), state.smoothing.values_bits.shape
    (3, (3, 2))
    """

    values_bits: jax.Array
    sum_bits: jax.Array
    count: jax.Array
    head: jax.Array

    @property
    def sum(self) -> np.ndarray:
        """The running sum as float64 (host)."""
        return float64_value(self.sum_bits)


class GreedyLRState(NamedTuple):
    """State of :func:`greedy_lr`, field for field ``GreedyLR``'s attributes.

    Float64 values are held as their bit patterns (``uint32[2]``); the properties ``lr`` and
    ``best`` read them back as float64 (on the host).

    Attributes:
      scale: float32 scalar, ``lr / base_learning_rate`` (the updates are multiplied by it).
      lr_bits: torch's ``param_groups[0]["lr"]``, float64.
      best_bits: the best metric so far (``+inf``/``-inf`` at the start and after a reset).
      num_bad_epochs: int32, evaluations without improvement in a row.
      num_good_epochs: int32, evaluations with improvement in a row.
      cooldown_counter: int32, evaluations left in the cooldown after a reduction.
      warmup_counter: int32, evaluations left in the warmup after an increase.
      reset_start: int32, reductions at ``min_lr`` left before the reset.
      last_epoch: int32, the number of evaluations (``update`` calls) so far.
      smoothing: a :class:`StreamingAverageState` with ``smooth=True``, else None.

    Example:
      >>> from funcopt import greedy_lr
      >>> tx = greedy_lr(factor=0.5, patience=0, base_learning_rate=0.1)
      >>> _, state = tx.update({}, tx.init({}), value=2.0)
      >>> _, state = tx.update({}, state, value=3.0)
      >>> float(state.lr), float(state.best), float(state.scale)  # up to 0.2, down to 0.1
      (0.1, 2.0, 1.0)
    """

    scale: jax.Array
    lr_bits: jax.Array
    best_bits: jax.Array
    num_bad_epochs: jax.Array
    num_good_epochs: jax.Array
    cooldown_counter: jax.Array
    warmup_counter: jax.Array
    reset_start: jax.Array
    last_epoch: jax.Array
    smoothing: StreamingAverageState | None

    @property
    def lr(self) -> np.ndarray:
        """The learning rate as float64 (host)."""
        return float64_value(self.lr_bits)

    @property
    def best(self) -> np.ndarray:
        """The best metric as float64 (host)."""
        return float64_value(self.best_bits)


@dataclasses.dataclass(frozen=True)
class _Config:
    """The validated hyperparameters (hashable: the step's static argument)."""

    mode: str
    factor: float
    patience: int
    threshold: float
    threshold_mode: str
    cooldown: int
    warmup: int
    min_lr: float
    max_lr: float
    eps: float
    verbose: bool
    smooth: bool
    window_size: int
    reset_start: int
    base: float

    @property
    def start_best(self) -> float:
        return math.inf if self.mode == "min" else -math.inf

    def streaming_init(self) -> StreamingAverageState | None:
        if not self.smooth:
            return None
        return StreamingAverageState(
            values_bits=jnp.zeros((self.window_size, 2), jnp.uint32),
            sum_bits=jnp.asarray(_host_bits(0.0)),
            count=jnp.zeros([], jnp.int32),
            head=jnp.zeros([], jnp.int32),
        )


# --------------------------------------------------------------------------------------------
# One ``GreedyLR.step(metric)``, in float64 (called inside ``jax.enable_x64(True)``).


def _stream(cfg, s, value):
    """``StreamingAverage.streamavg(value)``: the new window and the average."""
    values = _value(s.values_bits)
    total = _value(s.sum_bits) + value
    full = s.count == cfg.window_size  # appending makes len > window_size: pop the oldest
    total = jnp.where(full, total - values[s.head], total)
    slot = jnp.where(full, s.head, s.count)  # head is 0 until the window is full
    values = values.at[slot].set(value)
    count = jnp.where(full, s.count, s.count + 1)
    head = jnp.where(full, (s.head + 1) % cfg.window_size, s.head)
    new = StreamingAverageState(_bits(values), _bits(total), count, head)
    return new, divide(total, count.astype(jnp.float64))


def _is_better(cfg, current, best):
    """``GreedyLR.is_better``: the same float64 operations."""
    if cfg.threshold_mode == "rel":
        bound = best * ((1.0 - cfg.threshold) if cfg.mode == "min" else (1.0 + cfg.threshold))
    else:
        bound = best - cfg.threshold if cfg.mode == "min" else best + cfg.threshold
    return current < bound if cfg.mode == "min" else current > bound


def _new_lr(cfg, lr, increase, reduce):
    """``_increase_lr``/``_reduce_lr``'s new lr and whether each changed it."""
    up = jnp.minimum(divide(lr, cfg.factor), cfg.max_lr)  # old_lr / factor, true division
    down = jnp.maximum(unfused(lr * cfg.factor), cfg.min_lr)  # the product rounded alone
    raised = increase & (up - lr > cfg.eps)
    lowered = reduce & (lr - down > cfg.eps)
    return jnp.where(raised, up, jnp.where(lowered, down, lr)), raised, lowered


def _announce(epoch, raised, lowered, reset, lr):
    """``verbose=True``: GreedyLR's messages (a host callback)."""
    if raised:
        print(f"Epoch {int(epoch)}: increasing learning rate of group 0 to {float(lr):.4e}.")
    if lowered:
        print(f"Epoch {int(epoch)}: reducing learning rate of group 0 to {float(lr):.4e}.")
    if reset:
        print("Scheduler reset to initial state.")


@functools.partial(jax.jit, static_argnums=0)
def _step(cfg, state, value):
    """``GreedyLR.step(value)``: every branch computed, the taken one selected."""
    current = jnp.asarray(value).reshape(()).astype(jnp.float64)  # torch: float(metrics)
    smoothing = state.smoothing
    if cfg.smooth:
        smoothing, current = _stream(cfg, smoothing, current)
    lr, best = _value(state.lr_bits), _value(state.best_bits)
    epoch = optax.safe_increment(state.last_epoch)
    in_cooldown = state.cooldown_counter > 0
    in_warmup = ~in_cooldown & (state.warmup_counter > 0)
    normal = ~in_cooldown & ~in_warmup
    better = normal & _is_better(cfg, current, best)
    bad = jnp.where(normal & ~better, state.num_bad_epochs + 1, 0)
    good = jnp.where(better, state.num_good_epochs + 1, 0)
    increase = good > cfg.patience
    reduce = ~increase & (bad > cfg.patience)
    new_lr, raised, lowered = _new_lr(cfg, lr, increase, reduce)
    at_min = reduce & ~(new_lr > cfg.min_lr)
    reset_start = jnp.where(increase, cfg.reset_start,
                            jnp.where(at_min, state.reset_start - 1, state.reset_start))
    reset = at_min & (reset_start <= 0)  # _reset(): back to the start, then cooldown as usual
    if cfg.verbose:
        jax.debug.callback(_announce, epoch, raised, lowered, reset, new_lr)
    if cfg.smooth:
        smoothing = jax.tree.map(lambda a, b: jnp.where(reset, a, b), cfg.streaming_init(),
                                 smoothing)
    new_lr = jnp.where(reset, cfg.base, new_lr)
    i32 = lambda x: jnp.asarray(x).astype(jnp.int32)
    return GreedyLRState(
        scale=divide(new_lr, cfg.base).astype(jnp.float32),
        lr_bits=_bits(new_lr),
        best_bits=_bits(jnp.where(reset, cfg.start_best, jnp.where(better, current, best))),
        num_bad_epochs=i32(jnp.where(reduce, 0, bad)),
        num_good_epochs=i32(jnp.where(increase | reset, 0, good)),
        cooldown_counter=i32(jnp.where(reduce, cfg.cooldown,
                                       state.cooldown_counter - in_cooldown)),
        warmup_counter=i32(jnp.where(increase, cfg.warmup, state.warmup_counter - in_warmup)),
        reset_start=i32(jnp.where(reset, cfg.reset_start, reset_start)),
        last_epoch=epoch,
        smoothing=smoothing,
    )


# --------------------------------------------------------------------------------------------
# Construction.


def _count(name, value, low=0):
    value = _checks.integer(name, value, low=low)
    if value >= _INT32_LIMIT:
        raise ValueError(f"{name}={value} is invalid: it must be < 2**31 - 1 (int32 counters).")
    return value


def _one_group(name, value, **bounds):
    """A bound that torch also accepts as a list with one entry per param group."""
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise ValueError(
                f"{name}={value!r} is invalid: greedy_lr scales one group of updates, so a "
                f"list must hold 1 value (torch: 'expected 1 {name}s, got {len(value)}'). For "
                "several groups, give each its own greedy_lr (e.g. with optax.partition)."
            )
        (value,) = value
    return _checks.static_number(name, value, **bounds)


def _config(mode, factor, patience, threshold, threshold_mode, cooldown, warmup, min_lr,
            max_lr, eps, verbose, smooth, window_size, reset_start, base_learning_rate):
    _checks.choice("mode", mode, ("min", "max"))
    _checks.choice("threshold_mode", threshold_mode, ("rel", "abs"))
    for name, flag in (("verbose", verbose), ("smooth", smooth)):
        if not isinstance(flag, bool | np.bool_):
            raise TypeError(f"{name} must be a bool, got {flag!r}.")
    return _Config(
        mode=mode, threshold_mode=threshold_mode, verbose=bool(verbose), smooth=bool(smooth),
        factor=_checks.static_number(
            "factor", factor, low=0.0, high=1.0, low_open=True, high_open=True,
            allowed="in (0.0, 1.0) (torch: 'Factor should be < 1.0.'; at 0 its increase "
                    "divides by zero)"),
        patience=_count("patience", patience), cooldown=_count("cooldown", cooldown),
        warmup=_count("warmup", warmup), reset_start=_count("reset_start", reset_start),
        window_size=_count("window_size", window_size, low=1 if smooth else 0),
        threshold=_checks.static_number("threshold", threshold, low=0.0),
        min_lr=_one_group("min_lr", min_lr, low=0.0),
        max_lr=_one_group("max_lr", max_lr, low=0.0),
        eps=_checks.static_number("eps", eps, low=0.0),
        base=_checks.static_number("base_learning_rate", base_learning_rate, low=0.0,
                                   low_open=True),
    )


def greedy_lr(
    mode: str = "min",
    factor: float = 0.95,
    patience: int = 10,
    threshold: float = 1e-6,
    threshold_mode: str = "abs",
    cooldown: int = 0,
    warmup: int = 0,
    min_lr: float = 1e-3,
    max_lr: float = 1.0,
    eps: float = 1e-8,
    verbose: bool = False,
    smooth: bool = False,
    window_size: int = 50,
    reset_start: int = 500,
    *,
    base_learning_rate: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
    r"""transformers 5.x's ``GreedyLR``: raise the learning rate while a metric keeps
    improving, lower it when it stops.

    Chain it after an optimizer, ``optax.chain(funcopt.adamw(lr), greedy_lr(...,
    base_learning_rate=lr))``, and pass the monitored metric to every update:
    ``tx.update(grads, state, params, value=loss)``. Each update is one torch
    ``scheduler.step(value)``, after which the updates are multiplied by the new ``scale =
    lr / base_learning_rate`` (torch: evaluate, ``scheduler.step(metric)``, then train with the
    new lr). ``get_scheduler("greedy", lr, scheduler_specific_kwargs=...)`` builds it.

    One step, with the learning rate :math:`\eta` (``base_learning_rate`` at the start):

    * with ``smooth``, the metric is replaced by the mean of the last ``window_size`` ones;
    * during a cooldown (after a reduction) or a warmup (after an increase) the good and bad
      counts are cleared and that count-down advances; nothing else happens;
    * otherwise the metric :math:`a` improves on the best :math:`b` if :math:`a < b - \theta`
      (``mode="min"``, ``threshold_mode="abs"``), :math:`a < b (1 - \theta)` (``"rel"``),
      :math:`a > b + \theta` or :math:`a > b (1 + \theta)` (``"max"``): then :math:`b = a` and
      the good count grows (the bad one is cleared), else the bad count grows (the good one is
      cleared);
    * good count > ``patience``: :math:`\eta \leftarrow \min(\eta / \text{factor},
      \text{max\_lr})` unless that raises it by no more than ``eps``; a warmup of ``warmup``
      steps starts, and the reset count-down is refilled;
    * bad count > ``patience``: :math:`\eta \leftarrow \max(\eta \cdot \text{factor},
      \text{min\_lr})` unless that lowers it by no more than ``eps``; a cooldown of
      ``cooldown`` steps starts; if :math:`\eta` is then not above ``min_lr``, ``reset_start``
      counts down, and at 0 everything returns to the start (:math:`\eta`, the best metric,
      the counts and the smoothing window).

    Every comparison and every update of :math:`\eta`, the best metric and the window's sum
    is torch's float64 operation (see the module's notes), so the decisions and :math:`\eta`
    are torch's bit for bit; ``scale`` is :math:`\eta / \text{base}` rounded to float32.
    The metric is read as torch's ``float(metric)``: eagerly a Python float keeps its float64
    digits; a traced metric (an update under ``jit`` without x64) is already float32, as a
    float32 loss tensor is in torch.
    ``min_lr``, ``max_lr`` and ``eps`` are absolute learning rates, as in torch: note that the
    default ``min_lr`` (1e-3) is above common learning rates (the Trainer's default is 5e-5),
    and then, in torch as here, the learning rate never goes down.

    Args:
      mode: ``"min"`` (the metric should decrease, e.g. a loss) or ``"max"``.
      factor: in (0, 1): the lr is multiplied by it to go down and divided by it to go up.
      patience: improving (or not improving) evaluations in a row tolerated before the lr
        goes up (or down), an int >= 0.
      threshold: :math:`\theta \ge 0`, the margin an improvement needs.
      threshold_mode: ``"abs"`` or ``"rel"``.
      cooldown: evaluations ignored after a reduction, an int >= 0.
      warmup: evaluations ignored after an increase, an int >= 0.
      min_lr: the smallest learning rate, >= 0 (or a list of one, torch's per-group form).
      max_lr: the largest learning rate, >= 0 (or a list of one).
      eps: a change of the learning rate by ``eps`` or less is skipped, >= 0.
      verbose: print torch's messages when the lr changes or the scheduler resets (from a
        host callback, also under ``jit``).
      smooth: decide on the running mean of the last ``window_size`` metrics.
      window_size: the window of ``smooth``, an int >= 1.
      reset_start: reductions at ``min_lr`` (in total, refilled by every increase) before the
        scheduler resets, an int >= 0.
      base_learning_rate: the learning rate of the optimizer whose updates are scaled (> 0):
        the lr :math:`\eta` starts from it, and returns to it at a reset.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires the keyword
      argument ``value``; its state is a :class:`GreedyLRState` of fixed shapes (jit- and
      ``lax.scan``-friendly).

    Raises:
      ValueError, TypeError: at construction, for anything torch rejects (``factor >= 1``, an
        unknown mode or threshold mode, a list of several min/max lrs) and for values that
        make no sense or fail later in torch (``factor <= 0``, negative counts, bounds,
        ``threshold`` or ``eps``, ``window_size < 1`` with ``smooth``).

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import greedy_lr
      >>> tx = greedy_lr(factor=0.5, patience=1, min_lr=0.01, base_learning_rate=0.1)
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> lrs = []
      >>> for loss in [1.0, 0.5, 0.25, 0.25, 0.25, 0.25]:
      ...     updates, state = tx.update({"w": jnp.ones(2)}, state, value=loss)
      ...     lrs.append(float(state.lr))
      >>> lrs
      [0.1, 0.2, 0.2, 0.2, 0.1, 0.1]
      >>> updates["w"]
      Array([1., 1.], dtype=float32)
    """
    cfg = _config(mode, factor, patience, threshold, threshold_mode, cooldown, warmup, min_lr,
                  max_lr, eps, verbose, smooth, window_size, reset_start, base_learning_rate)

    def init(params):
        del params
        return GreedyLRState(
            scale=jnp.ones([], jnp.float32),
            lr_bits=jnp.asarray(_host_bits(cfg.base)),
            best_bits=jnp.asarray(_host_bits(cfg.start_best)),
            num_bad_epochs=jnp.zeros([], jnp.int32),
            num_good_epochs=jnp.zeros([], jnp.int32),
            cooldown_counter=jnp.zeros([], jnp.int32),
            warmup_counter=jnp.zeros([], jnp.int32),
            reset_start=jnp.asarray(cfg.reset_start, jnp.int32),
            last_epoch=jnp.zeros([], jnp.int32),
            smoothing=cfg.streaming_init(),
        )

    def update(updates, state, params=None, *, value, **extra_args):
        del params, extra_args
        if np.size(value) != 1:
            raise ValueError(
                f"value must be a scalar (the monitored metric), got shape {np.shape(value)}."
            )
        with jax.enable_x64(True):  # torch's Python floats: a Python metric keeps its digits
            state = _step(cfg, state, value)
        return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)
