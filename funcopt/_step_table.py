"""Per-step scalars exactly as a PyTorch reference computes them: in Python float64, rounded
once to float32 where they meet a tensor.

A traced step cannot redo that float64 arithmetic (JAX runs without x64), and a float32
re-derivation of e.g. ``1 - 0.999**t`` or ``1 - beta3(t)`` is off by an ulp now and then, which
breaks bitwise parity. When the hyperparameters are static (Python numbers), the values are
computed on the host with the reference's own expression for every step until they stop
changing (at most :data:`CAP` steps) and read with one gather. Past a table cut at ``CAP``
steps (and for traced hyperparameters) the caller's float32 formula takes over; it agrees to
an ulp or two.

>>> import jax.numpy as jnp
>>> table = until_constant(lambda t: 1.0 - 0.9**t, 1.0)
>>> len(table.values) - 1  # 1 - 0.9**t rounds to float32 1.0 from step 165 on
165
>>> float(read(table, jnp.int32(2), None)) == float(jnp.float32(1.0 - 0.9**2))
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

__all__ = ["CAP", "StepTable", "over", "until_constant", "read"]

#: The longest table built (1 MiB of float32 per column).
CAP = 1 << 18


@dataclasses.dataclass(frozen=True, eq=False)
class StepTable:
    """``values[t]``: the float32 value at step ``t`` for ``t = 1 .. len(values) - 1`` (row 0
    is unused); ``after``: the float32 value at every later step, or None when the table was
    cut at :data:`CAP` before the value settled."""

    values: np.ndarray
    after: float | None


def _f32(x: float) -> float:
    return float(np.float32(x))


def over(fn: Callable[[int], float], last: int, after: float) -> StepTable:
    """``fn(t)`` (float64, the reference's expression) for ``t = 1 .. last``, then ``after``."""
    n = min(last, CAP)
    values = np.array([0.0] + [fn(t) for t in range(1, n + 1)], np.float32)
    return StepTable(values, _f32(after) if n == last else None)


def until_constant(fn: Callable[[int], float], limit: float) -> StepTable:
    """``fn(t)`` for ``t = 1, 2, ...`` until its float32 rounding reaches ``limit``, which it
    then keeps (``fn`` must approach ``limit`` monotonically, like ``1 - b**t``)."""
    target = _f32(limit)
    values = [0.0]
    for t in range(1, CAP + 1):
        values.append(fn(t))
        if _f32(values[-1]) == target:
            return StepTable(np.array(values, np.float32), target)
    return StepTable(np.array(values, np.float32), None)


def read(table: StepTable, t, formula: Callable | None):
    """The float32 value at the traced step ``t`` (int32, >= 1); ``formula(t)`` (float32) serves
    the steps past a cut table."""
    n = len(table.values) - 1
    value = jnp.asarray(table.values)[jnp.clip(t, 0, n)]
    rest = jnp.float32(table.after) if table.after is not None else formula(t)
    return jnp.where(t <= n, value, rest)
