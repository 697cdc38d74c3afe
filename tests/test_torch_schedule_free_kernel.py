"""funcopt.torch's schedule-free drop-ins on their C kernel (funcopt/_kernels/schedule_free.cc,
funcopt/torch/_direct.py) give the XLA path's numbers bit for bit.

Each run goes twice through the same 30 steps, on the kernel and with the kernel switched off
(``_direct._entry`` -> None: the jitted XLA update, as with ``FUNCOPT_DISABLE_KERNELS=1``),
and every parameter, state tensor and param-group entry is compared bitwise. Three param
groups: one decaying (0-D..4-D shapes, one tensor of two kernel blocks, a parameter without a
gradient for the first steps), one without decay, one mixing float32 and bfloat16
parameters (the whole group on the XLA path: its group state steps once); the learning rate
lowered at step 7, ``eval()``/``train()`` at step 10, and at step 18 the run continues in a
new optimizer loaded from ``state_dict()``. The reference side (schedulefree itself) is in
``tests/trainer5/test_torch_menu5.py`` and ``test_schedule_free.py``, which now run on this
kernel too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_model import one_torch_thread, torch  # noqa: F401  (an autouse fixture)

import funcopt
import funcopt.torch
from funcopt import _kernels, _schedule_free_kernel
from funcopt.torch import _direct

HAS_KERNELS = _kernels.compiler() is not None and not _kernels.disabled()
STEPS, EVAL_AT, RELOAD_AT, LATE = 30, 10, 18, 5
F32_SHAPES = [(), (7,), (5, 6), (2, 3, 4), (2, 2, 3, 5), (300, 250)]
MIXED = [((3, 5), torch.float32), ((4, 6), torch.bfloat16)]

KINDS = {
    "adamw": (funcopt.torch.AdamWScheduleFree,
              dict(lr=0.02, betas=(0.9, 0.99), weight_decay=0.05, warmup_steps=4, r=0.5)),
    "sgd": (funcopt.torch.SGDScheduleFree,
            dict(lr=0.3, momentum=0.85, weight_decay=0.05, warmup_steps=3.5,
                 weight_lr_power=1.0)),
    "radam": (funcopt.torch.RAdamScheduleFree,  # rho_t > 4 from step 6 at b2 = 0.95
              dict(lr=0.02, betas=(0.9, 0.95), weight_decay=0.05, r=1.0)),
    "radam_sgd_phase": (funcopt.torch.RAdamScheduleFree,
                        dict(lr=0.02, betas=(0.95, 0.9), eps=0.0, weight_decay=0.05,
                             weight_lr_power=0.5, silent_sgd_phase=False)),
}


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    specs = [(s, torch.float32) for s in F32_SHAPES] + MIXED
    init = [torch.randn(s, generator=g).to(d) for s, d in specs]
    grads = [[(torch.randn(p.shape, generator=g) * 0.1).to(p.dtype) for p in init]
             for _ in range(STEPS)]
    return init, grads


def param_groups(params):
    """Decaying 0-D..3-D and the 2-block tensor; no decay; float32 beside bfloat16."""
    return [{"params": params[:4] + params[5:6]},
            {"params": params[4:5], "weight_decay": 0.0},
            {"params": params[6:], "weight_decay": 0.01}]


def run(kind, init, grads, kernel: bool, monkeypatch, threads=1):
    """The drop-in through the scenario; the leaves of each kernel call are recorded."""
    cls, kw = KINDS[kind]
    params = [torch.nn.Parameter(p.clone()) for p in init]
    calls = []
    _schedule_free_kernel.direct_entry()  # its pre-use check calls the kernel too
    call = _direct._direct.call
    with monkeypatch.context() as m:
        if kernel:
            m.setattr(_direct._direct, "call", lambda fn, pointers, sizes, *a: (
                calls.append([int(n) for n in sizes]), call(fn, pointers, sizes, *a))[1])
            m.setattr(torch, "get_num_threads", lambda: threads)
        else:
            m.setattr(_direct, "_entry", lambda fn: None)
        opt = cls(param_groups(params), **kw)
        opt.train()
        for i, gs in enumerate(grads):
            for j, (p, g) in enumerate(zip(params, gs, strict=True)):
                p.grad = None if (j == 1 and i < LATE) else g.clone()
            if i == 7:  # in every group: state_from_torch wants one group state
                for group in opt.param_groups:
                    group["lr"] = kw["lr"] * 0.7
            opt.step()
            if i == EVAL_AT:
                opt.eval()
                x = [p.detach().clone() for p in params]
                opt.train()
            if i == RELOAD_AT:
                saved = opt.state_dict()
                opt = cls(param_groups(params), **kw)
                opt.load_state_dict(saved)
    return params, opt, x, calls


def as_jax(opt):
    """The optimizer's parameters in order, as JAX arrays of their dtypes."""
    return [jnp.asarray(p.detach().float().numpy()).astype(
        jnp.bfloat16 if p.dtype == torch.bfloat16 else jnp.float32)
        for g in opt.param_groups for p in g["params"]]


