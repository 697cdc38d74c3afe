"""transformers' ``get_scheduler``: any schedule by name, with the same dispatch and errors.

The names and the dispatch are transformers 5.x's (checked against 5.23.0), which extend
4.49's: two more types (``"cosine_warmup_with_min_lr"``, ``"greedy"``), and
``"inverse_sqrt"`` now takes ``scheduler_specific_kwargs`` (4.49 dropped them silently).
"""

from __future__ import annotations

import enum
import inspect
import warnings

from funcopt._greedy_lr import greedy_lr
from funcopt._lambda_schedules_cosine import (
    get_cosine_schedule_with_warmup,
    get_cosine_with_hard_restarts_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup_lr_rate,
)
from funcopt._lambda_schedules_power import (
    get_constant_schedule,
    get_constant_schedule_with_warmup,
    get_inverse_sqrt_schedule,
    get_linear_schedule_with_warmup,
    get_polynomial_decay_schedule_with_warmup,
)
from funcopt._lambda_schedules_wsd import get_wsd_schedule
from funcopt._plateau import reduce_on_plateau

__all__ = ["SchedulerType", "get_scheduler"]


class SchedulerType(str, enum.Enum):
    """The schedule names of transformers 5.x (``TrainingArguments.lr_scheduler_type``).

    A ``str`` enum: ``SchedulerType("cosine") is SchedulerType.COSINE`` and
    ``SchedulerType.COSINE == "cosine"``. An unknown name raises transformers' ValueError.
    transformers 4.49 has the same members but ``COSINE_WARMUP_WITH_MIN_LR`` and ``GREEDY``
    (added in 5.0).

    >>> SchedulerType("cosine")
    <SchedulerType.COSINE: 'cosine'>
    """

    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    INVERSE_SQRT = "inverse_sqrt"
    REDUCE_ON_PLATEAU = "reduce_lr_on_plateau"
    COSINE_WITH_MIN_LR = "cosine_with_min_lr"
    COSINE_WARMUP_WITH_MIN_LR = "cosine_warmup_with_min_lr"
    WARMUP_STABLE_DECAY = "warmup_stable_decay"
    GREEDY = "greedy"

    @classmethod
    def _missing_(cls, value):
        raise ValueError(
            f"{value} is not a valid {cls.__name__}, please select one of "
            f"{[member.value for member in cls]}"
        )


_FUNCTIONS = {
    SchedulerType.LINEAR: get_linear_schedule_with_warmup,
    SchedulerType.COSINE: get_cosine_schedule_with_warmup,
    SchedulerType.COSINE_WITH_RESTARTS: get_cosine_with_hard_restarts_schedule_with_warmup,
    SchedulerType.POLYNOMIAL: get_polynomial_decay_schedule_with_warmup,
    SchedulerType.CONSTANT: get_constant_schedule,
    SchedulerType.CONSTANT_WITH_WARMUP: get_constant_schedule_with_warmup,
    SchedulerType.INVERSE_SQRT: get_inverse_sqrt_schedule,
    SchedulerType.REDUCE_ON_PLATEAU: reduce_on_plateau,
    SchedulerType.COSINE_WITH_MIN_LR: get_cosine_with_min_lr_schedule_with_warmup,
    SchedulerType.COSINE_WARMUP_WITH_MIN_LR: get_cosine_with_min_lr_schedule_with_warmup_lr_rate,
    SchedulerType.WARMUP_STABLE_DECAY: get_wsd_schedule,
    SchedulerType.GREEDY: greedy_lr,
}
_METRIC_DRIVEN = (SchedulerType.REDUCE_ON_PLATEAU, SchedulerType.GREEDY)
# Arguments get_scheduler fills in itself: never accepted from scheduler_specific_kwargs.
_FILLED = ("learning_rate", "base_learning_rate")


def _call(name, function, kwargs, *args, **filled):
    """``function(*args, **filled, **kwargs)``; a key of ``kwargs`` that ``function`` does not
    take raises transformers' TypeError (which names the key), followed by the keys the
    schedule takes."""
    parameters = inspect.signature(function).parameters
    unknown = [key for key in kwargs if key not in parameters or key in _FILLED]
    if unknown and not any(key in filled for key in kwargs):  # else: "multiple values" first
        accepted = [p for p in parameters if p not in _FILLED]
        if name not in _METRIC_DRIVEN:  # get_scheduler passes the step counts itself
            accepted = [p for p in accepted if p not in ("num_warmup_steps", "num_training_steps")]
        raise TypeError(
            f"{function.__name__}() got an unexpected keyword argument '{unknown[0]}'. "
            f"scheduler_specific_kwargs for {name.value!r} may hold: "
            f"{', '.join(accepted) if accepted else 'nothing (it takes no extra arguments)'}."
        )
    return function(*args, **filled, **kwargs)


