"""The jitted update one torch param group runs: all its stepping parameters in one call.

Compiled once per (optimizer function, static hyperparameters, whether the learning rate is
None) and, inside ``jax.jit``, per shapes and dtypes of the stepping parameters. The
learning rate is a traced float32 scalar and the per-parameter steps a traced int32 vector,
so neither a scheduler nor the step count ever recompiles.

Donation: the state arrays and a scratch array per parameter (the previous step's output,
already copied into the torch parameter) are donated, so in steady state XLA writes the new
state and the new parameters into memory it already owns instead of allocating.

Parameters that an optimizer's CPU kernel can step in place (float32 CPU tensors of
``funcopt.adamw``, ``adamw_torch``, ``adam_torch``, ``sgd``, the three ``schedule_free_*`` and
``stable_adamw``: ``funcopt/torch/_direct.py``'s ``KERNELS``) do not come here:
``funcopt/torch/_direct.py`` steps them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from funcopt import _core

# XLA:CPU's memory-optimized scheduler lets the leaves share their scratch (Adafactor's
# full-size temporaries: one leaf's worth instead of all of them, reused from the heap rather
# than freshly mapped and page-faulted at every step); it reorders the computation, not its
# arithmetic (benchmarks/NOTES.md, "Adafactor").
COMPILER_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


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
def static_rule(optimizer_fn, static: tuple):
    """The rule of ``optimizer_fn(**static)`` with learning rate 0.0 (a stand-in that the
    direct kernels replace): hashable, made once per group configuration."""
    return _rule(optimizer_fn, static, 0.0)


@functools.lru_cache(maxsize=256)
def compiled_update(optimizer_fn, layout, static: tuple, lr_is_none: bool):
    """The jitted ``(lr, steps, params, grads, scratch, states, group) -> (new_params,
    new_states, new_group)``; ``scratch`` holds one array per parameter, ``states`` one dict
    of arrays per parameter (``layout``'s keys), both donated; ``group`` the param group's
    values of ``layout.group_keys`` (None for one not set yet). (JAX pairs donated inputs with
    outputs of the same shape in order, so this order gives each state array its own buffer
    back.)"""

    def update(lr, steps, params, grads, scratch, states, group):
        del scratch  # donated only, so that XLA reuses its memory for the new parameters
        rule = _rule(optimizer_fn, static, None if lr_is_none else lr)
        treedef = jax.tree.structure(list(params))
        count = jnp.max(steps, initial=0)  # as state_from_torch counts
        per_leaf = [layout.leaf_fields(rule, count, steps[i], states[i])
                    for i in range(len(params))]
        state = layout.state(rule, treedef, count, per_leaf, group)
        updates, new_state = _core.update(rule, list(grads), state, list(params))
        new_params = optax.apply_updates(list(params), updates)
        _, new_states, new_group = layout.from_state(new_state, treedef)
        return new_params, new_states, new_group

    return jax.jit(update, donate_argnames=("states", "scratch"), keep_unused=True,
                   compiler_options=COMPILER_OPTIONS)
