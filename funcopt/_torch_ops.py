"""torch's CPU elementwise kernels, op by op, rounding where they round.

``torch.optim``'s for-loop path is a chain of in-place tensor ops (``mul_``, ``add_``,
``lerp_``, ``addcmul_``, ``addcdiv_``, ``sqrt``, ...), each its own kernel that ends in the
tensor's dtype. :class:`Kernels` replays them on float32 JAX arrays holding the tensor's
values, with the rounding of torch 2.x's vectorized CPU kernels (the body of every tensor but
its last few elements):

* ``x.mul_(s)`` rounds ``s * x``; a Python scalar ``s`` is float64, rounded once to float32;
* ``x.add_(y, alpha=a)`` is one fused multiply-add ``fma(a, y, x)``; for bf16 tensors ``a`` is
  first rounded to bf16 (the other kernels take float32 scalars);
* ``x.addcmul_(y, z, value=c)`` is ``fma(c * y, z, x)`` with ``c * y`` rounded;
* ``x.addcdiv_(y, z, value=c)`` is ``x + (c * y) / z``, each step rounded;
* ``x.lerp_(y, w)`` is ``fma(w, y - x, x)`` for ``|w| < 0.5``, else ``fma(w - 1, y - x, y)``;
* bf16 kernels compute in float32 and round to bf16 once, at the end of each op.

XLA contracts ``a * b + c`` into a fused multiply-add under ``jit``; each fused product below
is written that way and each product torch rounds goes through
:func:`funcopt._numerics.unfused`. Under ``jit`` the ops therefore match torch bit for bit.
Not reproduced: torch's scalar tail (its last ``numel % 32`` float32 or ``% 64`` bf16
elements), whose bf16 ``add`` rounds ``a * y`` to bf16 first, and float32 ``Tensor.sqrt``,
which torch's x86 builds hand to MKL's ``vsSqrt`` (not correctly rounded: about 0.7% of its
results are an ulp below the true square root). Here ``sqrt`` is correctly rounded, as in
torch's fused kernels and its bf16 ``sqrt``.

>>> import jax.numpy as jnp
>>> k = Kernels(jnp.bfloat16)
>>> alpha = scalar(-1e-3)  # the float64 Python scalar, rounded once to float32
>>> float(alpha), float(k.round(alpha))  # a bf16 add_(..., alpha=) rounds it to bf16 too
(-0.0010000000474974513, -0.00099945068359375)
>>> k.add(jnp.array([1.0]), jnp.array([-100.0]), alpha)  # fma, then rounded to bf16
Array([1.1015625], dtype=float32)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from funcopt._numerics import divide, f32, is_static, rounder, unfused

__all__ = ["Kernels", "scalar", "complement", "update_to"]


def _known(x) -> bool:
    """A number known before tracing (a Python or NumPy scalar)."""
    return is_static(x) or isinstance(x, np.floating)


def scalar(x):
    """A Python float as torch hands it to a float32 kernel: float64 rounded once to float32;
    a traced value as it is (already float32)."""
    if is_static(x):
        return np.float32(x)
    return jnp.asarray(x, f32)


def complement(b):
    """``1 - b`` as torch forms it: in float64 for a Python float, then rounded once;
    in float32 for a traced value."""
    if is_static(b):
        return np.float32(1.0 - b)
    return 1 - jnp.asarray(b, f32)


@dataclasses.dataclass(frozen=True)
class Kernels:
    """torch's CPU kernels for tensors of ``dtype`` (float32 or bfloat16).

    Every op takes float32 arrays holding values of ``dtype`` (and float32 scalars, see
    :func:`scalar`) and returns the float32 value of torch's ``dtype`` result. A fused kernel
    that computes in float32 and rounds only when it stores is ``Kernels(float32)`` followed
    by one final rounding.
    """

    dtype: Any

    def round(self, x):
        """``x`` rounded to ``dtype`` (a no-op for float32)."""
        return rounder(self.dtype)(x)

    def mul(self, x, s):
        """``x.mul_(s)``."""
        return self.round(unfused(x * s))

    def add(self, x, y, alpha):
        """``x.add_(y, alpha=alpha)``: ``fma(alpha, y, x)``, alpha in ``dtype``."""
        return self.round(self.round(alpha) * y + x)

    def addcmul(self, x, y, z, value):
        """``x.addcmul_(y, z, value=value)``: ``fma(value * y, z, x)``."""
        return self.round(unfused(value * y) * z + x)

    def addcdiv(self, x, y, z, value):
        """``x.addcdiv_(y, z, value=value)``: ``x + (value * y) / z``."""
        return self.round(x + (value * y) / z)

    def lerp(self, x, end, weight):
        """``x.lerp_(end, weight)`` with a scalar weight."""
        diff = end - x
        small = weight * diff + x
        large = (weight - 1) * diff + end
        if _known(weight):
            return self.round(small if abs(float(weight)) < 0.5 else large)
        return self.round(jnp.where(jnp.abs(weight) < 0.5, small, large))

    def sqrt(self, x):
        """``x.sqrt()``, correctly rounded (see the module docstring for float32)."""
        return self.round(jnp.sqrt(x))

    def div_scalar(self, x, s):
        """``x / s`` for a scalar ``s`` (a true division, not a reciprocal product)."""
        return self.round(divide(x, s))

    def add_scalar(self, x, s):
        """``x.add_(s)`` for a scalar ``s``. Adding a known 0 keeps the sum opaque: XLA would
        drop it and then rewrite a division by the result (e.g. by a square root)."""
        if _known(s) and float(s) == 0.0:
            return self.round(unfused(x + s))
        return self.round(x + s)


def update_to(new, p):
    """The float32 update that ``optax.apply_updates`` turns ``p`` into ``new`` with.

    ``new - p``, exact when ``new`` and ``p`` are within a factor 2 of each other (and always
    for bf16 values), so ``p + update`` lands on torch's in-place result. Where a step takes a
    parameter across or near zero (``|new| < |p| / 2``) the difference may need more than
    float32's 24 bits, and the float32 parameter can land an ulp of ``p`` away from torch's:
    no additive update can do better. Kept in float32 for bf16 parameters too, where a bf16
    difference would round.
    """
    return new - p.astype(f32)
