"""Keras Adam optimizer state <-> :class:`funcopt.AdamWeightDecayState`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcopt import AdamWeightDecayState
from funcopt.tensorflow import _slots
from funcopt.tensorflow._tf import to_jax, to_tf
from funcopt.tensorflow._variables import as_variable_list, check_match

__all__ = ["state_from_keras", "state_to_keras"]

_INT32_MAX = 2**31 - 1


def state_from_keras(optimizer, variables, params) -> AdamWeightDecayState:
    """Reads a Keras Adam optimizer's state as the state of the matching funcopt optimizer.

    ``optimizer`` is ``transformers.AdamWeightDecay`` (any legacy tf_keras ``Adam``) or the
    new ``tf_keras.optimizers.Adam`` that ``transformers.create_optimizer`` returns without
    weight decay; the result is the state of :func:`funcopt.adam_weight_decay` or of
    :func:`funcopt.create_optimizer`'s transformation, and continuing the run with it gives
    the numbers the Keras optimizer would have given (build the funcopt transformation with
    the same hyperparameters: they are not part of the state). ``params`` is the pytree whose
    leaves, in ``jax.tree.leaves`` order, are ``variables`` in order (same shapes and dtypes);
    its structure becomes that of ``m``, ``v`` and ``vhat`` (the latter only with amsgrad,
    else None). ``iterations`` is Keras' counter as int32. Moments are imported zero-copy
    (DLPack) from snapshots of the slot variables, so later Keras steps don't change them.

    Raises ``TypeError`` for another optimizer class or non-variables, ``ValueError`` when
    ``variables`` and ``params`` don't match (count, shape, dtype) or when the optimizer has
    no slots for the variables yet.

    Example:
      >>> import jax.numpy as jnp, tensorflow as tf, funcopt, funcopt.tensorflow
      >>> from transformers import AdamWeightDecay
      >>> w = tf.Variable([1.0, 2.0], name="w")
      >>> keras_opt = AdamWeightDecay(0.1, weight_decay_rate=0.01)
      >>> _ = keras_opt.apply_gradients([(tf.constant([0.5, -0.5]), w)])
      >>> params = {"w": jnp.asarray(w.numpy())}
      >>> state = funcopt.tensorflow.state_from_keras(keras_opt, [w], params)
      >>> int(state.iterations), [round(x, 4) for x in state.m["w"].tolist()]
      (1, [0.05, -0.05])
    """
    variables = as_variable_list(variables)
    check_match(variables, params, "params")
    slot_vars = _slots.slots(optimizer, variables, create=False)
    iterations = int(optimizer.iterations.numpy())
    if not 0 <= iterations <= _INT32_MAX:
        raise ValueError(f"optimizer.iterations={iterations} does not fit funcopt's int32 count.")
    treedef = jax.tree.structure(params)

    def field(name):
        if name not in slot_vars:
            return None
        return jax.tree_util.tree_unflatten(treedef, [to_jax(s) for s in slot_vars[name]])

    return AdamWeightDecayState(
        iterations=jnp.asarray(iterations, jnp.int32),
        m=field("m"),
        v=field("v"),
        vhat=field("vhat"),
    )


def state_to_keras(state: AdamWeightDecayState, optimizer, variables) -> None:
    """Writes a funcopt Adam state into a Keras Adam optimizer, creating its slots if needed.

    The inverse of :func:`state_from_keras`: ``state`` comes from
    :func:`funcopt.adam_weight_decay` or :func:`funcopt.create_optimizer`'s transformation,
    and the leaves of ``state.m`` (``jax.tree.leaves`` order) are ``variables`` in order.
    A fresh optimizer gets its slots created (legacy: ``_create_all_weights``; new:
    ``build``), then every slot and ``iterations`` are assigned, so the Keras run continues
    where the funcopt run stopped. The variables' values are not touched: assign the params
    yourself. The state is copied in by DLPack; the funcopt state is never modified by later
    Keras steps.

    Raises ``TypeError`` for another state type or optimizer class, ``ValueError`` when the
    state and the variables don't match (count, shape, dtype), when amsgrad differs (a
    ``vhat`` without amsgrad or the reverse) or when a built new-style optimizer was built for
    other variables.

    Example:
      >>> import jax.numpy as jnp, tensorflow as tf, funcopt, funcopt.tensorflow
      >>> from transformers import AdamWeightDecay
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> opt = funcopt.adam_weight_decay(0.1)
      >>> _, state = opt.update({"w": jnp.array([0.5, -0.5])}, opt.init(params), params)
      >>> w = tf.Variable([1.0, 2.0], name="w")
      >>> keras_opt = AdamWeightDecay(0.1)
      >>> funcopt.tensorflow.state_to_keras(state, keras_opt, [w])
      >>> m = keras_opt.get_slot(w, "m").numpy().tolist()
      >>> int(keras_opt.iterations), [round(x, 4) for x in m]
      (1, [0.05, -0.05])
    """
    if not isinstance(state, AdamWeightDecayState):
        raise TypeError(
            "state must be a funcopt.AdamWeightDecayState (the state of funcopt."
            "adam_weight_decay or of create_optimizer's transformation), got "
            f"{type(state).__name__}."
        )
    variables = as_variable_list(variables)
    names = _slots.slot_names(optimizer)
    amsgrad = "vhat" in names
    if amsgrad and state.vhat is None:
        raise ValueError(
            f"The {type(optimizer).__name__} uses amsgrad but the state has no vhat: build the "
            "funcopt optimizer with amsgrad=True, or the Keras optimizer without amsgrad."
        )
    if not amsgrad and state.vhat is not None:
        raise ValueError(
            f"The state has a vhat (amsgrad) but the {type(optimizer).__name__} does not use "
            "amsgrad: "
            "build the Keras optimizer with amsgrad=True, or the funcopt one without."
        )
    fields = {"m": check_match(variables, state.m, "state.m"),
              "v": check_match(variables, state.v, "state.v")}
    if amsgrad:
        fields["vhat"] = check_match(variables, state.vhat, "state.vhat")
    iterations = int(state.iterations)
    if iterations < 0:
        raise ValueError(f"state.iterations={iterations} is negative.")
    slot_vars = _slots.slots(optimizer, variables, create=True)
    for name in names:
        for slot, leaf in zip(slot_vars[name], fields[name], strict=True):
            # A private copy: Keras' kernels then update a buffer no JAX array shares.
            slot.assign(to_tf(jnp.array(leaf, copy=True)))
    optimizer.iterations.assign(iterations)
