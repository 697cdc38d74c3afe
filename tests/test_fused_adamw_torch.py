"""funcopt.fused_adamw_torch: bitwise funcopt.adamw_torch_fused + optax.apply_updates, through
the C++ kernel (funcopt/_kernels/adamw_torch.cc), and the same kernel stepping torch tensors in
place for funcopt.torch.Optimizer(funcopt.adamw_torch / adamw_torch_fused / adam_torch).

As in test_fused_adamw.py, where a C++ compiler exists the kernel must build and be used (no
silent fallback). The torch-side checks compare funcopt.torch.Optimizer, whose float32 CPU
parameters the kernel steps, with the same rule run by JAX (bit for bit), and with torch's own
optimizers (torch keeps its float64 learning rate where funcopt.torch passes a float32 one, so
there the agreement is float32 round-off, measured next to torch's own float32 noise).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity import applying, assert_bitwise
from torch_model import one_torch_thread, torch  # noqa: F401  (an autouse fixture)

import funcopt
import funcopt.torch
from funcopt import _adam_torch, _fused_adamw_torch, _kernels
from funcopt._kernels import _direct as kernel_direct
from funcopt.torch import _direct

HAS_COMPILER = _kernels.compiler() is not None

# Sizes with and without a fused-kernel tail (numel % 8), a leaf of several kernel blocks
# (2**16 elements each), a scalar, an empty leaf, and bf16 leaves (those take the XLA path).
SHAPES = {"scalar": (), "empty": (0, 3), "vec": (7,), "vec8": (16,), "big": (700, 300),
          "cube": (2, 3, 5), "mat": (5, 6), "bf16_mat": (4, 5), "bf16_vec": (9,)}

CONFIGS = [
    dict(learning_rate=1e-2),
    dict(learning_rate=1e-2, weight_decay=0.0),
    dict(learning_rate=2e-3, b1=0.3, b2=0.9, eps=0.0, weight_decay=0.3),  # |1 - b1| >= 0.5
    dict(learning_rate=3e-3, amsgrad=True, maximize=True, eps=1e-6),
    dict(learning_rate=funcopt.get_cosine_schedule_with_warmup(1e-2, 2, 6), weight_decay=0.1,
         mask=lambda p: {k: k not in ("vec", "bf16_vec") for k in p}),
]


def make_problem(seed=0, steps=6, scale=1.0):
    rng = np.random.default_rng(seed)
    dtype = lambda name: jnp.bfloat16 if name.startswith("bf16") else jnp.float32
    draw = lambda name, s, k: jnp.asarray(rng.standard_normal(s) * k, dtype(name))
    params = {n: draw(n, s, 1.0) for n, s in SHAPES.items()}
    grads = [{n: draw(n, s, 0.1 * scale) for n, s in SHAPES.items()} for _ in range(steps)]
    return params, grads


def run(step_of, init, params, grads, donate=True):
    step = jax.jit(step_of, donate_argnums=(1, 2) if donate else ())
    # (adamw_torch's eager init hands one zeros array to exp_avg and exp_avg_sq: jitted, each
    # state leaf is its own buffer and can be donated.)
    params, state = jax.tree.map(jnp.copy, params), jax.jit(init)(params)
    for g in grads:
        params, state = step(g, state, params)
    return params, state


@pytest.fixture(scope="module", autouse=True)
def kernel_built():
    if HAS_COMPILER:
        assert _fused_adamw_torch.kernel_available()
        assert _fused_adamw_torch.direct_entry() is not None


@pytest.mark.parametrize("kwargs, donate", [(kw, True) for kw in CONFIGS]
                         + [(CONFIGS[3], False)])
def test_bitwise_equal_to_adamw_torch_fused_and_apply_updates(kwargs, donate):
    params, grads = make_problem()
    opt, tx = funcopt.fused_adamw_torch(**kwargs), funcopt.adamw_torch_fused(**kwargs)
    assert_bitwise(run(lambda g, s, p: opt.step(g, s, p), opt.init, params, grads, donate),
                   run(applying(tx), tx.init, params, grads))


@pytest.mark.parametrize("fused, decoupled", [(False, True), (True, False), (False, False)])
def test_the_kernel_also_runs_the_for_loop_path_and_adam(fused, decoupled):
    """The same kernel steps adamw_torch (no fused tail) and adam_torch (L2 decay)."""
    params, grads = make_problem(seed=2)
    rule = _adam_torch.AdamTorch.validated(1e-2, 0.9, 0.99, 1e-8, 0.05, False, False, None,
                                           decoupled=decoupled, fused=fused)
    tx = _adam_torch._core.transformation(rule)
    fused_step = functools.partial(_fused_adamw_torch.step, rule)
    assert_bitwise(run(fused_step, tx.init, params, grads), run(applying(tx), tx.init, params,
                                                                 grads))


def test_25_steps_subnormals_and_interchangeable_state():
    """25 steps from a state adamw_torch_fused made (and back), with values that flush."""
    params, grads = make_problem(seed=1, steps=25, scale=1e-37)
    params = jax.tree.map(lambda p: p * jnp.asarray(1e-36, p.dtype), params)
    kwargs = dict(learning_rate=1e-2, weight_decay=0.5, eps=1e-40, amsgrad=True)
    opt, tx = funcopt.fused_adamw_torch(**kwargs), funcopt.adamw_torch_fused(**kwargs)
    mid = run(applying(tx), tx.init, params, grads[:3])
    ours = run(lambda g, s, p: opt.step(g, s, p), lambda _: mid[1], mid[0], grads[3:])
    assert_bitwise(ours, run(applying(tx), tx.init, params, grads))


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: every path is XLA's")
def test_compiled_step_calls_the_kernel_once_in_place():
    params, grads = make_problem(steps=1)
    opt = funcopt.fused_adamw_torch(amsgrad=True)
    compiled = jax.jit(lambda p, s, g: opt.step(g, s, p), donate_argnums=(0, 1)).lower(
        params, opt.init(params), grads[0]).compile()
    assert compiled.as_text().count('custom_call_target="funcopt_FuncoptAdamTorchF32"') == 1
    memory = compiled.memory_analysis()
    assert memory.output_size_in_bytes - memory.alias_size_in_bytes < 1024
    assert memory.temp_size_in_bytes < 4096


def test_construction_errors_are_adamw_torch_fused_s():
    with pytest.raises(ValueError, match="b2"):
        funcopt.fused_adamw_torch(b2=1.0)
    with pytest.raises(ValueError, match="eps"):
        funcopt.fused_adamw_torch(eps=-1.0)
    with pytest.raises(TypeError, match="amsgrad"):
        funcopt.fused_adamw_torch(amsgrad=1)
    opt = funcopt.fused_adamw_torch()
    with pytest.raises(ValueError, match="needs the parameters"):
        opt.step({"w": jnp.zeros(2)}, opt.init({"w": jnp.zeros(2)}), None)


# -- torch: funcopt.torch.Optimizer steps float32 CPU tensors with the kernel ---------------


def torch_problem(seed=0):
    """float32 tensors with and without a tail, several blocks, and a bf16 one (XLA)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(300, 250), (7,), (3, 5), (16,)]
    params = [torch.randn(s, generator=g) for s in shapes]
    params.append(torch.randn(9, generator=g).bfloat16())
    grads = [[torch.randn(p.shape, generator=g).to(p.dtype) * 0.1 for p in params]
             for _ in range(25)]
    return params, grads


