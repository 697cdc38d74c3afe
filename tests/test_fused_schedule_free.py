"""funcopt.fused_schedule_free_adamw: bitwise funcopt.schedule_free_adamw + optax.apply_updates,
through the schedule_free C++ kernel's FFI handler.

Where a C++ compiler exists (``funcopt._kernels.compiler()``) the tests require that the
kernel was built, passed its check and is in the compiled step, so a build failure cannot pass
as the XLA fallback. The expected values are the jitted XLA path's (``schedule_free_adamw``'s
update + ``apply_updates``), whose parity with schedulefree itself is tested elsewhere.
"""

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import parity
import pytest
from parity import applying, assert_bitwise, run_applying

import funcopt
from funcopt import _core, _fused_schedule_free, _kernels

HAS_COMPILER = _kernels.compiler() is not None
KERNEL = 'custom_call_target="funcopt_FuncoptScheduleFreeF32"'
STEPS = 25

# 0-D to 4-D; an empty leaf; small leaves (10-63 elements, where XLA:CPU has rounded other
# schedule-free expressions unfused); a leaf of two kernel blocks (> 65536 elements).
SHAPES = {"scalar": (), "empty": (0, 3), "vec": (7,), "small": (13,), "mid": (40,),
          "mat": (5, 6), "big": (300, 230), "cube": (2, 3, 4), "quad": (2, 3, 2, 2)}

CONFIGS = [
    dict(learning_rate=2.5e-3),
    dict(learning_rate=1e-2, weight_decay=0.1, warmup_steps=5),
    dict(learning_rate=1e-2, weight_decay=0.05, warmup_steps=0.5,
         mask=lambda p: {k: k not in ("vec", "small", "bf16_vec") for k in p}),
    dict(learning_rate=funcopt.get_cosine_schedule_with_warmup(1e-2, 3, 30), b1=0.95,
         b2=0.99, eps=0.0, weight_decay=0.1),
    # A schedule that starts at 0: weight_sum stays 0 (ckp1 = 0) for the first step.
    dict(learning_rate=funcopt.get_linear_schedule_with_warmup(1e-2, 4, 30), r=1.0,
         weight_lr_power=0.5, b1=1.0),
    dict(learning_rate=5e-3, r=0.5, weight_lr_power=3.0, weight_decay=0.01, b2=0.9),
    dict(learning_rate=5e-3, r=-0.3, weight_lr_power=1.7, eps=1e-6),  # float32 powers
]


