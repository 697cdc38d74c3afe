"""Orderings that let XLA:CPU overwrite a donated state in place instead of copying it first.

XLA:CPU fuses each output into its own loop (no multi-output fusion), so a step of an
optimizer is one loop per new state and one for the new parameter (``apply_updates`` fuses
the update into it). When the parameter's loop reads a state's *old* value while the state's
loop overwrites the donated buffer, XLA has no order between the two loops: it copies the
state first (a temporary as large as the state, page-faulted anew by every call: ~38 MiB
for 10M float32 parameters) and both loops read the copy. That is ``optax.lion``'s and
``optax.contrib.schedule_free_*``'s step.

The parameter's loop cannot be waited for (its result is made by ``apply_updates``, after the
transformation), but a state's loop can be made to wait for a narrower array that the
parameter's loop reads instead of the old state: :func:`after` adds that dependency, an
elementwise select that is never taken (no value changes; LLVM drops the select and the load,
so the loop reads nothing more; elementwise, it needs no communication between the shards of a
sharded array, which reading one element would).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["after"]


def after(x, dep):
    """``x`` unchanged, computed by XLA after ``dep`` (an array of ``x``'s shape).

    The condition ``e != e and e == e`` is false for every element ``e`` of ``dep`` (NaN
    included) but XLA does not fold it, so the select stays in ``x``'s loop and that loop
    takes ``dep``'s buffer as an operand: the loop that writes ``dep`` runs first, and a
    buffer that only ``dep``'s loop still had to read can then be overwritten in place.

    >>> import jax.numpy as jnp
    >>> after(jnp.array([1.0, jnp.nan]), jnp.array([jnp.nan, 2.0])).tolist()
    [1.0, nan]
    """
    e = dep.astype(jnp.float32)
    never = (e != e) & (e == e)
    return jnp.where(never, jnp.asarray(jnp.nan, jnp.result_type(x)), x)
