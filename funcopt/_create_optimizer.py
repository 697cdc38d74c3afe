"""TF ``transformers.create_optimizer``: warmup + polynomial decay and the matching Adam."""

from __future__ import annotations

from collections.abc import Sequence

import optax

from funcopt import _checks, _core, _keras_clipping
from funcopt._adam_weight_decay import KerasAdam, adam_weight_decay

__all__ = ["create_optimizer"]

EXCLUDE_FROM_WEIGHT_DECAY = ("LayerNorm", "layer_norm", "bias")


def create_optimizer(
    init_lr: float,
    num_train_steps: int,
    num_warmup_steps: int,
    min_lr_ratio: float = 0.0,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.999,
    adam_epsilon: float = 1e-8,
    adam_clipnorm: float | None = None,
    adam_global_clipnorm: float | None = None,
    weight_decay_rate: float = 0.0,
    power: float = 1.0,
    include_in_weight_decay: Sequence[str] | None = None,
) -> tuple[optax.GradientTransformation, object]:
    r"""TF ``transformers.create_optimizer``: returns ``(transformation, schedule)``.

    The schedule (in float32, as TF computes it), for iteration :math:`i` (0-based),
    :math:`W` = ``num_warmup_steps``, :math:`N` = ``num_train_steps``:

    .. math::
        \eta(i) = \eta_0\, i / W \ (i < W), \qquad
        \eta(i) = (\eta_0 - \eta_\text{end})
          \left(1 - \frac{\min(i - W, N - W)}{N - W}\right)^{\text{power}} + \eta_\text{end}

    with :math:`\eta_\text{end} = \eta_0` ``min_lr_ratio`` (the warmup is linear whatever
    ``power`` is). With ``weight_decay_rate > 0`` the transformation is
    :func:`adam_weight_decay` excluding names matching ``LayerNorm``, ``layer_norm`` and
    ``bias`` (unless ``include_in_weight_decay`` matches); otherwise it is Keras' ``Adam``
    (same kernel, no decay, ``clipnorm`` taking precedence over ``global_clipnorm``).

    Example:
      >>> import funcopt
      >>> opt, schedule = funcopt.create_optimizer(1.0, num_train_steps=10, num_warmup_steps=3)
      >>> [round(float(schedule(i)), 4) for i in (0, 1, 3, 10)]
      [0.0, 0.3333, 1.0, 0.0]
    """
    from funcopt._warmup_decay import polynomial_decay, warmup

    _checks.number("init_lr", init_lr, low=0.0)
    num_train_steps = _checks.integer("num_train_steps", num_train_steps, low=1)
    num_warmup_steps = _checks.integer("num_warmup_steps", num_warmup_steps, low=0)
    if num_train_steps <= num_warmup_steps:
        raise ValueError(
            f"num_train_steps={num_train_steps} must be greater than "
            f"num_warmup_steps={num_warmup_steps}: the decay would last "
            f"{num_train_steps - num_warmup_steps} steps (TF would produce NaN learning rates)."
        )
    _checks.number("min_lr_ratio", min_lr_ratio, low=0.0)
    _checks.number("power", power, low=0.0)
    _keras_clipping.check_clips(adam_clipnorm, None, adam_global_clipnorm, prefix="adam_")
    schedule = polynomial_decay(
        init_lr, num_train_steps - num_warmup_steps, init_lr * min_lr_ratio, power
    )
    if num_warmup_steps:
        schedule = warmup(init_lr, schedule, num_warmup_steps)
    _checks.number("weight_decay_rate", weight_decay_rate)
    if weight_decay_rate > 0.0:
        transformation = adam_weight_decay(
            schedule, adam_beta1, adam_beta2, adam_epsilon,
            weight_decay_rate=weight_decay_rate,
            include_in_weight_decay=include_in_weight_decay,
            exclude_from_weight_decay=list(EXCLUDE_FROM_WEIGHT_DECAY),
            clipnorm=adam_clipnorm, global_clipnorm=adam_global_clipnorm,
        )
    else:
        _checks.number("adam_beta1", adam_beta1, low=0.0, high=1.0)
        _checks.number("adam_beta2", adam_beta2, low=0.0, high=1.0)
        _checks.number("adam_epsilon", adam_epsilon, low=0.0)
        # The new Keras Adam: float32(1 - beta); clipnorm, else global_clipnorm (the pair is
        # refused above, so clipping each that is set is the same).
        transformation = _core.transformation(KerasAdam(
            schedule, adam_beta1, adam_beta2, adam_epsilon, amsgrad=False, weight_decay=0.0,
            mask=None, clipvalue=None, clipnorm=adam_clipnorm,
            global_clipnorm=adam_global_clipnorm, legacy=False))
    return transformation, schedule
