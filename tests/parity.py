"""Side-by-side runs of a torch reference optimizer and a funcopt transformation, and the
checks the fused-kernel tests share."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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


# -- checks shared by the fused-kernel tests (funcopt.fused_*) -------------------------------

SHARDED = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=DEVICES"
import jax, jax.numpy as jnp, numpy as np, optax, funcopt
from jax.sharding import NamedSharding, PartitionSpec as P
kw = dict(KWARGS)
opt, tx = funcopt.FUSED(**kw), funcopt.PLAIN(**kw)
w = jnp.linspace(-1, 1, 8 * 6, dtype=jnp.float32).reshape(8, 6)
for axis_type in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
    mesh = jax.make_mesh((DEVICES,), ("x",), axis_types=(axis_type,))
    with jax.set_mesh(mesh):
        p = {"w": jax.device_put(w, NamedSharding(mesh, P("x")))}
        g = jax.tree.map(lambda x: x[::-1] * 0.1, p)
        step = jax.jit(lambda p, s: opt.step(g, s, p))
        s = jax.jit(opt.init)(p)
        hlo = step.lower(p, s).compile().as_text()
        a, _ = step(p, s)
        b = jax.jit(lambda p, s: optax.apply_updates(p, tx.update(g, s, p)[0]))(p, s)
        print(axis_type.name, funcopt.MODULE.kernel_available(), "all-gather" in hlo,
              "MARKER" in hlo, a["w"].sharding.is_equivalent_to(p["w"].sharding, 2),
              bool((np.asarray(a["w"]) == np.asarray(b["w"])).all()))
"""


def assert_sharded_takes_xla(fused, plain, kwargs, module, marker, devices=8):
    """In a process with ``devices`` CPU devices, ``funcopt.<fused>(<kwargs>)``'s step on a
    parameter sharded over all of them (explicit and auto axes, under ``jax.set_mesh``)
    takes the XLA path (no ``marker`` in the compiled step, though
    ``funcopt.<module>.kernel_available()``), gathers nothing, keeps the sharding and gives
    ``funcopt.<plain>``'s bits."""
    script = SHARDED
    for word, value in (("DEVICES", devices), ("KWARGS", kwargs), ("FUSED", fused),
                        ("PLAIN", plain), ("MODULE", module), ("MARKER", marker)):
        script = script.replace(word, str(value))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split("\n")
    assert lines[:2] == ["Explicit True False False True True", "Auto True False False True True"]


FIVE_STEPS = """
import sys, warnings, jax, jax.numpy as jnp, numpy as np, funcopt

def run():
    \"\"\"Five fused steps: (the leaves of params and state, the path compiled).\"\"\"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = funcopt.MAKE
        p = {"w": jnp.linspace(-1, 1, 70000, dtype=jnp.float32).reshape(700, 100),
             "b": jnp.linspace(-1, 1, 13, dtype=jnp.float32)}
        step = jax.jit(lambda p, s, g: opt.step(g, s, p))
        s = opt.init(p)
        hlo = step.lower(p, s, p).compile().as_text()
        for k in range(5):
            p, s = step(p, s, jax.tree.map(lambda x: jnp.sin(x * (k + 1)) * 0.1, p))
    path = "kernel" if "MARKER" in hlo else "xla"
    return [np.asarray(x) for x in jax.tree.leaves((p, s))], path
"""


