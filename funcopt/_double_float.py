"""Float64-like scalar arithmetic from pairs of float32 ("double-float"), under jit without x64.

Some references keep Python floats (IEEE float64) between steps and hand their float32 kernels
values rounded once from float64: schedule-free's ``weight_sum``, ``lr_max`` and the
coefficients built from them. JAX computes in float32 unless x64 is switched on globally, so
these values are carried as an unevaluated sum ``hi + lo`` of two float32s with
``|lo| <= ulp(hi) / 2`` (:class:`DF`): 48 significant bits (~3.6e-15 relative) against
float64's 53. :func:`add`, :func:`mul`, :func:`div` and :func:`sqrt` are accurate to a few
units of 2**-48, so the float32 rounding of a result (its ``hi``) equals the float32 rounding
of the reference's float64 value unless that value lies within ~1e-14 (relative) of a float32
rounding boundary.

The classic algorithms (Knuth's two-sum, Dekker's product, Bailey's double-double division)
need each float32 operation rounded as written. XLA's algebraic simplifier rewrites
``(a + c) - c`` as ``a`` when ``c`` is a constant (it folds optimization barriers around
constants too), and XLA on CPU contracts a product into a fused multiply-add with a sum that
uses it, even one that must subtract the rounded product; so the sums and the product that
the error terms are taken against go through :func:`~funcopt._numerics.unfused`. Dekker's
split masks bits rather than multiplying by 4097.
Values are float32 scalars (0-D arrays) within float32's exponent range, narrower than
float64's. Each operation costs a few dozen scalar XLA operations, so only short chains of
them belong in an update.

>>> from funcopt import _double_float as df
>>> third = df.div(df.const(1.0), df.const(3.0))
>>> abs(df.to_float(third) - 1 / 3) < 1e-15
True
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcopt._numerics import unfused

f32 = jnp.float32


class DF(NamedTuple):
    """``hi + lo``, two float32 values, ``hi`` the float32 rounding of the sum."""

    hi: object
    lo: object


def split_float(x: float) -> tuple:
    """A Python float as NumPy float32 ``(hi, lo)``: ``hi = float32(x)``, ``lo`` the rest."""
    hi = np.float32(x)
    return hi, np.float32(float(x) - float(hi))


def const(x: float) -> DF:
    """A Python float (float64) as a DF."""
    hi, lo = split_float(x)
    return DF(jnp.asarray(hi), jnp.asarray(lo))


def of(x) -> DF:
    """A Python number exactly (:func:`const`); anything else as its float32 value."""
    if isinstance(x, int | float):
        return const(float(x))
    x = jnp.asarray(x, f32)
    return DF(x, jnp.zeros_like(x))


def of_int(n) -> DF:
    """An int32 value, exactly."""
    n = jnp.asarray(n, jnp.int32)
    # hi: n rounded to 24 bits (kept below 2**31, which int32 cannot hold); the rest is exact.
    hi = jnp.minimum(n.astype(f32), f32(2.0**31 - 128))
    return DF(*_two_sum(hi, (n - hi.astype(jnp.int32)).astype(f32)))


def pair(x: DF):
    """``x`` as a float32 array of shape (2,), ``[hi, lo]``: how a state stores it."""
    return jnp.stack([jnp.asarray(x.hi, f32), jnp.asarray(x.lo, f32)])


def unpair(a) -> DF:
    """The DF stored as ``[hi, lo]`` by :func:`pair`."""
    return DF(a[0], a[1])


def pair_from_float(x: float):
    """The stored ``[hi, lo]`` of a Python float (e.g. a torch group's ``weight_sum``)."""
    return jnp.asarray(np.array(split_float(x), np.float32))


def to_float(x) -> float:
    """The Python float ``hi + lo`` of a DF or of a stored ``[hi, lo]`` pair."""
    hi, lo = (x.hi, x.lo) if isinstance(x, DF) else (x[0], x[1])
    return float(np.float64(np.asarray(hi)) + np.float64(np.asarray(lo)))


def where(cond, a: DF, b: DF) -> DF:
    return DF(jnp.where(cond, a.hi, b.hi), jnp.where(cond, a.lo, b.lo))


def greater(a: DF, b: DF):
    return (a.hi > b.hi) | ((a.hi == b.hi) & (a.lo > b.lo))


def maximum(a: DF, b: DF) -> DF:
    """Python's ``max(a, b)``: ``a`` unless ``b`` is greater."""
    return where(greater(b, a), b, a)


# -- error-free transformations ------------------------------------------------------------


def _two_sum(a, b):
    s = unfused(a + b)
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _quick_two_sum(a, b) -> DF:
    """``a + b`` normalized, for ``|a| >= |b|``."""
    s = unfused(a + b)
    return DF(s, b - (s - a))


def _split(a):
    """``a = hi + lo`` with 12 and at most 12 significant bits (a mask of the low 12 bits)."""
    bits = jax.lax.bitcast_convert_type(jnp.asarray(a, f32), jnp.uint32)
    hi = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), f32)
    return hi, a - hi


def _two_prod(a, b):
    """``(p, e)`` with ``p = fl(a * b)`` and ``a * b = p + e`` exactly (Dekker)."""
    p = unfused(a * b)
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


# -- arithmetic ------------------------------------------------------------------------------


def neg(a: DF) -> DF:
    return DF(-a.hi, -a.lo)


def add(a: DF, b: DF) -> DF:
    s, e = _two_sum(a.hi, b.hi)
    t, f = _two_sum(a.lo, b.lo)
    s, e = _quick_two_sum(s, e + t)
    return _quick_two_sum(s, e + f)


def sub(a: DF, b: DF) -> DF:
    return add(a, neg(b))


def mul(a: DF, b: DF) -> DF:
    p, e = _two_prod(a.hi, b.hi)
    return _quick_two_sum(p, e + (a.hi * b.lo + a.lo * b.hi))


def div(a: DF, b: DF) -> DF:
    """``a / b``: the float32 quotient plus the exact remainder's quotient."""
    q = a.hi / b.hi
    p, e = _two_prod(q, b.hi)
    # a - q*b, the remainder: (a.hi - p) is exact (Sterbenz), the rest is small.
    rest = ((a.hi - p) - e) + (a.lo - q * b.lo)
    return _quick_two_sum(q, rest / b.hi)


def sqrt(a: DF) -> DF:
    """``sqrt(a)`` (Python's ``a ** 0.5``) for ``a >= 0``."""
    positive = a.hi > 0
    safe = jnp.where(positive, a.hi, f32(1))
    root = jnp.sqrt(safe)
    p, e = _two_prod(root, root)
    rest = ((safe - p) - e) + jnp.where(positive, a.lo, f32(0))
    out = _quick_two_sum(root, rest / (f32(2) * root))
    return where(positive, out, DF(jnp.sqrt(a.hi), jnp.zeros_like(a.hi)))


def lookup(table, index) -> DF:
    """Row ``index`` of a float32 table of shape (n, 2) (rows ``[hi, lo]``), as a DF."""
    row = jnp.asarray(table)[index]
    return DF(row[0], row[1])