def make_problem(seed=0, steps=STEPS, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    dtype = lambda name: jnp.bfloat16 if name.startswith("bf16") else jnp.float32
    draw = lambda name, s, k: jnp.asarray(rng.standard_normal(s) * k, dtype(name))
    params = {n: draw(n, s, 1.0) for n, s in shapes.items()}
    grads = [{n: draw(n, s, 0.1) for n, s in shapes.items()} for _ in range(steps)]
    return params, grads


def run_plain(kwargs, params, grads, state=None):
    return run_applying(funcopt.schedule_free_adamw(**kwargs), params, grads, state)


def fused_step(kwargs, donate=True):
    opt = funcopt.fused_schedule_free_adamw(**kwargs)
    return opt, jax.jit(lambda p, s, g: opt.step(g, s, p),
                        donate_argnums=(0, 1) if donate else ())


def run_fused(kwargs, params, grads, state=None, donate=True):
    return parity.run_fused(funcopt.fused_schedule_free_adamw(**kwargs), params, grads, state,
                            donate)


@pytest.fixture(scope="module", autouse=True)
def kernel_built():
    """Where a C++ compiler exists, the kernel must build and pass its check."""
    if HAS_COMPILER:
        assert _fused_schedule_free.kernel_available()


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_bitwise_equal_to_schedule_free_adamw_and_apply_updates(kwargs):
    params, grads = make_problem()
    ours = run_fused(kwargs, params, grads)
    assert isinstance(ours[1], funcopt.ScheduleFreeState)
    assert_bitwise(ours, run_plain(kwargs, params, grads))


def test_without_donation_the_same_numbers():
    params, grads = make_problem(seed=3, steps=4)
    kwargs = CONFIGS[1]
    assert_bitwise(run_fused(kwargs, params, grads, donate=False),
                   run_plain(kwargs, params, grads))


def test_subnormal_and_tiny_values_round_like_xla():
    """XLA flushes subnormals to zero under jit; the kernel's threads do the same."""
    params, grads = make_problem(seed=1, steps=6)
    params = jax.tree.map(lambda p: p * 1e-37, params)
    grads = [jax.tree.map(lambda g: g * 1e-36, g) for g in grads]
    kwargs = dict(learning_rate=1e-3, weight_decay=0.5, eps=1e-40, warmup_steps=2)
    assert_bitwise(run_fused(kwargs, params, grads), run_plain(kwargs, params, grads))


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: every path is XLA's")
def test_compiled_step_calls_the_kernel_once_in_place():
    params, grads = make_problem(steps=1)
    opt, step = fused_step(dict(weight_decay=0.1))
    compiled = step.lower(params, opt.init(params), grads[0]).compile()
    assert compiled.as_text().count(KERNEL) == 1
    memory = compiled.memory_analysis()
    # y, z and v are written into their donated inputs: only the group's scalars (a few
    # bytes each) land elsewhere, and no scratch the size of a leaf is needed.
    assert memory.output_size_in_bytes - memory.alias_size_in_bytes < 1024
    assert memory.temp_size_in_bytes < 4096


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: every path is XLA's")
def test_bf16_leaves_take_the_xla_path_with_the_same_numbers():
    shapes = {"vec": (7,), "big": (300, 230), "bf16_vec": (9,), "bf16_mat": (4, 5)}
    params, grads = make_problem(seed=2, shapes=shapes)
    kwargs = CONFIGS[2]
    assert_bitwise(run_fused(kwargs, params, grads), run_plain(kwargs, params, grads))
    opt, step = fused_step(kwargs)
    hlo = step.lower(params, opt.init(params), grads[0]).compile().as_text()
    assert hlo.count(KERNEL) == 1  # the float32 leaves still take the kernel
    bf16 = {k: v for k, v in params.items() if k.startswith("bf16")}
    hlo = step.lower(bf16, opt.init(bf16), {k: grads[0][k] for k in bf16}).compile().as_text()
    assert KERNEL not in hlo


def test_state_is_interchangeable_with_schedule_free_adamw_mid_run():
    params, grads = make_problem(seed=4, steps=30)
    kwargs = dict(learning_rate=1e-2, weight_decay=0.1, warmup_steps=4)
    p, s = run_plain(kwargs, params, grads[:10])
    p, s = run_fused(kwargs, p, grads[10:20], state=s)
    p, s = run_plain(kwargs, p, grads[20:], state=s)
    assert_bitwise((p, s), run_plain(kwargs, params, grads))


def test_vmap_and_scan():
    params, grads = make_problem(seed=5, steps=4, shapes={"vec": (7,), "mat": (5, 6)})
    kwargs = dict(learning_rate=1e-2, weight_decay=0.1)
    opt, tx = funcopt.fused_schedule_free_adamw(**kwargs), funcopt.schedule_free_adamw(**kwargs)
    batch = lambda t, k: jax.tree.map(lambda x: jnp.stack([x, x * k]), t)
    p, g = batch(params, 2.0), batch(grads[0], -1.0)
    ours = jax.jit(jax.vmap(opt.step))(g, jax.vmap(opt.init)(p), p)
    assert_bitwise(ours, jax.jit(jax.vmap(applying(tx)))(g, jax.vmap(tx.init)(p), p))
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *grads)

    def scan(step, init):
        body = lambda carry, g: (step(g, carry[1], carry[0]), None)
        return jax.jit(lambda p: jax.lax.scan(body, (p, init(p)), stacked)[0])(params)

    assert_bitwise(scan(opt.step, opt.init), scan(applying(tx), tx.init))