def assert_disabled_kernels_same(tmp_path, make, marker, has_compiler):
    """Five steps of ``funcopt.<make>`` (a call) on a two-block leaf and a small one: with
    ``FUNCOPT_DISABLE_KERNELS=1`` (another process) the XLA path, here the kernel where a
    compiler exists (``marker`` in the compiled step), the same bits."""
    script = FIVE_STEPS.replace("MAKE", make).replace("MARKER", marker)
    env = {**os.environ, "FUNCOPT_DISABLE_KERNELS": "1",
           "FUNCOPT_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "xla.npz"
    main = "leaves, path = run(); np.savez(sys.argv[1], *leaves); print(path)"
    result = subprocess.run([sys.executable, "-c", script + main, str(out)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["xla"]
    namespace = {}
    exec(script, namespace)
    ours, path = namespace["run"]()
    assert path == ("kernel" if has_compiler else "xla")
    theirs = np.load(out)
    assert len(ours) == len(theirs.files) > 4
    for a, name in zip(ours, theirs.files, strict=True):
        np.testing.assert_array_equal(a, theirs[name])


def assert_variant_refused(tmp_path, monkeypatch, kernel, symbol, fused, variant, module,
                           what):
    """Kernel ``kernel``'s source with ``fused`` replaced by ``variant`` (an ulp apart now and
    then), built and registered: ``module._same_as_xla`` refuses its handler ``symbol`` with
    a warning naming ``what``, and accepts the real one. Returns the variant's library."""
    from funcopt import _kernels

    source = (Path(_kernels.__file__).parent / f"{kernel}.cc").read_text()
    assert fused in source
    (tmp_path / f"{kernel}_variant.cc").write_text(source.replace(fused, variant))
    monkeypatch.setenv("FUNCOPT_CACHE_DIR", str(tmp_path / "cache"))
    library = _kernels.load(tmp_path / f"{kernel}_variant.cc")
    name = f"funcopt_test_{kernel}_{abs(hash(variant))}"
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
    with pytest.warns(RuntimeWarning, match="does not round like XLA") as caught:
        assert not module._same_as_xla(name)
    assert what in str(caught[0].message)
    assert module._same_as_xla(module._target())
    return library


def make_fused_problem(shapes, steps, seed=0):
    """``(params, grads)``: a dict of standard normal leaves of ``shapes`` (``name: shape``;
    bf16 where the name starts with ``bf16``, else float32) and ``steps`` gradient dicts
    (scale 0.1)."""
    rng = np.random.default_rng(seed)
    dtype = lambda name: jnp.bfloat16 if name.startswith("bf16") else jnp.float32
    draw = lambda name, s, k: jnp.asarray(rng.standard_normal(s) * k, dtype(name))
    params = {n: draw(n, s, 1.0) for n, s in shapes.items()}
    grads = [{n: draw(n, s, 0.1) for n, s in shapes.items()} for _ in range(steps)]
    return params, grads


def assert_in_place(compiled):
    """A compiled, donated fused step writes its leaves into their inputs: only counters and
    scalars (a few bytes each) land elsewhere, and no scratch the size of a leaf is needed."""
    memory = compiled.memory_analysis()
    assert memory.output_size_in_bytes - memory.alias_size_in_bytes < 1024
    assert memory.temp_size_in_bytes < 4096


def assert_vmap_and_scan(opt, tx, params, grads):
    """``opt`` (a ``funcopt.FusedOptimizer``) under ``vmap`` (a batch of two problems) and in
    ``lax.scan`` (over ``grads``) gives the bits of ``tx``'s update + ``apply_updates``."""
    batch = lambda t, k: jax.tree.map(lambda x: jnp.stack([x, x * k]), t)
    p, g = batch(params, 2.0), batch(grads[0], -1.0)
    ours = jax.jit(jax.vmap(opt.step))(g, jax.vmap(opt.init)(p), p)
    assert_bitwise(ours, jax.jit(jax.vmap(applying(tx)))(g, jax.vmap(tx.init)(p), p))
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *grads)

    def scan(step, init):
        body = lambda carry, g: (step(g, carry[1], carry[0]), None)
        return jax.jit(lambda p: jax.lax.scan(body, (p, init(p)), stacked)[0])(params)

    assert_bitwise(scan(opt.step, opt.init), scan(applying(tx), tx.init))


def assert_interchangeable(opt, tx, params, grads):
    """A third of ``grads`` through ``tx`` (update + ``apply_updates``), a third through
    ``opt`` (a ``funcopt.FusedOptimizer`` with the same state), the rest through ``tx``: the
    bits of ``tx`` all along."""
    a, b = len(grads) // 3, 2 * len(grads) // 3
    p, s = run_applying(tx, params, grads[:a])
    p, s = run_fused(opt, p, grads[a:b], state=s)
    p, s = run_applying(tx, p, grads[b:], state=s)
    assert_bitwise((p, s), run_applying(tx, params, grads))
