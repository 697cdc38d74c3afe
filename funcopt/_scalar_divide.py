"""``x / b`` correctly rounded, for a scalar ``b``, without a division instruction per element.

A division is the slowest float32 operation of an update loop (a few times a multiply-add's
cost, on a unit that square roots share), and a true elementwise division is what parity
needs: XLA would turn ``x / b`` into ``x * (1 / b)``, an ulp off now and then. With the
reciprocal ``y = RN(1 / b)`` computed once, two corrections by fused multiply-adds give the
correctly rounded quotient::

    q0 = RN(x * y)
    q1 = RN(q0 + (x - b q0) y)      # within an ulp of x / b
    q2 = RN(q1 + (x - b q1) y)      # = RN(x / b)

(Markstein's theorem: ``y`` within half an ulp of ``1 / b`` and ``q1`` within an ulp of
``x / b`` make ``q2`` the correctly rounded quotient; each residual ``x - b q`` is exact as an
FMA.) The conditions: no residual below float32's normal range and no intermediate overflow,
which :func:`divide_by` states as the range its callers must stay in; an infinite ``x`` is
passed through (``inf - inf`` would give NaN). Exact under ``jit``, where XLA fuses the
expression into one loop and contracts each ``x - b q`` and ``q + r y`` into one FMA (the
product with one use is the one fused); run op by op, the products round on their own.

>>> import jax, jax.numpy as jnp, numpy as np
>>> b = np.float32(0.271)
>>> x = jnp.linspace(1, 2, 10001, dtype=jnp.float32)
>>> q = jax.jit(divide_by)(x, jnp.float32(b), jnp.float32(np.float32(1) / b))
>>> bool((q == np.asarray(x) / b).all())
True
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["divide_by"]


def divide_by(x, b, y):
    """``RN(x / b)`` for a float32 scalar ``0 < b <= 1`` and ``y = RN(1 / b)``, elementwise.

    Exact for zeros (signs kept), NaN, infinities and every finite ``x`` with
    ``|x / b| <= 2**126`` whose residuals stay normal: ``e(b) + e(x / b) >= -103`` (binary
    exponents), e.g. ``|x / b| >= 2**-88`` for ``b >= 2**-15``. Below that, XLA's CPU flush
    of subnormals can leave it an ulp off. Checked over all float32 mantissas for a few
    hundred divisors in ``tests/test_scalar_divide.py``."""
    q = x * y
    for _ in range(2):
        q = q - (q * b - x) * y
    return jnp.where(jnp.abs(x) == jnp.inf, x, q)