def assert_same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.detach().float().numpy(), b.detach().float().numpy())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kernel_is_the_xla_path(kind, monkeypatch):
    init, grads = problem()
    threads = 2 if kind == "adamw" else 1  # two threads share the 2-block tensor
    ours, opt, x, calls = run(kind, init, grads, True, monkeypatch, threads)
    theirs, xla, x_xla, none = run(kind, init, grads, False, monkeypatch)
    assert none == []
    for a, b in zip(ours + x, theirs + x_xla, strict=True):
        assert_same(a, b)
    for p, q in zip(ours, theirs, strict=True):
        assert list(opt.state[p]) == list(xla.state[q])  # step, z, exp_avg_sq: same order
        for key in opt.state[p]:
            a, b = opt.state[p][key], xla.state[q][key]
            if isinstance(a, torch.Tensor):
                assert_same(a, b)
            else:
                assert a == b, key
    for group, xla_group in zip(opt.param_groups, xla.param_groups, strict=True):
        for key in ("k", "weight_sum", "lr_max", "train_mode", "lr"):
            assert group[key] == xla_group[key], key
    ours_state = funcopt.torch.state_from_torch(opt, as_jax(opt))
    xla_state = funcopt.torch.state_from_torch(xla, as_jax(xla))
    for a, b in zip(jax.tree.leaves(ours_state), jax.tree.leaves(xla_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if _schedule_free_kernel.direct_entry() is None:  # no compiler here, or kernels disabled
        assert calls == [] and not HAS_KERNELS
        return
    # Every float32 group on the kernel (the second parameter from step LATE on), once per
    # step; the group with a bfloat16 parameter never.
    assert calls[:2 * LATE] == [[1, 30, 24, 75000], [60]] * LATE
    assert calls[2 * LATE:] == [[1, 7, 30, 24, 75000], [60]] * (STEPS - LATE)


def test_first_step_state_is_torch_owned_in_the_references_order(monkeypatch):
    """z starts as a copy of the parameter, exp_avg_sq as zeros, in schedulefree's order,
    made by torch on the kernel path (then updated in place, as the reference's are)."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = funcopt.torch.AdamWScheduleFree([w], lr=0.1)
    opt.train()
    w.grad = torch.tensor([0.5, -0.5, 0.0])
    opt.step()
    state = opt.state[w]
    assert list(state) == ["step", "z", "exp_avg_sq"] and state["step"] == 1
    assert opt.param_groups[0]["k"] == 1 and opt.param_groups[0]["lr_max"] == float(np.float32(0.1))
    if _schedule_free_kernel.direct_entry() is not None:
        assert w not in opt._jax  # no JAX arrays behind it
        z = state["z"]
        w.grad = torch.tensor([0.5, -0.5, 0.0])
        opt.step()
        assert opt.state[w]["z"] is z  # updated in place, not replaced


def test_check_rules_cover_every_branch():
    """The pre-use check (``_schedule_free_kernel._agrees``) runs all three rules, decaying
    and non-decaying leaves, a fractional warmup, RAdam's silent and plain SGD phases and its
    normalized one, eps 0, and non-trivial ``r`` / ``weight_lr_power``."""
    rules = _schedule_free_kernel._check_rules()
    assert {type(r).__name__ for r in rules} == {"AdamWScheduleFree", "SGDScheduleFree",
                                                 "RAdamScheduleFree"}
    radams = [r for r in rules if type(r).__name__ == "RAdamScheduleFree"]
    assert {r.silent_sgd_phase for r in radams} == {True, False}
    assert any(r.eps == 0 for r in radams)
    # b2 = 0.9: rho_t crosses 4 within the checked steps (rho_5 = 4.58).
    b2, t = 0.9, _schedule_free_kernel.CHECK_STEPS
    assert all(r.b2 == b2 for r in radams) and 2 / (1 - b2) - 1 - 2 * t * b2**t / (
        1 - b2**t) > 4
    assert any(r.mask is not None and False in r.mask.values() for r in rules)


def test_optimizer_mask_false_is_no_decay_on_the_kernel(monkeypatch):
    """funcopt.torch.Optimizer with a schedule-free rule: a group's ``mask=False`` steps as
    ``weight_decay=0.0`` (the kernel's no-decay leaves), ``mask=True`` as the decay."""
    init, grads = problem()
    init, grads = init[:6], [gs[:6] for gs in grads[:8]]
    runs = []
    for groups in ([{"mask": False}, {"mask": True}], [{"weight_decay": 0.0}, {}]):
        params = [torch.nn.Parameter(p.clone()) for p in init]
        opt = funcopt.torch.Optimizer(
            [{"params": params[:3], **groups[0]}, {"params": params[3:], **groups[1]}],
            funcopt.schedule_free_adamw, lr=0.05, weight_decay=0.2, warmup_steps=2)
        for gs in grads:
            for p, g in zip(params, gs, strict=True):
                p.grad = g
            opt.step()
        runs.append(params + [opt.state[p][k] for p in params for k in ("z", "exp_avg_sq")])
        assert all(p not in opt._jax for p in params) or not HAS_KERNELS  # on the kernel
    for a, b in zip(*runs, strict=True):
        assert_same(a, b)
    decayed = [torch.nn.Parameter(p.clone()) for p in init[:3]]
    opt = funcopt.torch.Optimizer(decayed, funcopt.schedule_free_adamw, lr=0.05,
                                  weight_decay=0.2, warmup_steps=2)
    for gs in grads:
        for p, g in zip(decayed, gs[:3], strict=True):
            p.grad = g
        opt.step()
    assert not torch.equal(decayed[2], runs[0][2])  # the decay does change the run


def test_group_alternating_between_kernel_and_xla(monkeypatch):
    """A bfloat16 parameter with a gradient every third step only: its group alternates
    between the kernel and the XLA path (state handed over both ways), with the XLA path's
    bits throughout."""
    init, grads = problem()
    init, grads = init[2:6] + init[7:], [gs[2:6] + gs[7:] for gs in grads[:12]]

    calls = []

    def run(kernel):
        params = [torch.nn.Parameter(p.clone()) for p in init]
        _schedule_free_kernel.direct_entry()  # its pre-use check calls the kernel too
        call = _direct._direct.call
        with monkeypatch.context() as m:
            if not kernel:
                m.setattr(_direct, "_entry", lambda fn: None)
            m.setattr(_direct._direct, "call", lambda *a: (calls.append(kernel), call(*a))[1])
            opt = funcopt.torch.RAdamScheduleFree(params, lr=0.05, betas=(0.9, 0.9),
                                                  weight_decay=0.1)
            opt.train()
            for i, gs in enumerate(grads):
                for j, (p, g) in enumerate(zip(params, gs, strict=True)):
                    p.grad = None if (j == len(params) - 1 and i % 3) else g.clone()
                opt.step()
        return params + [opt.state[p][k] for p in params for k in ("z", "exp_avg_sq")], opt

    ours, opt = run(True)
    theirs, xla = run(False)
    for a, b in zip(ours, theirs, strict=True):
        assert_same(a, b)
    assert opt.param_groups[0]["weight_sum"] == xla.param_groups[0]["weight_sum"]
    assert calls == [True] * 8 or not HAS_KERNELS  # steps 1, 2, 4, 5, ...: 8 of 12