def get_scheduler(name, learning_rate, num_warmup_steps=None, num_training_steps=None,
                  scheduler_specific_kwargs=None):
    """transformers' ``get_scheduler`` with the peak learning rate in place of the optimizer.

    Returns the schedule ``step -> lr`` of the named type (see the ``get_*`` functions), or for
    ``"reduce_lr_on_plateau"`` and ``"greedy"`` the :func:`reduce_on_plateau` or
    :func:`greedy_lr` transformation built with ``scheduler_specific_kwargs`` (the torch
    class's keyword arguments) and ``base_learning_rate = learning_rate``, to chain after an
    optimizer using ``learning_rate`` (its ``update`` takes ``value=metric``).

    The dispatch is transformers 5.x's: ``"constant"`` ignores every other argument;
    ``"reduce_lr_on_plateau"`` and ``"greedy"`` ignore the step counts;
    ``"constant_with_warmup"`` takes ``num_warmup_steps`` only; both ignore
    ``scheduler_specific_kwargs`` (transformers silently, here with a UserWarning naming them);
    ``"warmup_stable_decay"`` takes ``num_training_steps`` when given (``num_decay_steps``
    must come in the kwargs); ``"inverse_sqrt"`` takes ``num_warmup_steps`` and the kwargs
    (``timescale``); every other type needs both step counts. A kwarg the schedule does not
    take is transformers' TypeError, followed here by the keys it does take. (transformers'
    per-parameter schedulers for layer-wise optimizers have no counterpart here.)

    Differences between the two references: transformers 4.49 has neither
    ``"cosine_warmup_with_min_lr"`` nor ``"greedy"``, and its ``"inverse_sqrt"`` silently drops
    ``scheduler_specific_kwargs`` (so ``timescale`` could not be set and an unknown key
    passed); 5.x forwards them, and so does funcopt. Every other type dispatches, computes and
    fails alike in both.

    Args:
      name: a :class:`SchedulerType` or its string value.
      learning_rate: the peak learning rate (for the metric-driven types, the optimizer's
        learning rate, a number > 0 for ``"greedy"``).
      num_warmup_steps: the number of warmup steps, or None where the type needs none.
      num_training_steps: the number of training steps, or None where the type needs none.
      scheduler_specific_kwargs: a dict of extra arguments for the schedule function.

    Raises:
      ValueError: for an unknown name, or a missing ``num_warmup_steps``/``num_training_steps``,
        with transformers' messages.
      TypeError: for a keyword argument the schedule does not take.

    Example:
      >>> from funcopt import get_scheduler
      >>> schedule = get_scheduler("cosine", 10.0, num_warmup_steps=2, num_training_steps=10)
      >>> [float(schedule(s)) for s in (0, 1, 2, 6, 10)]
      [0.0, 5.0, 10.0, 5.0, 0.0]
      >>> get_scheduler("linear", 1.0, 2, 10, scheduler_specific_kwargs={"bogus": 1})
      Traceback (most recent call last):
      TypeError: get_linear_schedule_with_warmup() got an unexpected keyword argument 'bogus'. \
scheduler_specific_kwargs for 'linear' may hold: nothing (it takes no extra arguments).
    """
    name = SchedulerType(name)
    function = _FUNCTIONS[name]
    kwargs = {} if scheduler_specific_kwargs is None else scheduler_specific_kwargs
    if name in (SchedulerType.CONSTANT, SchedulerType.CONSTANT_WITH_WARMUP) and kwargs:
        warnings.warn(
            f"scheduler_specific_kwargs {sorted(kwargs)} are ignored for {name.value!r}, as "
            "transformers' get_scheduler ignores them.", UserWarning, stacklevel=2,
        )
    if name == SchedulerType.CONSTANT:
        return function(learning_rate)
    if name == SchedulerType.REDUCE_ON_PLATEAU:
        # torch's min_lr and eps are learning rates: read them against the optimizer's.
        positive = isinstance(learning_rate, int | float) and learning_rate > 0
        return _call(name, function, kwargs,
                     base_learning_rate=learning_rate if positive else 1.0)
    if name == SchedulerType.GREEDY:
        return _call(name, function, kwargs, base_learning_rate=learning_rate)
    if num_warmup_steps is None:
        raise ValueError(
            f"SchedulerType.{name.name} requires `num_warmup_steps`, please provide that argument."
        )
    if name == SchedulerType.CONSTANT_WITH_WARMUP:
        return function(learning_rate, num_warmup_steps=num_warmup_steps)
    if name == SchedulerType.INVERSE_SQRT:
        return _call(name, function, kwargs, learning_rate, num_warmup_steps=num_warmup_steps)
    if name == SchedulerType.WARMUP_STABLE_DECAY:
        return _call(name, function, kwargs, learning_rate, num_warmup_steps=num_warmup_steps,
                     num_training_steps=num_training_steps)
    if num_training_steps is None:
        raise ValueError(
            f"SchedulerType.{name.name} requires `num_training_steps`, please provide that "
            "argument."
        )
    return _call(name, function, kwargs, learning_rate, num_warmup_steps=num_warmup_steps,
                 num_training_steps=num_training_steps)
