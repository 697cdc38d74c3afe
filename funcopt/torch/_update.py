"""The jitted update one torch param group runs: all its stepping parameters in one call.

Compiled once per (optimizer function, static hyperparameters, whether the learning rate is
None) and, inside ``jax.jit``, per shapes and dtypes of the stepping parameters. The
learning rate is a traced float32 scalar and the per-parameter steps a traced int32 vector,
so neither a scheduler nor the step count ever recompiles.

Donation: the state arrays and a scratch array per parameter (the previous step's output,
already copied into the torch parameter) are donated, so in steady state XLA writes the new
state and the new parameters into memory it already owns instead of allocating.

``funcopt.adamw`` on float32 CPU parameters takes ``funcopt.fused_adamw``'s kernel instead,
which updates the torch parameters' own memory in place (:func:`external_params`): no scratch,
no copy back.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcopt
from funcopt import _core, _fused_adamw


def _rule(optimizer_fn, static, lr):
    return _core.rule_of(optimizer_fn(learning_rate=lr, **dict(static)))


@functools.lru_cache(maxsize=256)
def compiled_init(optimizer_fn, layout, static: tuple, lr_is_none: bool):
    """The jitted ``params -> (states, scratch)``: zero state (one dict per parameter, by
    torch key) and a zero scratch array per parameter, for parameters that step for the
    first time. A cheap computation, compiled apart so that the update compiles once per
    group structure."""

    def init(params):
        rule = _rule(optimizer_fn, static, None if lr_is_none else 0.0)
        treedef = jax.tree.structure(list(params))
        zero = _core.init(rule, list(params))
        return layout.from_state(zero, treedef)[1], [jnp.zeros_like(p) for p in params]

    return jax.jit(init, keep_unused=True)  # its outputs committed to the params' device


@functools.lru_cache(maxsize=256)
def compiled_update(optimizer_fn, layout, static: tuple, lr_is_none: bool, external: tuple):
    """The jitted ``(lr, steps, params, grads, scratch, states, group, addresses) ->
    (new_params, new_states, new_group)``; ``scratch`` holds one array per parameter (None
    for external ones), ``states`` one dict of arrays per parameter (``layout``'s keys), both
    donated; ``group`` the param group's values of ``layout.group_keys`` (None for one not
    set yet). (JAX pairs donated inputs with outputs of the same shape in order, so this
    order gives each state array its own buffer back.)

    ``external`` (one bool per parameter, ``funcopt.adamw`` only): parameters whose JAX array
    shares the torch tensor's memory and that funcopt's fused CPU kernel updates in place, as
    torch's own optimizers do; their ``new_params`` entries are None, and ``addresses``
    (:func:`addresses`) holds their data pointers, which the kernel checks. See
    :func:`external_params`."""

    def update(lr, steps, params, grads, scratch, states, group, addresses):
        del scratch  # donated only, so that XLA reuses its memory for the new parameters
        rule = _rule(optimizer_fn, static, None if lr_is_none else lr)
        treedef = jax.tree.structure(list(params))
        count = jnp.max(steps, initial=0)  # as state_from_torch counts
        per_leaf = [layout.leaf_fields(rule, count, steps[i], states[i])
                    for i in range(len(params))]
        state = layout.state(rule, treedef, count, per_leaf, group)
        if any(external):
            # funcopt.fused_adamw's step (bitwise funcopt.adamw's): one pass over p, g, m, v.
            new_params, new_state = _fused_adamw.step(
                rule, list(grads), state, list(params), external=(external, addresses))
        else:
            updates, new_state = _core.update(rule, list(grads), state, list(params))
            new_params = optax.apply_updates(list(params), updates)
        _, new_states, new_group = layout.from_state(new_state, treedef)
        return new_params, new_states, new_group

    return jax.jit(update, donate_argnames=("states", "scratch"), keep_unused=True)


def external_params(optimizer_fn, params, views) -> tuple:
    """Which parameters the fused AdamW kernel may update in place: float32 CPU tensors whose
    JAX view shares their memory (not a copy) and no other parameter's storage (torch would
    update those one after the other), when the optimizer is ``funcopt.adamw`` and the kernel
    is available (``funcopt.fused_adamw``)."""
    if optimizer_fn is not funcopt.adamw or not _fused_adamw.kernel_available():
        return (False,) * len(params)
    storages = collections.Counter(p.untyped_storage().data_ptr() for p in params)
    return tuple(
        p.device.type == "cpu" and view.dtype == jnp.float32
        and view.unsafe_buffer_pointer() == p.data_ptr()
        and storages[p.untyped_storage().data_ptr()] == 1
        for p, view in zip(params, views, strict=True)
    )


def addresses(params, external) -> np.ndarray:
    """The data pointers of the external parameters, as (low, high) uint32 pairs."""
    pointers = np.array([p.data_ptr() for p, outside in zip(params, external, strict=True)
                         if outside], np.uint64)
    return np.stack([pointers & 0xFFFFFFFF, pointers >> 32], axis=-1).astype(np.uint32).ravel()
