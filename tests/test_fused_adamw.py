"""funcopt.fused_adamw: bitwise funcopt.adamw + optax.apply_updates, through the C++ kernel.

The kernel (funcopt/_kernels/adamw.cc) is built on first use with the machine's C++ compiler.
Where one exists (CI, this machine: ``funcopt._kernels.compiler()``, which honours ``$CXX``)
the tests require that it was built and is in the compiled step, so a build failure cannot pass
as the XLA fallback. The fallback itself runs in subprocesses: kernels disabled, no compiler on
the PATH, and a compiler that hangs. The cache's own safeguards are tested in
``test_kernel_cache.py``.
"""

import functools
import json
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
from funcopt import _fused_adamw, _kernels
from funcopt._kernels import _direct

HAS_COMPILER = _kernels.compiler() is not None  # the compiler the kernel would use
W0, TARGET = [0.1, -0.2, -0.1], [0.4, 0.2, -0.5]

# A scalar, an empty leaf, vectors, a leaf of 4 kernel blocks (2**16 elements each, so the
# pool threads share it), one of exactly 2 blocks, a 3-D leaf and bf16 leaves (those take the
# XLA path).
SHAPES = {"scalar": (), "empty": (0, 3), "vec": (7,), "big": (700, 300), "blocks": (256, 512),
          "cube": (2, 3, 4), "mat": (5, 6), "bf16_mat": (4, 5), "bf16_vec": (9,)}

CONFIGS = [
    dict(learning_rate=1e-2),
    dict(learning_rate=1e-2, weight_decay=0.1),
    dict(learning_rate=2e-2, correct_bias=False, weight_decay=0.05),
    dict(learning_rate=3e-3, b1=0.8, b2=0.9999, eps=1e-8),
    dict(learning_rate=1e-3, b1=0.0, b2=0.5, eps=0.0, weight_decay=0.3),
    dict(learning_rate=funcopt.get_cosine_schedule_with_warmup(1e-2, 2, 6), weight_decay=0.1,
         mask=lambda p: {k: k not in ("vec", "bf16_vec") for k in p}),
]


def make_problem(seed=0, steps=5, scale=1.0):
    rng = np.random.default_rng(seed)
    dtype = lambda name: jnp.bfloat16 if name.startswith("bf16") else jnp.float32
    draw = lambda name, s, k: jnp.asarray(rng.standard_normal(s) * k, dtype(name))
    params = {n: draw(n, s, 1.0) for n, s in SHAPES.items()}
    grads = [{n: draw(n, s, 0.1 * scale) for n, s in SHAPES.items()} for _ in range(steps)]
    return params, grads


def run_reference(kwargs, params, grads):
    return run_applying(funcopt.adamw(**kwargs), params, grads)


def run_fused(kwargs, params, grads, donate=True):
    return parity.run_fused(funcopt.fused_adamw(**kwargs), params, grads, donate=donate)


@pytest.fixture(scope="module", autouse=True)
def kernel_built():
    """Where a C++ compiler exists, the kernel must build: no silent fallback in the suite."""
    if HAS_COMPILER:
        assert _fused_adamw.kernel_available()


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("donate", [True, False])
def test_bitwise_equal_to_adamw_and_apply_updates(kwargs, donate):
    params, grads = make_problem()
    assert_bitwise(run_fused(kwargs, params, grads, donate),
                   run_reference(kwargs, params, grads))


def test_subnormal_and_tiny_values_round_like_xla():
    """XLA flushes subnormals to zero under jit; the kernel's threads do the same."""
    params, grads = make_problem(seed=1, scale=1e-37)
    params = jax.tree.map(lambda p: p * jnp.asarray(1e-36, p.dtype), params)
    kwargs = dict(learning_rate=1e-38, weight_decay=0.5, eps=1e-40)
    assert_bitwise(run_fused(kwargs, params, grads), run_reference(kwargs, params, grads))


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the XLA path is tested below")
def test_compiled_step_calls_the_kernel_once_in_place():
    params, grads = make_problem(steps=1)
    opt = funcopt.fused_adamw(weight_decay=0.1)
    compiled = jax.jit(lambda p, s, g: opt.step(g, s, p), donate_argnums=(0, 1)).lower(
        params, opt.init(params), grads[0]).compile()
    hlo = compiled.as_text()
    assert hlo.count("custom_call_target=\"funcopt_FuncoptAdamWF32\"") == 1
    memory = compiled.memory_analysis()
    # Parameters and moments are written into their donated inputs: only the int32 step
    # counters (a few bytes each) may land elsewhere, and no scratch is needed.
    assert memory.output_size_in_bytes - memory.alias_size_in_bytes < 1024
    assert memory.temp_size_in_bytes < 4096


