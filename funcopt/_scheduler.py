"""transformers' ``get_scheduler``: any schedule by name, with the same dispatch and errors."""

from __future__ import annotations

import enum

from funcopt._plateau import reduce_on_plateau
from funcopt._schedules import (
    get_constant_schedule,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_cosine_with_hard_restarts_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_inverse_sqrt_schedule,
    get_linear_schedule_with_warmup,
    get_polynomial_decay_schedule_with_warmup,
    get_wsd_schedule,
)

__all__ = ["SchedulerType", "get_scheduler"]


class SchedulerType(str, enum.Enum):
    """The schedule names of transformers 4.49 (``TrainingArguments.lr_scheduler_type``).

    A ``str`` enum: ``SchedulerType("cosine") is SchedulerType.COSINE`` and
    ``SchedulerType.COSINE == "cosine"``. An unknown name raises transformers' ValueError.

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
    WARMUP_STABLE_DECAY = "warmup_stable_decay"

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
    SchedulerType.WARMUP_STABLE_DECAY: get_wsd_schedule,
}


def get_scheduler(name, learning_rate, num_warmup_steps=None, num_training_steps=None,
                  scheduler_specific_kwargs=None):
    """transformers' ``get_scheduler`` with the peak learning rate in place of the optimizer.

    Returns the schedule ``step -> lr`` of the named type (see the ``get_*`` functions), or for
    ``"reduce_lr_on_plateau"`` the :func:`reduce_on_plateau` transformation built with
    ``scheduler_specific_kwargs`` (torch's keyword arguments) and ``base_learning_rate =
    learning_rate``, to chain after an optimizer using ``learning_rate``.

    The dispatch is transformers 4.49's: ``"constant"`` ignores every other argument;
    ``"reduce_lr_on_plateau"`` ignores the step counts; ``"constant_with_warmup"`` and
    ``"inverse_sqrt"`` take ``num_warmup_steps`` only and silently ignore
    ``scheduler_specific_kwargs`` (so ``timescale`` cannot be set this way);
    ``"warmup_stable_decay"`` takes ``num_training_steps`` when given (``num_decay_steps``
    must come in the kwargs); every other type needs both step counts, and a kwarg its function
    does not accept is a TypeError. (transformers' per-parameter schedulers for layer-wise
    optimizers have no counterpart here.)

    Args:
      name: a :class:`SchedulerType` or its string value.
      learning_rate: the peak learning rate.
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
    """
    name = SchedulerType(name)
    function = _FUNCTIONS[name]
    if name == SchedulerType.CONSTANT:
        return function(learning_rate)
    kwargs = {} if scheduler_specific_kwargs is None else scheduler_specific_kwargs
    if name == SchedulerType.REDUCE_ON_PLATEAU:
        # torch's min_lr and eps are learning rates: read them against the optimizer's.
        positive = isinstance(learning_rate, int | float) and learning_rate > 0
        return function(**kwargs, base_learning_rate=learning_rate if positive else 1.0)
    if num_warmup_steps is None:
        raise ValueError(
            f"SchedulerType.{name.name} requires `num_warmup_steps`, please provide that argument."
        )
    if name in (SchedulerType.CONSTANT_WITH_WARMUP, SchedulerType.INVERSE_SQRT):
        return function(learning_rate, num_warmup_steps=num_warmup_steps)
    if name == SchedulerType.WARMUP_STABLE_DECAY:
        return function(learning_rate, num_warmup_steps=num_warmup_steps,
                        num_training_steps=num_training_steps, **kwargs)
    if num_training_steps is None:
        raise ValueError(
            f"SchedulerType.{name.name} requires `num_training_steps`, please provide that "
            "argument."
        )
    return function(learning_rate, num_warmup_steps=num_warmup_steps,
                    num_training_steps=num_training_steps, **kwargs)
