"""funcopt.torch's schedule-free drop-ins on their C kernel (funcopt/_kernels/schedule_free.cc)
beside schedulefree 1.4.1's classes: the Trainer's two groups (decay, no decay), random
configurations, 25 float32 steps on 0-D..4-D parameters, within 1e-6 relative of the
reference on y, z and exp_avg_sq (exp_avg_sq bitwise), printed beside the reference's own
float32-vs-float64 noise; every step runs on the kernel (asserted). The drop-ins' learning
rate enters as float32, as through any funcopt.torch optimizer, so their y and z are not
bitwise the JAX transformation's with a Python-float rate;
tests/test_torch_schedule_free_kernel.py pins them bitwise to the bridge's XLA path.
"""

import pytest
from conftest import reference
from menu_parity import bitwise, problem, report, run_reference, worst
from parity import SHAPES
from test_schedule_free import CLASSES, STEPS, maker, random_config

import funcopt.torch
from funcopt import _schedule_free_kernel
from funcopt.torch import _direct

torch = reference("torch")
reference("schedulefree")

# Seeds with warmups, eps 0, decay and RAdam silent or not.
CASES = [(kind, seed) for kind in ("adamw", "sgd", "radam") for seed in (13, 22)]


def run_dropin(kind, cfg, mask, init, grads, monkeypatch):
    """The drop-in with the reference's groups; returns (optimizer, params, kernel calls)."""
    cls = getattr(funcopt.torch, CLASSES[kind])
    calls = []
    _schedule_free_kernel.direct_entry()  # its pre-use check calls the kernel too
    call = _direct._direct.call
    monkeypatch.setattr(_direct._direct, "call", lambda fn, pointers, sizes, *a: (
        calls.append(len(sizes)), call(fn, pointers, sizes, *a))[1])

    def make(params):  # the groups of test_schedule_free.maker: decay, no decay
        groups = [{"params": [p for p, m in zip(params, mask, strict=True) if m]},
                  {"params": [p for p, m in zip(params, mask, strict=True) if not m],
                   "weight_decay": 0.0}]
        opt = cls([g for g in groups if g["params"]], **cfg)
        opt.train()
        return opt

    opt, params = run_reference(torch, make, init, grads)
    return opt, params, calls


@pytest.mark.parametrize("kind, seed", CASES, ids=[f"{k}-{s}" for k, s in CASES])
def test_dropin_on_the_kernel_beside_schedulefree(kind, seed, monkeypatch):
    cfg, mask = random_config(kind, seed)
    init, grads = problem(SHAPES, STEPS, seed)
    ref, tparams = run_reference(torch, maker(kind, cfg, mask), init, grads)
    ref64, tparams64 = run_reference(torch, maker(kind, cfg, mask), init, grads, "float64")
    opt, params, calls = run_dropin(kind, cfg, mask, init, grads, monkeypatch)
    groups = sum(1 for m in (True, False) if m in mask)
    assert calls == [n for _ in range(STEPS) for n in (mask.count(True), mask.count(False))
                     if n] and len(calls) == groups * STEPS
    keys = ("z",) if kind == "sgd" else ("z", "exp_avg_sq")

    def tensors(o, ps):
        return list(ps) + [o.state[p][k] for k in keys for p in ps]

    ours, theirs, theirs64 = tensors(opt, params), tensors(ref, tparams), tensors(ref64,
                                                                                  tparams64)
    pairs = list(zip(ours, theirs, strict=True))
    noise = worst(list(zip(theirs, theirs64, strict=True)))
    dev = worst(pairs)
    report(f"{kind} {cfg} on the kernel: y, z, v", dev, noise, bitwise(pairs))
    assert dev <= 1e-6
    if kind != "sgd":
        assert bitwise(pairs[-len(params):])  # exp_avg_sq never sees the learning rate
    for g, h in zip(opt.param_groups, ref.param_groups, strict=True):
        assert g["k"] == h["k"] == STEPS
        assert abs(g["weight_sum"] - h["weight_sum"]) <= 1e-6 * h["weight_sum"]
