"""A funcopt schedule as a Keras ``LearningRateSchedule``.

The schedule is not re-implemented in TF ops and not tabulated: the funcopt function itself
is lowered once by ``jax2tf`` (StableHLO in an ``XlaCallModule`` op, compiled by TF's XLA).
So the values are funcopt's own, for any step, eagerly, in ``tf.function`` graphs
(``model.fit``) and in SavedModels, where a table would need a horizon and grow with it.
Measured: bit-identical to ``schedule(step)`` for every funcopt schedule at every step
tested (create_optimizer's also to transformers' TF schedule); under an enclosing ``jit``
(inside a funcopt optimizer) XLA may specialize constants differently (``pow(x, 2.0)`` to
``x * x``), a difference of at most 1 float32 ulp. It runs on the host CPU (``/CPU:0``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import jax2tf

from funcopt.tensorflow import _serialize
from funcopt.tensorflow._tf import tf, tf_keras

__all__ = ["learning_rate_schedule"]


def _lowered(schedule):
    def lr(step):
        return jnp.asarray(schedule(step), jnp.float32)

    try:
        out = jax.eval_shape(lr, jax.ShapeDtypeStruct((), jnp.int32))
    except Exception as err:  # noqa: BLE001 - any failure to trace means "not a schedule"
        raise TypeError(
            f"schedule must be a jit-traceable function step -> learning rate (like every "
            f"funcopt and optax schedule); tracing {schedule!r} with an int32 step failed: "
            f"{type(err).__name__}: {err}"
        ) from None
    if out.shape != ():
        raise TypeError(f"schedule must return a scalar learning rate, got shape {out.shape}.")
    converted = jax2tf.convert(lr, with_gradient=False, native_serialization_platforms=("cpu",))
    return tf.function(converted, autograph=False,
                       input_signature=[tf.TensorSpec([], tf.int32)])


@tf_keras.saving.register_keras_serializable(package="funcopt")
class Schedule(tf_keras.optimizers.schedules.LearningRateSchedule):
    """A Keras ``LearningRateSchedule`` running a funcopt schedule; see
    :func:`learning_rate_schedule`."""

    def __init__(self, schedule, name: str | None = None):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                f"schedule must be a funcopt schedule (a function step -> lr), got {schedule!r}."
            )
        self.schedule = schedule
        self.name = name
        self._lr = _lowered(schedule)

    @tf.autograph.experimental.do_not_convert
    def __call__(self, step):
        with tf.name_scope(self.name or "funcopt_schedule"), tf.device("/CPU:0"):
            return self._lr(tf.cast(step, tf.int32))

    def get_config(self) -> dict:
        try:
            description = _serialize.describe(self.schedule)
        except _serialize.NotDescribable as err:
            raise ValueError(
                f"This learning-rate schedule cannot be serialized: {err}. Only funcopt's "
                "schedules (functools.partial objects of funcopt functions with plain "
                "arguments) are; a lambda or closure cannot be written to a config. Build the "
                "schedule with funcopt, or don't save the optimizer's config."
            ) from None
        return {"schedule": description, "name": self.name}

    @classmethod
    def from_config(cls, config: dict) -> Schedule:
        if not isinstance(config, dict) or "schedule" not in config:
            raise ValueError(
                f"Not a funcopt schedule config (expected a 'schedule' entry): {config!r}."
            )
        return cls(_serialize.rebuild(config["schedule"]), name=config.get("name"))


def learning_rate_schedule(schedule, name: str | None = None) -> Schedule:
    """A Keras (tf_keras) ``LearningRateSchedule`` computing a funcopt schedule.

    ``schedule`` is any jit-traceable ``step -> lr`` function (every funcopt schedule, e.g.
    :func:`funcopt.create_optimizer`'s, and optax's). Called with a Keras step (the
    optimizer's ``iterations``, int64; the legacy optimizers pass it as float32), it casts the
    step to int32, as funcopt's optimizers count, and returns the float32 learning rate that
    ``schedule(step)`` gives (bit for bit for funcopt's schedules; within 1 ulp of the same
    under an enclosing ``jit``), at any step, eagerly and inside ``tf.function``
    (``model.fit``): the funcopt function itself is lowered to TF with ``jax2tf`` (an
    ``XlaCallModule`` op on the host CPU), not re-implemented or tabulated.

    It serializes the Keras way (``get_config``/``from_config``, and by name through
    ``tf_keras.optimizers.schedules.serialize``/``deserialize``) when ``schedule`` is one of
    funcopt's (a ``functools.partial`` of a funcopt function with plain arguments): the config
    records that function and its arguments, and ``from_config`` rebuilds and re-lowers it.
    Limits: other callables (lambdas, closures, optax schedules) work but ``get_config``
    raises ``ValueError``; fractional steps are truncated; steps must fit int32.

    Raises ``TypeError`` when ``schedule`` is not a traceable function of the step returning
    a scalar.

    Example:
      >>> import funcopt, funcopt.tensorflow
      >>> schedule = funcopt.get_linear_schedule_with_warmup(1.0, num_warmup_steps=2,
      ...                                                    num_training_steps=10)
      >>> keras_schedule = funcopt.tensorflow.learning_rate_schedule(schedule)
      >>> [float(keras_schedule(step)) for step in (0, 1, 2, 6)]
      [0.0, 0.5, 1.0, 0.5]
      >>> clone = type(keras_schedule).from_config(keras_schedule.get_config())
      >>> float(clone(6))
      0.5
    """
    return Schedule(schedule, name=name)
