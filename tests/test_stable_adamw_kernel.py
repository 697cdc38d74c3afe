"""funcopt.stable_adamw's direct CPU kernel (funcopt/_kernels/stable_adamw.cc with the clipped
learning rates from funcopt/_stable_adamw_kernel.py) gives the XLA path's bits: the rule's
jitted update + apply_updates, with the learning rate as funcopt.torch passes it (float32).

Gradients spike now and then, so the per-tensor RMS clips the learning rate on some steps
(asserted), and the moments cross torch.lerp's two branches (b1_comp >= 0.5 early, < 0.5
later)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from torch_model import one_torch_thread, torch  # noqa: F401  (an autouse fixture)

import funcopt
import funcopt.torch
from funcopt import _core, _kernels
from funcopt import _stable_adamw_kernel as kernel
from funcopt._kernels import _direct as _direct_kernels
from funcopt._stable_adamw import StableAdamW
from funcopt.torch import _direct

pytestmark = pytest.mark.skipif(_kernels.compiler() is None, reason="no C++ compiler")

SHAPES = [(), (7,), (3, 5), (2, 3, 4), (2, 1, 3, 5), (300, 250)]  # (300, 250): two blocks
STEPS = 25


def _problem(seed):
    rng = np.random.default_rng(seed)
    params = {f"p{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(SHAPES)}
    grads = []
    for t in range(STEPS):
        spike = np.float32(30.0 if t % 7 == 3 else 1.0)  # the RMS clips the lr on these steps
        grads.append({k: (rng.standard_normal(np.shape(v)) * 0.1 * spike).astype(np.float32)
                      for k, v in params.items()})
    return params, grads


CONFIGS = [
    dict(b1=0.9, b2=0.99, weight_decay=0.01, eps=1e-6),
    dict(b1=0.8, b2=0.999, weight_decay=0.1, eps=1e-8, mask="some"),
    dict(b1=0.95, b2=0.95, weight_decay=0.0, eps=0.0),
    dict(b1=0.9, b2=0.99, weight_decay=0.2, eps=1e-6, decouple_lr=True, max_lr=0.05),
]


def _rule(cfg, names):
    cfg = dict(cfg)
    mask = {k: i % 2 == 0 for i, k in enumerate(names)} if cfg.pop("mask", None) else None
    decouple, max_lr = cfg.pop("decouple_lr", False), cfg.pop("max_lr", None)
    return StableAdamW.validated(np.float32(1e-2), cfg["b1"], cfg["b2"], cfg["weight_decay"],
                                 cfg["eps"], decouple, max_lr, None, mask)


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_kernel_is_the_xla_path(index):
    entry = kernel.direct_entry()
    assert entry is not None
    params, grads = _problem(index)
    rule = _rule(CONFIGS[index], list(params))
    step = jax.jit(functools.partial(_direct_kernels.xla_step, rule))
    xla = ours = (params, _core.init(rule, params))
    clipped = 0
    for t, g in enumerate(grads):
        plan = _core.prepare(rule, g, ours[1], ours[0])
        reads = [(x, f[1], f[2]) for x, _, f, _ in plan.leaves]
        _, _, leaf = kernel._jitted_scalars(dataclasses.replace(rule, mask=None))(
            np.float32(1e-2), plan.count, (), reads)
        clipped += int((np.asarray(leaf)[:, 0] < np.float32(1e-2)).sum())
        xla = step(g, xla[1], xla[0])
        ours = kernel.numpy_step(entry, rule, g, ours[1], ours[0])
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(xla), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"step {t}")
    assert clipped >= 3 * len(SHAPES)  # the clipped learning rates were exercised


def test_the_check_catches_other_rounding(monkeypatch):
    """A learning rate one ulp off (as a differently rounded clip would give) fails the
    self-check, which then refuses the kernel with a warning."""
    entry = kernel.direct_entry()
    real = kernel._jitted_scalars

    def off_by_an_ulp(rule):
        fn = real(rule)

        def scalars(*args):
            c, group, leaf = fn(*args)
            leaf = np.array(leaf)
            leaf[:, 0] = np.nextafter(leaf[:, 0], np.float32(1))
            return c, group, leaf
        return scalars

    monkeypatch.setattr(kernel, "_jitted_scalars", off_by_an_ulp)
    with pytest.warns(RuntimeWarning, match="does not round like XLA"):
        assert not kernel._agrees(entry)


# -- through funcopt.torch.Optimizer ---------------------------------------------------------

TORCH_SHAPES = [(300, 250), (7,), (3, 5), (), (2, 3, 4, 5)]
TORCH_CONFIGS = [dict(weight_decay=0.1), dict(weight_decay=0.2, decouple_lr=True, max_lr=0.05)]


def _torch_problem(dtypes):
    g = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=g).to(d) for s, d in zip(TORCH_SHAPES, dtypes,
                                                                 strict=True)]
    grads = [[(torch.randn(s, generator=g) * (3.0 if t % 7 == 3 else 0.1)).to(p.dtype)
              for s, p in zip(TORCH_SHAPES, params, strict=True)] for t in range(STEPS)]
    return params, grads


def _lr(t):
    return 1e-2 * (1 - t / 50)


def _run_torch(params, grads, kw, kernel=True, skip=False):
    """funcopt.torch.Optimizer over the run (with ``skip``: the 0-D parameter has no
    gradient every fifth step); returns the parameters, the optimizer and the kernel calls."""
    params = [torch.nn.Parameter(p.clone()) for p in params]
    opt = funcopt.torch.Optimizer(params, funcopt.stable_adamw, lr=_lr(0), **kw)
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_direct._direct, "call", lambda *a, real=_direct._direct.call: (
            calls.append(1), real(*a))[1])
        if not kernel:  # the bridge's XLA path
            mp.setattr(_direct, "_entry", lambda fn, real=_direct._entry: (
                None if fn is funcopt.stable_adamw else real(fn)))
        for t, gs in enumerate(grads):
            for p, g in zip(params, gs, strict=True):
                p.grad = None if (skip and t % 5 == 2 and p.dim() == 0) else g
            opt.param_groups[0]["lr"] = _lr(t)
            opt.step()
    return params, opt, len(calls)


def _run_jax(params, grads, kw):
    """The rule's jitted update + apply_updates, the learning rate a traced float32."""
    p = [jnp.asarray(x.numpy()) for x in params]
    fn = lambda lr: funcopt.stable_adamw(learning_rate=lr, **kw)  # noqa: E731
    state = fn(1.0).init(p)

    @jax.jit
    def step(lr, g, state, p):
        updates, state = fn(lr).update(g, state, p)
        return optax.apply_updates(p, updates), state

    for t, gs in enumerate(grads):
        p, state = step(np.float32(_lr(t)), [jnp.asarray(x.numpy()) for x in gs], state, p)
    return p, state


