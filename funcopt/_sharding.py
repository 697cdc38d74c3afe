"""Shardings for an optimizer state, read from what XLA propagates through one update."""

from __future__ import annotations

import jax

__all__ = ["state_shardings"]


def state_shardings(transformation, params):
    """The shardings of ``transformation``'s state for the (sharded) ``params``.

    They are the ones XLA gives the state that one ``update`` of ``params`` returns: the
    moments sharded like their parameters, Adafactor's row and column factors along the
    parameter's matching mesh axes, scalars replicated. Pass them as ``out_shardings`` to a
    jitted ``init`` so that the state starts where every update will keep it (on a mesh with
    explicit axes ``jax.jit(transformation.init)`` already does this; with auto axes it would
    replicate the state and the second step would recompile). Works for any optax
    transformation, chains and wrappers included. Nothing is computed: it compiles once.

    >>> import jax, jax.numpy as jnp, funcopt
    >>> params = {"w": jnp.ones((4, 2))}
    >>> opt = funcopt.adafactor()
    >>> shardings = funcopt.state_shardings(opt, params)
    >>> state = jax.jit(opt.init, out_shardings=shardings)(params)
    >>> state.exp_avg_sq_row["w"].sharding == shardings.exp_avg_sq_row["w"]
    True
    """
    abstract = jax.eval_shape(transformation.init, params)
    one_update = jax.jit(lambda p, s: transformation.update(p, s, p)[1])
    return one_update.lower(params, abstract).compile().output_shardings