def run_torch(make, params, grads, lrs):
    params = [torch.nn.Parameter(p.clone()) for p in params]
    opt = make(params)
    for gs, lr in zip(grads, lrs, strict=True):
        for p, g in zip(params, gs, strict=True):
            p.grad = g
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    return params, opt


@pytest.mark.parametrize("fn, amsgrad, maximize, wd", [
    (funcopt.adamw_torch_fused, False, False, 0.01), (funcopt.adamw_torch_fused, True, True, 0.1),
    (funcopt.adamw_torch, False, False, 0.01), (funcopt.adam_torch, True, False, 0.05)])
def test_torch_optimizer_bitwise_funcopt_in_jax(fn, amsgrad, maximize, wd):
    """The kernel's in-place steps of funcopt.torch.Optimizer are the rule's JAX numbers bit
    for bit (25 steps, a changing learning rate, a bf16 parameter on the XLA path beside)."""
    params, grads = torch_problem()
    lrs = [1e-2 * (1 - i / 30) for i in range(25)]
    kw = dict(b1=0.9, b2=0.99, eps=1e-8, weight_decay=wd, amsgrad=amsgrad, maximize=maximize)
    ours, opt = run_torch(lambda ps: funcopt.torch.Optimizer(ps, fn, lr=1e-2, **kw),
                          params, grads, lrs)
    assert all(opt.state[p]["exp_avg"].data_ptr() != 0 for p in ours)
    taken = _direct.takes(opt, ours, [1] * 5, _direct._adam_keys(dataclasses.replace(
        _fused_adamw_torch._check_rules()[0], amsgrad=amsgrad)))
    assert taken == [True] * 4 + [False] or not _fused_adamw_torch.kernel_available()
    # JAX: the learning rate as the bridge passes it (a traced float32), one update per step.
    jax_params = [jnp.asarray(p.float().numpy()).astype(
        jnp.bfloat16 if p.dtype == torch.bfloat16 else jnp.float32) for p in params]
    state = fn(learning_rate=1e-2, **kw).init(jax_params)
    step = jax.jit(lambda lr, *a: applying(fn(learning_rate=lr, **kw))(*a))  # lr traced
    for gs, lr in zip(grads, lrs, strict=True):
        jg = [jnp.asarray(g.float().numpy()).astype(q.dtype) for g, q in zip(gs, jax_params,
                                                                             strict=True)]
        jax_params, state = step(np.float32(lr), jg, state, jax_params)
    for p, q in zip(ours, jax_params, strict=True):
        np.testing.assert_array_equal(p.detach().float().numpy(), np.asarray(q, np.float32))
    for p, m in zip(ours, state.exp_avg, strict=True):
        np.testing.assert_array_equal(opt.state[p]["exp_avg"].float().numpy(),
                                      np.asarray(m, np.float32))


