"""``torch.nn.utils.clip_grad_norm_`` as an optax transformation, with torch's CPU arithmetic.

The total norm is the norm of the per-leaf norms, each computed as torch 2.13's CPU kernels
compute it (x86-64, AVX2/AVX512 builds), so the norm and the clipped gradients are bitwise
torch's. On other backends the same formulas run with XLA's own (faster) reduction order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from funcopt import _checks
from funcopt._numerics import f32, is_static, unfused

_LANES = 8  # Vectorized<float>::size() in torch's CPU norm kernel (measured, AVX2 and AVX512)
_EPS = f32(1e-6)  # total_norm + 1e-6: the Python float becomes a float32 scalar operand
_SEQUENTIAL_TYPES = (jnp.dtype(jnp.float16),)  # no vectorized 2-norm kernel in torch
_TYPES = (jnp.dtype(f32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_NONFINITE = (
    "The total norm of order {} for gradients from `parameters` is non-finite, so it cannot "
    "be clipped. To disable this error and scale the gradients by the non-finite norm anyway, "
    "set `error_if_nonfinite=False`"
)


class ClipGradNormState(NamedTuple):
    """State of :func:`clip_grad_norm`.

    Attributes:
      grad_norm: float32 scalar, the total norm of the last gradients before clipping
        (what ``clip_grad_norm_`` returns, and the ``grad_norm`` the Trainer logs); 0 after
        ``init``.

    >>> import jax.numpy as jnp, funcopt
    >>> clip = funcopt.clip_grad_norm(10.0)
    >>> _, state = clip.update({"w": jnp.array([6.0, 8.0])}, clip.init(None))
    >>> float(state.grad_norm)
    10.0
    """

    grad_norm: jax.Array


def _in_order(rows, fn):
    """Column sums of ``fn(rows)`` accumulated row after row, as a loop over memory does."""
    zeros = jnp.zeros(rows.shape[1:], f32)
    acc, _ = lax.scan(lambda a, r: (a + fn(r), None), zeros, rows)
    return acc


def _column_sums(rows, fn):
    """The same sums: in torch's order on CPU, in XLA's faster order elsewhere."""
    return lax.platform_dependent(rows, cpu=lambda r: _in_order(r, fn),
                                  default=lambda r: jnp.sum(fn(r), axis=0))


def _square(x):
    x = x.astype(f32)
    return unfused(x * x)


def _two_sum(x, y):
    """``(s, err)`` with ``s = x + y`` rounded and ``s + err == x + y`` exactly (Knuth)."""
    s = x + y
    y_part = s - x
    return s, (x - (s - y_part)) + (y - y_part)


def _fma_square(a, b):
    """``a*a + b`` rounded once (a fused multiply-add), for ``b >= 0``, without relying on the
    compiler to fuse: ``a*a = p + e`` exactly (Dekker's product on a 12+12-bit split), then
    the exact sum ``b + p + e`` is rounded once, a tie broken by the lowest term."""
    p = unfused(a * a)
    bits = lax.bitcast_convert_type(jnp.abs(a), jnp.uint32)
    hi = lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), f32)
    lo = jnp.abs(a) - hi
    e = ((hi * hi - p) + 2 * hi * lo) + lo * lo  # exact products: fusing them changes nothing
    s, t = _two_sum(b, p)
    u, v = _two_sum(t, e)
    w, r = _two_sum(s, u)  # b + a*a == w + r + v exactly
    neighbor = jnp.nextafter(w, w + r)
    tie = (r != 0) & (neighbor - w == 2 * r) & (v != 0) & (jnp.sign(v) == jnp.sign(r))
    exact = jnp.where(tie, neighbor, w)
    return jnp.where(jnp.isfinite(p + b), exact, p + b)


def _two_norm(x):
    """torch's vectorized 2-norm (``norm_kernel_tensor_iterator_impl``, last-dim path) of
    each row of ``x`` (leaves of one size and dtype, flattened, one per row).

    Eight float32 lanes accumulate ``x*x`` over the loads (16 bf16 elements per load, as two
    halves), the lanes are added left to right, and the remaining elements are added one by
    one: the compiler unrolled that float32 tail by four, the first four products rounded on
    their own, the rest fused into the add (products of bf16 values are exact).
    """
    count, n = x.shape
    per_load = 16 if x.dtype == jnp.bfloat16 else _LANES
    m = n - n % per_load
    rows = jnp.swapaxes(x[:, :m].reshape(count, -1, _LANES), 0, 1)
    lanes = _column_sums(rows, _square)
    total = lanes[:, 0]
    for j in range(1, _LANES):
        total = total + lanes[:, j]
    rounded = 4 * ((n - m) // 4) if x.dtype == f32 else n - m
    for i in range(m, n):
        if i - m < rounded:
            total = _square(x[:, i]) + total
        else:
            total = _fma_square(x[:, i].astype(f32), total)
    return jnp.sqrt(total).astype(x.dtype)


def _sequential_norm(x, p):
    """Order ``p`` norms of the rows by torch's scalar reduction (``binary_kernel_reduce``):
    a float32 accumulator, in index order."""
    columns = x.T
    if is_static(p) and p == 1.0:
        return _column_sums(columns, lambda c: jnp.abs(c.astype(f32))).astype(x.dtype)
    if is_static(p) and p == 2.0:
        return jnp.sqrt(_column_sums(columns, _square)).astype(x.dtype)
    p = jnp.asarray(p, f32)
    acc = _column_sums(columns, lambda c: jnp.power(jnp.abs(c.astype(f32)), p))
    return jnp.power(acc, 1 / p).astype(x.dtype)


def _count_norm(x):
    """Order 0: the count of nonzero elements, in a float32 accumulator (stops at 2**24)."""
    count = jnp.sum(x != 0, axis=1, dtype=jnp.int32)
    return jnp.minimum(count, 2**24).astype(f32).astype(x.dtype)


def _norms(x, p):
    """torch.linalg.vector_norm(row, p) on CPU for each row of ``x``, in x's dtype; ``p``
    static or traced."""
    if x.shape[1] == 0:  # torch has no value for the orders without an identity
        if is_static(p) and (p < 0 or p == math.inf):
            raise ValueError(f"clip_grad_norm: the {p} norm of an empty gradient leaf is "
                             "undefined; torch raises here too.")
        return jnp.full(x.shape[:1], jnp.where((p < 0) | (p == math.inf), jnp.nan, 0.0), x.dtype)
    if x.shape[1] == 1:  # every reduced dim has size 1: torch returns abs(x) (ne(x, 0) for p=0)
        return jnp.where(p == 0, (x[:, 0] != 0).astype(x.dtype), jnp.abs(x[:, 0]))
    if not is_static(p):
        return _traced_norms(x, p)
    if p == 2.0 and x.dtype not in _SEQUENTIAL_TYPES:
        return _two_norm(x)
    if p == math.inf:
        return jnp.max(jnp.abs(x), axis=1)
    if p == -math.inf:
        return jnp.min(jnp.abs(x), axis=1)
    if p == 0:
        return _count_norm(x)
    return _sequential_norm(x, p)


def _traced_norms(x, p):
    """The same for an order known only at run time (``optax.inject_hyperparams``): the
    special orders' kernels, or the general one, chosen when the step runs."""
    special = (2.0, math.inf, -math.inf, 0.0, 1.0)
    branches = [lambda x, p, q=q: _norms(x, q) for q in special]
    branches.append(_sequential_norm)
    p = jnp.asarray(p, f32)
    index = len(special)
    for i, q in enumerate(special):
        index = jnp.where(p == q, i, index)
    return lax.switch(index, branches, x, p)


def _leaf_norms(leaves, p):
    """The norms of ``leaves`` (all of one dtype) as a vector, in order; leaves of equal size
    are computed together, as the rows of one matrix (one loop per distinct size)."""
    by_size = {}
    for i, g in enumerate(leaves):
        by_size.setdefault(g.size, []).append(i)
    parts = [_norms(jnp.stack([leaves[i].reshape(-1) for i in group]), p)
             for group in by_size.values()]
    position = [i for group in by_size.values() for i in group]
    order = sorted(range(len(position)), key=position.__getitem__)
    return jnp.concatenate(parts)[jnp.array(order)] if len(parts) > 1 else parts[0]


def _norm_type(norm_type):
    """torch's ``float(norm_type)`` (which takes ``'inf'``), checked; tracers pass through."""
    if isinstance(norm_type, str):
        try:
            norm_type = float(norm_type)
        except ValueError:
            raise ValueError(f"norm_type={norm_type!r} is invalid: it must be a number or "
                             "'inf'.") from None
    _checks.number("norm_type", norm_type, allowed="a number (not NaN), or 'inf'")
    value = _checks.concrete(norm_type)
    return norm_type if value is None else value


def _torch_group_order(first_seen):
    """The order torch's foreach grouping (a C++ ``unordered_map``) yields the dtypes in,
    given their order of first appearance: measured on torch 2.13 for every permutation."""
    if len(first_seen) < 3:
        return first_seen[::-1]
    name = {jnp.dtype(f32): "f", jnp.dtype(jnp.bfloat16): "b", jnp.dtype(jnp.float16): "h"}
    order = {"fbh": "hbf", "fhb": "hbf", "bfh": "hfb", "bhf": "hfb", "hfb": "bfh", "hbf": "fbh"}
    by_name = {name[d]: d for d in first_seen}
    return [by_name[c] for c in order["".join(name[d] for d in first_seen)]]


def get_total_norm(grads, norm_type=2.0):
    """The norm of the norms of ``grads``' leaves: ``torch.nn.utils.get_total_norm``.

    Each leaf's norm is taken as torch takes it on CPU, in the leaf's dtype (bf16 norms of bf16
    leaves); the leaf norms are stacked grouped by dtype, in the order torch's foreach grouping
    gives (only mixed dtypes are reordered), promoted to a common dtype, and normed again. With no
    leaves the total is 0.0 (float32).

    >>> import jax.numpy as jnp, funcopt
    >>> float(funcopt.get_total_norm({"a": jnp.array([3.0]), "b": jnp.array([0.0, 4.0])}))
    5.0
    """
    p = _norm_type(norm_type)
    leaves = jax.tree.leaves(grads)
    if not leaves:
        return jnp.zeros([], f32)
    groups = {}
    for g in leaves:
        g = jnp.asarray(g)
        if g.dtype not in _TYPES:
            raise TypeError(f"clip_grad_norm: a gradient leaf has dtype {g.dtype}; supported "
                            "are float32, bfloat16 and float16.")
        groups.setdefault(g.dtype, []).append(g)
    norms = [_leaf_norms(groups[dtype], p) for dtype in _torch_group_order(list(groups))]
    dtype = jnp.result_type(*norms)
    return _norms(jnp.concatenate([n.astype(dtype) for n in norms])[None], p)[0]


def _coefficient(total, max_norm):
    """``clamp(max_norm / (total + 1e-6), max=1)`` in the total's dtype, as torch evaluates it:
    ``number / tensor`` is ``tensor.reciprocal() * number``, each op rounded on its own."""
    dtype = total.dtype
    denominator = (total.astype(f32) + _EPS).astype(dtype).astype(f32)
    reciprocal = unfused(1 / denominator).astype(dtype).astype(f32)
    coef = (reciprocal * jnp.asarray(max_norm, f32)).astype(dtype)
    return jnp.minimum(coef, jnp.asarray(1.0, dtype))  # NaN stays NaN, like torch.clamp


def _check_finite(total, norm_type):
    """torch's ``error_if_nonfinite=True``: raise now (eager), or when the step runs (jit)."""
    message = _NONFINITE.format(float(norm_type) if is_static(norm_type) else "norm_type")

    def check(finite):
        if not bool(finite):
            raise RuntimeError(message)

    finite = jnp.isfinite(total)
    if isinstance(finite, jax.core.Tracer):
        jax.debug.callback(check, finite)
    else:
        check(finite)


def clip_grad_norm(max_norm, norm_type=2.0, error_if_nonfinite=False):
    r"""Scales the gradients as ``torch.nn.utils.clip_grad_norm_`` does (torch 2.13, CPU).

    .. math::
        n = \big\|(\|g_1\|_p, \dots, \|g_L\|_p)\big\|_p, \qquad
        g_i \leftarrow g_i \cdot \min\Big(\frac{\text{max\_norm}}{n + 10^{-6}}, 1\Big)

    The coefficient is always multiplied in, also when it is 1: ``max_norm=inf`` (what the
    Trainer clips with when ``max_grad_norm=0``, only to log the norm) and a zero gradient
    multiply by 1.0. Rounding is torch's: the leaf norms by its CPU kernels
    (:func:`get_total_norm`), then ``n + 1e-6``, ``1 / that`` and ``* max_norm`` each rounded
    in the norm's dtype (bfloat16 when every gradient is bf16), then each leaf's product
    rounded to its dtype. ``norm_type`` is any order torch takes: ``2``, ``inf``, ``-inf``,
    ``1``, another real ``p``, or ``0`` (each leaf's norm is then its count of nonzeros, and
    the total, by the same rule, the count of leaves that have one).

    Exactness (``tests/test_clipping.py``, against torch 2.13 on x86-64; other CPUs not
    measured): bitwise for orders 2, inf, -inf and 0 on float32 and bfloat16 gradients, mixed
    dtypes included. Orders 1 and ``p``, and the 2-norm of float16, use torch's scalar
    reduction, which torch splits across its intra-op threads for a leaf of 32768 elements
    or more: bitwise below that size (or with ``torch.set_num_threads(1)``), float32
    round-off above it; orders such as 3 go through ``powf``, whose last bit XLA's ``pow``
    does not always share (measured: 2.4e-7 relative at most). XLA:CPU flushes subnormals,
    so a total norm below about 1e-15 can differ. Non-finite norms follow torch: a NaN norm
    makes every gradient NaN; an infinite one scales by 0 (by NaN when ``max_norm=inf``). On
    GPU/TPU the sums use XLA's reduction order (float32 round-off; torch's CUDA kernels have
    their own order too). The state's ``grad_norm`` is the norm before clipping, as float32.
    Chain it first, as the Trainer clips before it steps:
    ``optax.chain(funcopt.clip_grad_norm(1.0), optimizer)``.

    Args:
      max_norm: largest total norm kept (``>= 0``, may be ``inf``).
      norm_type: the order ``p`` (a number, or ``'inf'``).
      error_if_nonfinite: torch raises ``RuntimeError`` when the total norm is NaN or
        infinite. Here that happens at once when ``update`` runs eagerly; under ``jit`` a
        callback raises it when the step executes, and it reaches the caller as a
        ``jax.errors.JaxRuntimeError`` carrying torch's message (on accelerators, at the next
        synchronization). Use ``False`` and read ``state.grad_norm`` to skip steps instead.

    >>> import jax.numpy as jnp, funcopt
    >>> clip = funcopt.clip_grad_norm(1.0)
    >>> grads = {"w": jnp.array([3.0, 4.0])}
    >>> clipped, state = clip.update(grads, clip.init(grads))
    >>> float(state.grad_norm), clipped["w"].tolist()
    (5.0, [0.5999999046325684, 0.7999998331069946])
    """
    _checks.number("max_norm", max_norm, low=0.0, allowed=">= 0 (inf allowed)")
    p = _norm_type(norm_type)
    if not isinstance(error_if_nonfinite, bool):
        raise TypeError(f"error_if_nonfinite must be a bool, got {error_if_nonfinite!r}.")

    def init_fn(params):
        del params
        return ClipGradNormState(grad_norm=jnp.zeros([], f32))

    def update_fn(updates, state, params=None):
        del state, params
        total = get_total_norm(updates, p)
        if error_if_nonfinite:
            _check_finite(total, p)
        coef = _coefficient(total, max_norm)
        scaled = jax.tree.map(lambda g: _scale(g, coef), updates)
        return scaled, ClipGradNormState(grad_norm=total.astype(f32))

    return optax.GradientTransformation(init_fn, update_fn)


def _scale(g, coef):
    """``g.mul_(coef)``: the product in float32, rounded to the gradient's dtype."""
    g = jnp.asarray(g)
    return (g.astype(f32) * coef.astype(f32)).astype(g.dtype)
