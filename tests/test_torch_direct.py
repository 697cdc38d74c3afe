"""funcopt.torch's fast paths give the XLA path's numbers, bit for bit.

* The kernels that step float32 CPU tensors in place (funcopt/torch/_direct.py): SGD here
  (AdamW in test_torch_optimizer.py, torch's AdamW/Adam in test_fused_adamw_torch.py), on one
  thread, on torch's OpenMP threads (GOMP_parallel) and on the kernel's own threads.
* The XLA path's multi-threaded write-back and memory-optimized scheduler (Adafactor, bf16).
* The fallbacks: kernels disabled (FUNCOPT_DISABLE_KERNELS=1) give the same numbers.

Each run is compared with the same rule run by JAX with the learning rate funcopt.torch
passes (a traced float32 value), one jitted update + apply_updates per step.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity import applying
from torch_model import one_torch_thread, torch  # noqa: F401  (an autouse fixture)

import funcopt
import funcopt.torch
from funcopt import _kernels, _sgd_kernel
from funcopt.torch import _direct

HAS_COMPILER = _kernels.compiler() is not None
STEPS = 25


def problem(seed=0, dtypes=(torch.float32,) * 4 + (torch.bfloat16,)):
    """Tensors of several kernel blocks, odd sizes, a scalar; fixed gradients per step."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(300, 250), (7,), (3, 5), (), (9,)]
    params = [torch.randn(s, generator=g).to(d) for s, d in zip(shapes, dtypes, strict=True)]
    grads = [[(torch.randn(p.shape, generator=g) * 0.1).to(p.dtype) for p in params]
             for _ in range(STEPS)]
    return params, grads


def run_torch(fn, kw, params, grads, lrs):
    params = [torch.nn.Parameter(p.clone()) for p in params]
    opt = funcopt.torch.Optimizer(params, fn, lr=lrs[0], **kw)
    for gs, lr in zip(grads, lrs, strict=True):
        for p, g in zip(params, gs, strict=True):
            p.grad = g
        opt.param_groups[0]["lr"] = lr
        opt.step()
    return params, opt


def run_jax(fn, kw, params, grads, lrs):
    as_jax = lambda t: jnp.asarray(t.float().numpy()).astype(
        jnp.bfloat16 if t.dtype == torch.bfloat16 else jnp.float32)
    jax_params = [as_jax(p) for p in params]
    state = jax.jit(fn(learning_rate=1.0, **kw).init)(jax_params)
    step = jax.jit(lambda lr, *a: applying(fn(learning_rate=lr, **kw))(*a))  # lr traced
    for gs, lr in zip(grads, lrs, strict=True):
        jax_params, state = step(np.float32(lr), [as_jax(g) for g in gs], state, jax_params)
    return jax_params, state


def assert_bitwise(torch_params, jax_params):
    for p, q in zip(torch_params, jax_params, strict=True):
        np.testing.assert_array_equal(p.detach().float().numpy(), np.asarray(q, np.float32))


SGD_CONFIGS = [dict(momentum=0.9, dampening=0.1, weight_decay=0.01),
               dict(momentum=0.8, nesterov=True, maximize=True),
               dict(weight_decay=0.05)]  # no momentum: no state tensor


@pytest.mark.parametrize("kw", SGD_CONFIGS)
@pytest.mark.parametrize("schedule", ["decaying", "constant"])
def test_sgd_kernel_is_the_xla_path(kw, schedule):
    """(A constant learning rate reads the step scalars from a table made ahead.)"""
    params, grads = problem()
    lrs = [1e-2 * (1 - i / 40) if schedule == "decaying" else 3e-3 for i in range(STEPS)]
    ours, opt = run_torch(funcopt.sgd, kw, params, grads, lrs)
    theirs, state = run_jax(funcopt.sgd, kw, params, grads, lrs)
    assert_bitwise(ours, theirs)
    if kw.get("momentum"):
        assert_bitwise([opt.state[p]["momentum_buffer"] for p in ours], state.momentum_buffer)
    keys = ("momentum_buffer",) if kw.get("momentum") else ()
    taken = _direct.takes(opt, ours, [1] * 5, keys)
    assert taken == [True] * 4 + [False] or _sgd_kernel.direct_entry() is None