def test_vmap_runs_the_kernel_per_batch_element():
    params, grads = make_problem(steps=1)
    params = {k: v for k, v in params.items() if k in ("vec", "mat", "bf16_vec")}
    batch = lambda t, k: jax.tree.map(lambda x: jnp.stack([x, x * k]), t)
    kwargs = dict(learning_rate=1e-2, weight_decay=0.1)
    opt, tx = funcopt.fused_adamw(**kwargs), funcopt.adamw(**kwargs)
    p, g = batch(params, 2.0), batch({k: grads[0][k] for k in params}, -1.0)
    ours = jax.jit(jax.vmap(opt.step))(g, jax.vmap(opt.init)(p), p)
    assert_bitwise(ours, jax.jit(jax.vmap(applying(tx)))(g, jax.vmap(tx.init)(p), p))


@pytest.mark.skipif(not HAS_COMPILER, reason="without the kernel every path is XLA's")
def test_sharded_parameters_take_the_partitionable_xla_path():
    """The kernel is built (so its absence from the compiled step means something), yet a
    sharded step does not call it: no all-gather, the sharding kept, adamw's bits."""
    parity.assert_sharded_takes_xla("fused_adamw", "adamw",
                                    "learning_rate=1e-2, weight_decay=0.1", "_fused_adamw",
                                    "FuncoptAdamW", devices=4)


def test_golden_test_problem(golden_pt):
    """transformers' AdamW test problem: the golden values of the reference."""
    opt = funcopt.fused_adamw(learning_rate=0.2, weight_decay=0.1)
    loss = lambda w: jnp.mean((w - jnp.asarray(TARGET)) ** 2)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(w, state):
        return opt.step(jax.grad(loss)(w), state, w)

    w = jnp.asarray(W0, jnp.float32)
    state, trajectory = opt.init(w), []
    for _ in range(100):
        w, state = step(w, state)
        trajectory.append(np.asarray(w))
    expected = golden_pt["adamw_wd0.1"]
    np.testing.assert_allclose(trajectory[:3], expected["first3"], rtol=0, atol=1.2e-7)
    np.testing.assert_allclose(trajectory[-1], expected["final_after_100"], rtol=0, atol=1.2e-7)


def test_state_is_interchangeable_with_adamw_mid_run():
    params, grads = make_problem()
    kwargs = dict(learning_rate=1e-2, weight_decay=0.1)
    mid = run_reference(kwargs, params, grads[:2])
    opt = funcopt.fused_adamw(**kwargs)
    p, s = mid
    for g in grads[2:]:
        p, s = jax.jit(opt.step)(g, s, p)
    assert_bitwise((p, s), run_reference(kwargs, params, grads))


