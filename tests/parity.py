"""Side-by-side runs of a torch reference optimizer and a funcopt transformation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

SHAPES = [(), (7,), (5, 6), (2, 3, 4), (2, 2, 3, 5)]
# bf16 runs use tensors large enough for torch's vectorized kernels (its scalar fallback for
# the last few elements of a tensor rounds bf16 differently, see bf16_close).
BF16_SHAPES = [(), (70,), (50, 60), (2, 30, 40), (2, 2, 30, 50)]


def random_problem(shapes, steps, seed):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(steps)]
    return init, grads


def applying(transformation):
    """``(grads, state, params) -> (new_params, new_state)``: ``update`` followed by
    ``optax.apply_updates``, the step a JAX training loop takes (jit it)."""

    def step(grads, state, params):
        updates, state = transformation.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def run_applying(transformation, params, grads, state=None):
    """``(params, state)`` after one jitted :func:`applying` step per gradient in ``grads``
    (from ``transformation.init(params)`` unless ``state`` is given)."""
    step = jax.jit(applying(transformation))
    state = transformation.init(params) if state is None else state
    for g in grads:
        params, state = step(g, state, params)
    return params, state


def run_fused(opt, params, grads, state=None, donate=True):
    """``(params, state)`` after one jitted ``opt.step`` (a ``funcopt.FusedOptimizer``) per
    gradient in ``grads``, on copies of ``params`` (and ``state``: from ``opt.init`` unless
    given), donated unless ``donate`` is False."""
    step = jax.jit(lambda p, s, g: opt.step(g, s, p), donate_argnums=(0, 1) if donate else ())
    state = opt.init(params) if state is None else jax.tree.map(jnp.copy, state)
    params = jax.tree.map(jnp.copy, params)
    for g in grads:
        params, state = step(params, state, g)
    return params, state


def assert_bitwise(a, b):
    """Two pytrees with the same structure, dtypes, shapes and bits."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def run_side_by_side(torch, ref_cls, ref_kwargs, transformation, shapes=SHAPES, steps=25,
                     dtype="float32", seed=0):
    """Feeds the same gradients to both for ``steps`` steps.

    Returns ``(torch_optimizer, torch_params, funcopt_state, funcopt_params)``.
    """
    tdtype, jdtype = getattr(torch, dtype), jnp.dtype(dtype)
    init, grads = random_problem(shapes, steps, seed)
    tparams = [torch.nn.Parameter(torch.tensor(x).to(tdtype)) for x in init]
    topt = ref_cls(tparams, **ref_kwargs)
    params = [jnp.asarray(x).astype(jdtype) for x in init]
    state = transformation.init(params)

    step = jax.jit(applying(transformation))
    for gs in grads:
        for p, g in zip(tparams, gs, strict=True):
            p.grad = torch.tensor(g).to(tdtype)
        topt.step()
        params, state = step([jnp.asarray(g).astype(jdtype) for g in gs], state, params)
    return topt, tparams, state, params


def as_np(x):
    """float32 NumPy copy of a torch tensor or JAX array."""
    if hasattr(x, "detach"):
        return x.detach().float().numpy()
    return np.asarray(jnp.asarray(x).astype(jnp.float32))


def bf16_close(actual, desired, min_equal=0.95, atol=0.02):
    """bf16 results (lists of leaves): most elements bit-equal, the rest close.

    Exact equality is out of reach: torch's own bf16 kernels round differently in their
    vectorized body and their scalar tail (elements near a thread chunk's end), and funcopt
    matches the vectorized body; a flipped last bit then drifts over the steps.
    """
    actual = np.concatenate([as_np(a).ravel() for a in actual])
    desired = np.concatenate([as_np(d).ravel() for d in desired])
    equal = float(np.mean(actual == desired))
    assert equal >= min_equal, f"only {equal:.3f} of bf16 elements equal the reference"
    np.testing.assert_allclose(actual, desired, rtol=0, atol=atol)


def train_mse(opt, w0, target, steps, dtype=jnp.float32):
    """Minimises mean((w - target)**2) with ``opt`` under jit, as HF's tests and the golden
    runs did; returns ``(trajectory, state)``, the trajectory as float32 NumPy."""
    w = jnp.asarray(w0, jnp.float32).astype(dtype)
    target = jnp.asarray(target, jnp.float32).astype(dtype)
    state = opt.init(w)

    @jax.jit
    def step(w, state):
        g = jax.grad(lambda w: jnp.mean((w - target) ** 2))(w)
        updates, state = opt.update(g, state, w)
        return optax.apply_updates(w, updates), state

    trajectory = []
    for _ in range(steps):
        w, state = step(w, state)
        trajectory.append(np.asarray(w.astype(jnp.float32)))
    return np.array(trajectory), state