@pytest.mark.skipif(not HAS_COMPILER, reason="needs the kernels")
@pytest.mark.parametrize("pool", ["openmp", "own threads"])
def test_two_threads_give_the_same_bits(pool):
    """Two threads share a step's blocks (torch's OpenMP team, or the kernel's own threads
    when no OpenMP runtime was found); the numbers are the one-thread numbers."""
    params, grads = problem(dtypes=(torch.float32,) * 5)
    lrs = [1e-2] * STEPS
    kw = dict(b1=0.9, b2=0.99, weight_decay=0.1)
    one, _ = run_torch(funcopt.adamw, kw, params, grads, lrs)
    library = _kernels.library("adamw")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if pool == "own threads":
            library.funcopt_set_parallel(None)
        two, _ = run_torch(funcopt.adamw, kw, params, grads, lrs)
    finally:
        torch.set_num_threads(threads)
        _direct._share_threads("adamw")
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)
    assert _direct._torch_openmp_parallel() is not None  # torch's libgomp was found


def test_xla_path_adafactor_and_bf16_writes_are_the_jax_numbers():
    """Adafactor (no kernel: the XLA path with the memory-optimized scheduler and the
    multi-threaded write-back), float32 and bf16 parameters, a non-contiguous one too."""
    params, grads = problem()
    params[2] = params[2].t()  # not contiguous: the plain write-back
    grads = [[g.t() if i == 2 else g for i, g in enumerate(gs)] for gs in grads]
    lrs = [None] * STEPS
    kw = dict(weight_decay=0.01)
    ours, _ = run_torch(funcopt.adafactor, kw, params, grads, lrs)
    theirs, _ = run_jax_adafactor(kw, params, grads)
    assert_bitwise(ours, theirs)


def run_jax_adafactor(kw, params, grads):
    as_jax = lambda t: jnp.asarray(t.float().numpy()).astype(
        jnp.bfloat16 if t.dtype == torch.bfloat16 else jnp.float32)
    tx = funcopt.adafactor(**kw)
    jax_params = [as_jax(p) for p in params]
    state = tx.init(jax_params)
    step = jax.jit(applying(tx))  # default compiler options
    for gs in grads:
        jax_params, state = step([as_jax(g) for g in gs], state, jax_params)
    return jax_params, state


DISABLED = textwrap.dedent("""
    import sys, numpy as np, torch, funcopt, funcopt.torch
    from funcopt.torch import _direct
    g = torch.Generator().manual_seed(0)
    out = []
    for fn, kw in ((funcopt.adamw, {}), (funcopt.sgd, {"momentum": 0.9}),
                   (funcopt.adamw_torch_fused, {"amsgrad": True})):
        p = torch.nn.Parameter(torch.randn(70001, generator=g))
        opt = funcopt.torch.Optimizer([p], fn, lr=1e-2, **kw)
        for i in range(3):
            p.grad = torch.randn(70001, generator=g) * 0.1
            opt.step()
        out.append(p.detach().numpy())
    assert _direct._entry(funcopt.adamw) is None or sys.argv[1] == "0"
    np.save(sys.argv[2], np.concatenate(out))
""")


def test_disabled_kernels_give_the_same_numbers(tmp_path):
    """FUNCOPT_DISABLE_KERNELS=1 (or no compiler): the XLA path, with the same bits."""
    results = []
    for disabled in ("1", "0"):
        path = tmp_path / f"{disabled}.npy"
        env = {**os.environ, "FUNCOPT_DISABLE_KERNELS": disabled}
        done = subprocess.run([sys.executable, "-c", DISABLED, disabled, str(path)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(np.load(path))
    np.testing.assert_array_equal(*results)
