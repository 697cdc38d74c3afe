"""What bitsandbytes' 32-bit optimizers on CPU share (``lion``, ``ademamix``, ``rmsprop_bnb``).

bitsandbytes 0.50.2 runs ``optim_bits=32`` on CPU through plain torch code
(``bitsandbytes/backends/cpu/ops.py::_optimizer_update_32bit_cpu``): the gradient and the
parameter are taken to float32 whatever their dtype, the states are float32, the arithmetic
is torch's in-place ops with Python float64 scalars (each rounded once to float32), and the
result is copied back into the parameter's dtype. Its per-parameter state is
``{"step": int, "state1": float32[, "state2": float32]}``; funcopt's states keep those names
(plus the update ``count`` that drives a schedule) so that converting is field by field.

A rule's ``float32_update(scalars, t, g, p, moments, decays)`` is that float32 arithmetic on
float32 arrays (``t``: the leaf's step, already incremented), returning the new float32
parameter and moments; it is what an 8-bit variant runs between dequantizing and requantizing
(mind that bitsandbytes' 8-bit CPU path writes some formulas differently).

How exact: the states are bitwise equal to bitsandbytes' (given the float32 learning rate it
receives), and so are the parameters except in two cases, each within 2 ulps of the
parameter per step: torch's float32 ``sqrt`` on CPU is MKL's ``vsSqrt`` (``VML_HA``), which
is 1 ulp below the correctly rounded root for about 0.7% of inputs (XLA's is correctly
rounded; AdEMAMix and RMSprop take a root), and a step that carries a parameter across zero
may not be expressible as an additive update (:func:`as_update`).
"""

from __future__ import annotations

import jax.numpy as jnp

from funcopt._numerics import f32, is_static, learning_rate_at

__all__ = ["complement", "lr_scalars", "as_update"]


def complement(b) -> tuple:
    """``(b, 1 - b)`` as the float32 multipliers torch uses: ``1.0 - b`` is computed in float64
    and rounded once when ``b`` is static; a traced ``b`` (``inject_hyperparams``) is already
    float32."""
    if is_static(b):
        return f32(b), f32(1.0 - b)
    b = jnp.asarray(b, f32)
    return b, 1 - b


def lr_scalars(learning_rate, weight_decay, count) -> tuple:
    """``(-lr, 1 - lr * weight_decay)`` in float32 for the update after ``count`` updates.

    bitsandbytes multiplies the parameter by ``1.0 - lr * weight_decay`` computed in float64
    and rounded once; with a schedule (a float32 ``lr``) the product is formed in float32,
    which XLA fuses into one rounding of ``1 - lr * wd``."""
    lr = learning_rate_at(learning_rate, count)
    if is_static(learning_rate) and is_static(weight_decay):
        keep = jnp.asarray(1.0 - learning_rate * weight_decay, f32)
    else:
        keep = 1 - lr * jnp.asarray(weight_decay, f32)
    return -lr, keep


def as_update(new, p):
    """The update that ``optax.apply_updates`` turns into the new parameter.

    ``new`` (float32) is first rounded to ``p``'s dtype, as bitsandbytes' ``p.data.copy_``
    does. For a float32 ``p``, ``new - p`` is exact whenever the step is at most about the
    parameter's size (Sterbenz), so ``p + (new - p)`` gives ``new`` back; a step that carries
    a parameter across zero can land up to 1.5 ulps of the larger of the two away (an
    additive update cannot express every fused result). For a narrower ``p`` (bf16, fp16) the update
    is float32: the difference of two such values is exact in float32, and ``apply_updates``
    adds it in float32 and rounds once to ``p``'s dtype, which gives ``new`` exactly.
    """
    p32 = p.astype(f32)
    u = new.astype(p.dtype).astype(f32) - p32
    return u if jnp.finfo(p.dtype).bits < 32 else u.astype(p.dtype)