@pytest.mark.parametrize("kw", TORCH_CONFIGS)
def test_optimizer_on_the_kernel_is_the_xla_path(kw):
    """Every step on the kernel (one call per step), bitwise the jitted JAX rule and the
    bridge's own XLA path; the state and group entries the XLA path keeps."""
    params, grads = _torch_problem([torch.float32] * len(TORCH_SHAPES))
    ours, opt, calls = _run_torch(params, grads, kw)
    assert calls == STEPS
    want, state = _run_jax(params, grads, kw)
    for p, q in zip(ours, want, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), np.asarray(q))
    for i, p in enumerate(ours):
        np.testing.assert_array_equal(opt.state[p]["exp_avg_sq"].numpy(),
                                      np.asarray(state.exp_avg_sq[i]))
    assert int(opt.param_groups[0]["step"]) == STEPS and opt.param_groups[0]["setup"]
    xla, xla_opt, xla_calls = _run_torch(params, grads, kw, kernel=False)
    assert xla_calls == 0
    for p, q in zip(ours, xla, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())
    mine, theirs = opt.state_dict(), xla_opt.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    for i in mine["state"]:
        assert list(mine["state"][i]) == list(theirs["state"][i])
        for k, v in mine["state"][i].items():
            np.testing.assert_array_equal(np.asarray(v), np.asarray(theirs["state"][i][k]))


def test_missing_grads_and_a_bf16_parameter():
    """A parameter without a gradient on some steps stays on the kernel; a bf16 parameter
    sends its whole group to the XLA path (the group step counts once); both as the XLA
    path gives them."""
    kw = TORCH_CONFIGS[0]
    params, grads = _torch_problem([torch.float32] * len(TORCH_SHAPES))
    ours, _, calls = _run_torch(params, grads, kw, skip=True)
    xla, _, _ = _run_torch(params, grads, kw, kernel=False, skip=True)
    assert calls == STEPS
    for p, q in zip(ours, xla, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())
    params, grads = _torch_problem([torch.float32] * 4 + [torch.bfloat16])
    ours, opt, calls = _run_torch(params, grads, kw)
    xla, _, _ = _run_torch(params, grads, kw, kernel=False)
    assert calls == 0 and int(opt.param_groups[0]["step"]) == STEPS
    for p, q in zip(ours, xla, strict=True):
        np.testing.assert_array_equal(p.detach().float().numpy(), q.detach().float().numpy())