def test_torch_optimizer_against_torch_fused_adamw():
    """25 steps against torch.optim.AdamW(fused=True) on float32 tensors: within torch's own
    float32 noise (its float32 run against its float64 run)."""
    params, grads = torch_problem()
    params, grads = params[:4], [gs[:4] for gs in grads]
    lrs = [1e-2] * 25
    kw = dict(betas=(0.9, 0.99), weight_decay=0.01, amsgrad=True)
    ours, _ = run_torch(lambda ps: funcopt.torch.Optimizer(
        ps, funcopt.adamw_torch_fused, lr=1e-2, b1=0.9, b2=0.99, weight_decay=0.01,
        amsgrad=True), params, grads, lrs)
    ref, _ = run_torch(lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True, **kw), params,
                       grads, lrs)
    ref64, _ = run_torch(lambda ps: torch.optim.AdamW(ps, lr=1e-2, **kw),
                         [p.double() for p in params], [[g.double() for g in gs]
                                                        for gs in grads], lrs)
    for a, b, c in zip(ours, ref, ref64, strict=True):
        scale = b.abs().max().item()
        ours_err = (a - b).abs().max().item() / scale
        noise = (b.double() - c).abs().max().item() / scale
        print(f"{tuple(a.shape)}: funcopt vs torch fused {ours_err:.2e}, torch float32 vs "
              f"float64 {noise:.2e}")
        assert ours_err <= max(1e-6, noise)


def test_direct_scalars_tabulated_ahead_are_the_one_call_values():
    """funcopt.torch's step scalars: a table of the next steps (same learning rate, every
    leaf at one step) holds what one call for that step gives, across table refreshes; other
    calls (leaves at different steps, a new learning rate) compute directly."""
    rule = dataclasses.replace(_fused_adamw_torch._check_rules()[1], mask=None)
    fn = _fused_adamw_torch.direct_scalars(rule)
    one = jax.jit(fn)
    cached = kernel_direct.Scalars(fn)
    for lr, steps in ([(1e-3, [n] * 3) for n in range(140)] + [(1e-3, [5, 7, 7])]
                      + [(2e-3, [n] * 2) for n in (140, 141)]):
        for ours, theirs in zip(cached(lr, steps), one(np.float32(lr), np.int32(steps)),
                                strict=True):
            np.testing.assert_array_equal(ours, np.asarray(theirs))
