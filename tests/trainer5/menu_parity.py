"""Side-by-side runs of a reference torch optimizer (with param groups) and a funcopt
transformation, with the reference's own float32-vs-float64 noise beside each figure."""

import jax
import jax.numpy as jnp
import numpy as np
from parity import applying, as_np


def problem(shapes, steps, seed, scale=1.0):
    """Initial params and per-step gradients (float32 NumPy)."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[(scale * rng.standard_normal(s)).astype(np.float32) for s in shapes]
             for _ in range(steps)]
    return init, grads


def run_reference(torch, make, init, grads, dtype="float32"):
    """``make(params) -> optimizer`` stepped on ``grads``; returns ``(optimizer, params)``."""
    tdtype = getattr(torch, dtype)
    params = [torch.nn.Parameter(torch.tensor(x).to(tdtype)) for x in init]
    opt = make(params)
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = torch.tensor(g).to(tdtype)
        opt.step()
    return opt, params


def run_funcopt(transformation, init, grads, dtype="float32", scan=False):
    """The transformation under jit (or one ``lax.scan`` over all steps)."""
    jdtype = jnp.dtype(dtype)
    params = [jnp.asarray(x).astype(jdtype) for x in init]
    state = transformation.init(params)
    step = applying(transformation)
    if scan:
        stacked = [jnp.stack([jnp.asarray(gs[i]).astype(jdtype) for gs in grads])
                   for i in range(len(init))]

        def body(carry, gs):
            return step(gs, carry[1], carry[0]), None

        (params, state), _ = jax.jit(lambda c, xs: jax.lax.scan(body, c, xs))(
            (params, state), stacked)
        return state, params
    step = jax.jit(step)
    for gs in grads:
        params, state = step([jnp.asarray(g).astype(jdtype) for g in gs], state, params)
    return state, params


def rel(a, b) -> float:
    """max |a - b| / max |b| (0 when both are all zero)."""
    a, b = as_np(a).astype(np.float64), as_np(b).astype(np.float64)
    scale = np.max(np.abs(b)) if b.size else 0.0
    diff = np.max(np.abs(a - b)) if b.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def worst(pairs) -> float:
    return max(rel(a, b) for a, b in pairs)


def bitwise(pairs) -> bool:
    return all(np.array_equal(as_np(a), as_np(b)) for a, b in pairs)


def report(label, dev, noise=None, exact=None, dtype="float32"):
    """Prints one figure, the reference's own ``dtype``-vs-float64 noise beside it."""
    extra = "" if exact is None else f"  bitwise={exact}"
    beside = "" if noise is None else f"  (reference {dtype} vs float64: {noise:.2e})"
    print(f"{label}: worst relative deviation {dev:.2e}{beside}{extra}")