def test_construction_errors_are_adamw_s():
    with pytest.raises(ValueError, match="b1"):
        funcopt.fused_adamw(b1=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        funcopt.fused_adamw(weight_decay=-0.1)
    with pytest.raises(TypeError, match="correct_bias"):
        funcopt.fused_adamw(correct_bias=1)
    opt = funcopt.fused_adamw()
    with pytest.raises(ValueError, match="needs the parameters"):
        opt.step({"w": jnp.zeros(2)}, opt.init({"w": jnp.zeros(2)}), None)


FALLBACK = textwrap.dedent("""
    import json, warnings, jax, jax.numpy as jnp, numpy as np, optax, funcopt
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = funcopt.fused_adamw(1e-2, weight_decay=0.1)
        tx = funcopt.adamw(1e-2, weight_decay=0.1)
        p = {"w": jnp.linspace(-1, 1, 70000, dtype=jnp.float32).reshape(700, 100)}
        g = jax.tree.map(lambda x: x[::-1] * 0.1, p)
        fused = jax.jit(lambda p, s: opt.step(g, s, p))
        hlo = fused.lower(p, opt.init(p)).compile().as_text()
        a, _ = fused(p, opt.init(p))
        b = jax.jit(lambda p, s: optax.apply_updates(p, tx.update(g, s, p)[0]))(p, tx.init(p))
    print("kernel" if "funcopt_FuncoptAdamWF32" in hlo else "xla",
          bool((np.asarray(a["w"]) == np.asarray(b["w"])).all()),
          json.dumps([str(w.message) for w in caught if w.category is RuntimeWarning]))
""")


def run_fallback(tmp_path, **env):
    """(path taken, bitwise equal to adamw, the RuntimeWarnings' texts) in a new process."""
    env = {**os.environ, "FUNCOPT_CACHE_DIR": str(tmp_path / "cache"), **env}
    result = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    path, equal, warned = result.stdout.strip().split(" ", 2)
    return path, equal, json.loads(warned)


def says_it_falls_back(message, *reasons):
    """The fallback warning's meaning, not its wording: the kernel, the XLA path, the reason."""
    return all(word.lower() in message.lower() for word in ("kernel", "adamw", "XLA", *reasons))


def test_disabled_kernels_take_the_xla_path_quietly(tmp_path):
    assert run_fallback(tmp_path, FUNCOPT_DISABLE_KERNELS="1") == ("xla", "True", [])


def test_no_compiler_warns_once_and_takes_the_xla_path(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with python but no C++ compiler
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    path, equal, warned = run_fallback(tmp_path, PATH=str(bin_dir), CXX="")
    assert (path, equal, len(warned)) == ("xla", "True", 1)
    assert says_it_falls_back(warned[0], "no C++ compiler")


def test_a_hung_compiler_is_killed_and_the_first_step_takes_the_xla_path(tmp_path):
    hung = tmp_path / "hung-c++"  # answers --version, then never finishes a build
    hung.write_text('#!/bin/sh\n[ "$1" = --version ] && exec echo hung 1.0\nsleep 300\n')
    hung.chmod(0o755)
    path, equal, warned = run_fallback(tmp_path, CXX=str(hung), FUNCOPT_COMPILE_TIMEOUT="1")
    assert (path, equal, len(warned)) == ("xla", "True", 1)
    assert says_it_falls_back(warned[0], "did not finish within 1 s")
    cache = tmp_path / "cache"  # nothing built, nothing left half-built
    assert not list(cache.glob("*.so")) and not list(cache.glob("*.so.tmp"))


@pytest.mark.skipif(not HAS_COMPILER, reason="needs a C++ compiler")
def test_fresh_build_into_an_empty_cache(tmp_path):
    assert run_fallback(tmp_path) == ("kernel", "True", [])
    built = list((tmp_path / "cache").glob("adamw-*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    assert run_fallback(tmp_path) == ("kernel", "True", [])  # reused, not rebuilt
    assert built[0].stat().st_mtime_ns == mtime


@pytest.mark.skipif(not HAS_COMPILER, reason="needs a C++ compiler")
def test_a_kernel_that_rounds_differently_is_refused(tmp_path, monkeypatch):
    """The check run before the kernel is first used has teeth: a variant that rounds the
    decay's product before adding (one ulp apart, now and then) is caught and not used."""
    source = (Path(_kernels.__file__).parent / "adamw.cc").read_text()
    fused = "std::fma(c.decay, new_p, new_p)"
    assert fused in source
    (tmp_path / "adamw_unfused.cc").write_text(source.replace(fused, "(c.decay * new_p + new_p)"))
    monkeypatch.setenv("FUNCOPT_CACHE_DIR", str(tmp_path / "cache"))
    library = _kernels.load(tmp_path / "adamw_unfused.cc")
    jax.ffi.register_ffi_target("funcopt_test_unfused",
                                jax.ffi.pycapsule(library.FuncoptAdamWF32), platform="cpu")
    with pytest.warns(RuntimeWarning, match="does not round like XLA"):
        assert not _fused_adamw._same_as_xla("funcopt_test_unfused")
    assert _fused_adamw._same_as_xla(_fused_adamw._target())
    # The direct entry point (funcopt.torch's) has the same check.
    direct = library.funcopt_adamw_f32
    direct.argtypes = _direct.entry_point("adamw", "funcopt_adamw_f32").argtypes
    fp_control = _kernels.xla_fp_control("adamw")
    with pytest.warns(RuntimeWarning, match="does not round like XLA"):
        assert not _fused_adamw._direct_same_as_xla((direct, fp_control))
    assert _fused_adamw._direct_same_as_xla(_fused_adamw.direct_entry())
