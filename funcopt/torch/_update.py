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
from funcopt import _fused_adamw

_traces = 0


def trace_count() -> int:
    """How many times a group update has been traced (compiled) in this process."""
    return _traces


def static_key(config: dict) -> tuple:
    """The hashable form of a group's static hyperparameters (all but the learning rate)."""
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items()))
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            "param group hyperparameters other than lr are compile-time constants and must be "
            f"hashable (Python numbers, bools, tuples or None), got {dict(key)!r}."
        ) from None
    return key


def _transformation(optimizer_fn, static, lr):
    return optimizer_fn(learning_rate=lr, **dict(static))


@functools.lru_cache(maxsize=256)
def compiled_init(optimizer_fn, layout, static: tuple, lr_is_none: bool):
    """The jitted ``params -> (states, scratch)``: zero state (one dict per parameter) and a
    zero scratch array per parameter, for parameters that step for the first time. A cheap
    computation, compiled apart so that the update compiles once per group structure."""

    def init(params):
        global _traces
        _traces += 1
        tx = _transformation(optimizer_fn, static, None if lr_is_none else 0.0)
        treedef = jax.tree.structure(list(params))
        return layout.from_state(tx.init(list(params)), treedef)[1], [
            jnp.zeros_like(p) for p in params
        ]

    return jax.jit(init, keep_unused=True)  # its outputs committed to the params' device


@functools.lru_cache(maxsize=256)
def compiled_update(optimizer_fn, layout, static: tuple, lr_is_none: bool, external: tuple):
    """The jitted ``(lr, steps, params, grads, scratch, states, addresses) -> (new_params,
    new_states)``; ``scratch`` holds one array per parameter (None for external ones),
    ``states`` one dict of arrays per parameter (``layout``'s keys), both donated. (JAX
    pairs donated inputs with outputs of the same shape in order, so this order gives each
    state array its own buffer back.)

    ``external`` (one bool per parameter, ``funcopt.adamw`` only): parameters whose JAX array
    shares the torch tensor's memory and that funcopt's fused CPU kernel updates in place, as
    torch's own optimizers do; their ``new_params`` entries are None, and ``addresses``
    (:func:`addresses`) holds their data pointers, which the kernel checks. See
    :func:`external_params`."""

    def update(lr, steps, params, grads, scratch, states, addresses):
        global _traces
        _traces += 1
        del scratch  # donated only, so that XLA reuses its memory for the new parameters
        lr = None if lr_is_none else lr
        treedef = jax.tree.structure(list(params))
        state = layout.to_state(
            treedef, jnp.zeros([], jnp.int32), [steps[i] for i in range(len(params))], states
        )
        if any(external):
            # funcopt.fused_adamw's step (bitwise funcopt.adamw's): one pass over p, g, m, v.
            hyper = _fused_adamw.make_rule(learning_rate=lr, **dict(static))
            new_params, new_state = _fused_adamw.step(
                hyper, list(grads), state, list(params), external=(external, addresses))
        else:
            tx = _transformation(optimizer_fn, static, lr)
            updates, new_state = tx.update(list(grads), state, list(params))
            new_params = optax.apply_updates(list(params), updates)
        return new_params, layout.from_state(new_state, treedef)[1]

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
