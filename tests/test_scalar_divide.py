"""funcopt._scalar_divide.divide_by against the true division, bitwise, under jit.

Every float32 mantissa (the quotient's rounding depends on the mantissas only, away from
the ends of the exponent range) for the divisors funcopt hands it (AdEMAMix's
``sqrt(1 - b2**t)``) and random ones in (0, 1]; the ends of the range it is specified for;
zeros, infinities and NaN.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcopt._numerics import divide
from funcopt._scalar_divide import divide_by


def bits(x):
    return np.asarray(x).view(np.uint32)


@jax.jit
def mismatches(x, b, y):
    """How many quotients differ from the true division (and the first such ``x``)."""
    ours = jax.lax.bitcast_convert_type(divide_by(x, b, y), jnp.uint32)
    true = jax.lax.bitcast_convert_type(divide(x, b), jnp.uint32)
    bad = ours != true
    return bad.sum(), x[jnp.argmax(bad)]


def divisors():
    rng = np.random.default_rng(0)
    out = [math.sqrt(1 - 0.999**t) for t in (1, 2, 3, 10, 100, 1000, 10000, 16000)]
    out += [math.sqrt(1 - 0.9999**t) for t in (1, 7, 5000)]
    out += list(rng.uniform(0, 1, 24)) + [1.0, 0.5, 1 - 2**-24, 2**-15]
    return [np.float32(b) for b in out]


MANTISSAS = (np.arange(1 << 23, dtype=np.uint32) | np.uint32(127 << 23)).view(np.float32)


@pytest.mark.parametrize("b", divisors(), ids=lambda b: f"{b:.6g}")
def test_every_mantissa(b):
    y = np.float32(1) / b
    n, first = mismatches(jnp.asarray(MANTISSAS), jnp.float32(b), jnp.float32(y))
    assert int(n) == 0, f"b={b!r}: {int(n)} quotients differ, e.g. x={float(first)!r}"


@pytest.mark.parametrize("b", [np.float32(2**-15), np.float32(0.0316), np.float32(0.5),
                               np.float32(1.0)], ids=str)
def test_ends_of_the_range_and_special_values(b):
    """x from 2**-63 (the smallest square root of a normal float32) to 2**89, random
    mantissas at every exponent in between, both signs, and zeros, infinities, NaN."""
    rng = np.random.default_rng(1)
    exponents = np.repeat(np.arange(-63, 90), 4096)
    mant = rng.integers(0, 1 << 23, exponents.size, dtype=np.uint32)
    x = ((exponents + 127).astype(np.uint32) << 23 | mant).view(np.float32)
    x = np.concatenate([x, -x, np.array([0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)])
    y = np.float32(1) / b
    got = np.asarray(jax.jit(divide_by)(jnp.asarray(x), jnp.float32(b), jnp.float32(y)))
    want = np.asarray(jax.jit(divide)(jnp.asarray(x), jnp.float32(b)))
    number = ~np.isnan(want)
    assert np.array_equal(bits(got)[number], bits(want)[number])  # signed zeros, infinities
    assert np.isnan(got[~number]).all()