def test_construction_errors_are_schedule_free_adamw_s():
    with pytest.raises(ValueError, match="b1"):
        funcopt.fused_schedule_free_adamw(b1=0.0)
    with pytest.raises(ValueError, match="b2"):
        funcopt.fused_schedule_free_adamw(b2=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        funcopt.fused_schedule_free_adamw(warmup_steps=-1)
    with pytest.raises(ValueError, match="weight_lr_power"):
        funcopt.fused_schedule_free_adamw(weight_lr_power=-1.0)
    opt = funcopt.fused_schedule_free_adamw()
    with pytest.raises(ValueError, match="needs the parameters"):
        opt.step({"w": jnp.zeros(2)}, opt.init({"w": jnp.zeros(2)}), None)


RUN = textwrap.dedent("""
    import sys, warnings, jax, jax.numpy as jnp, numpy as np, funcopt

    def run():
        \"\"\"Five fused steps: (the leaves of params and state, the path compiled).\"\"\"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt = funcopt.fused_schedule_free_adamw(1e-2, weight_decay=0.1, warmup_steps=3)
            p = {"w": jnp.linspace(-1, 1, 70000, dtype=jnp.float32).reshape(700, 100),
                 "b": jnp.linspace(-1, 1, 13, dtype=jnp.float32)}
            step = jax.jit(lambda p, s, g: opt.step(g, s, p))
            s = opt.init(p)
            hlo = step.lower(p, s, p).compile().as_text()
            for k in range(5):
                p, s = step(p, s, jax.tree.map(lambda x: jnp.sin(x * (k + 1)) * 0.1, p))
        path = "kernel" if "FuncoptScheduleFree" in hlo else "xla"
        return [np.asarray(x) for x in jax.tree.leaves((p, s))], path
""")


def test_disabled_kernels_take_the_xla_path_with_the_same_numbers(tmp_path):
    env = {**os.environ, "FUNCOPT_DISABLE_KERNELS": "1",
           "FUNCOPT_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "xla.npz"
    main = "leaves, path = run(); np.savez(sys.argv[1], *leaves); print(path)"
    result = subprocess.run([sys.executable, "-c", RUN + main, str(out)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["xla"]
    namespace = {}
    exec(RUN, namespace)
    ours, path = namespace["run"]()
    assert path == ("kernel" if HAS_COMPILER else "xla")
    theirs = np.load(out)
    assert len(ours) == len(theirs.files) > 4
    for a, name in zip(ours, theirs.files, strict=True):
        np.testing.assert_array_equal(a, theirs[name])


SHARDED = textwrap.dedent("""
    import functools
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np, optax, funcopt
    from jax.sharding import NamedSharding, PartitionSpec as P
    kw = dict(learning_rate=1e-2, weight_decay=0.1, warmup_steps=2)
    opt, tx = funcopt.fused_schedule_free_adamw(**kw), funcopt.schedule_free_adamw(**kw)
    w = jnp.linspace(-1, 1, 8 * 6, dtype=jnp.float32).reshape(8, 6)
    for axis_type in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
        mesh = jax.make_mesh((8,), ("x",), axis_types=(axis_type,))
        with jax.set_mesh(mesh):
            p = {"w": jax.device_put(w, NamedSharding(mesh, P("x")))}
            g = jax.tree.map(lambda x: x[::-1] * 0.1, p)
            step = jax.jit(lambda p, s: opt.step(g, s, p))
            s = jax.jit(opt.init)(p)
            hlo = step.lower(p, s).compile().as_text()
            a, _ = step(p, s)
            b = jax.jit(lambda p, s: optax.apply_updates(p, tx.update(g, s, p)[0]))(p, s)
            print(axis_type.name, funcopt._fused_schedule_free.kernel_available(),
                  "all-gather" in hlo, "FuncoptScheduleFree" in hlo,
                  a["w"].sharding.is_equivalent_to(p["w"].sharding, 2),
                  bool((np.asarray(a["w"]) == np.asarray(b["w"])).all()))
""")


@pytest.mark.skipif(not HAS_COMPILER, reason="without the kernel every path is XLA's")
def test_sharded_parameters_take_the_partitionable_xla_path():
    """The kernel is built (so its absence from the compiled step means something), yet a
    sharded step does not call it: no all-gather, the sharding kept, the plain step's bits."""
    result = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split("\n")
    assert lines[:2] == ["Explicit True False False True True", "Auto True False False True True"]


@pytest.mark.skipif(not HAS_COMPILER, reason="needs a C++ compiler")
def test_a_kernel_that_rounds_differently_is_refused(tmp_path, monkeypatch):
    """The check run before the kernel is first used has teeth: a variant that rounds y's
    step product before adding it to the lerp (an ulp apart, now and then) is refused."""
    source = (Path(_kernels.__file__).parent / "schedule_free.cc").read_text()
    fused = "std::fma(d, c.alpha, lerp)"
    assert fused in source
    (tmp_path / "sf_unfused.cc").write_text(source.replace(fused, "(d * c.alpha + lerp)"))
    monkeypatch.setenv("FUNCOPT_CACHE_DIR", str(tmp_path / "cache"))
    library = _kernels.load(tmp_path / "sf_unfused.cc")
    jax.ffi.register_ffi_target("funcopt_test_sf_unfused",
                                jax.ffi.pycapsule(library.FuncoptScheduleFreeF32), platform="cpu")
    with pytest.warns(RuntimeWarning, match="does not round like XLA") as caught:
        assert not _fused_schedule_free._same_as_xla("funcopt_test_sf_unfused")
    assert "fused_schedule_free_adamw" in str(caught[0].message)
    assert _fused_schedule_free._same_as_xla(_fused_schedule_free._target())



@pytest.mark.skipif(not HAS_COMPILER, reason="needs a C++ compiler")
def test_the_handler_steps_sgd_leaves_too():
    """The handler also takes leaves without exp_avg_sq (schedule_free_sgd's: operands
    (y, g, z), results (y', z')); bitwise the XLA path with and without decay, on leaves of
    64 elements and more (on smaller ones XLA:CPU may round y's decayed step unfused:
    ``funcopt._schedule_free_kernel``'s docstring)."""
    shapes = {"scalar": (), "vec": (64,), "big": (300, 230), "quad": (2, 4, 2, 4)}
    params, grads = make_problem(seed=6, steps=STEPS, shapes=shapes)
    target = _fused_schedule_free._target()
    for kwargs in (dict(learning_rate=0.5, warmup_steps=3),
                   dict(learning_rate=0.5, weight_decay=0.1, r=1.0,
                        mask=lambda p: {k: k != "scalar" for k in p})):
        rule = _core.rule_of(funcopt.schedule_free_sgd(**kwargs))
        step = jax.jit(functools.partial(_fused_schedule_free._kernel_step, target, rule))
        lowered = step.lower(grads[0], _core.init(rule, params), params).as_text()
        assert "funcopt_FuncoptScheduleFreeF32" in lowered
        ours = (params, _core.init(rule, params))
        for g in grads:
            ours = step(g, ours[1], ours[0])
        assert ours[1].exp_avg_sq is None
        assert_bitwise(ours, run_applying(funcopt.schedule_free_sgd(**kwargs), params, grads))
