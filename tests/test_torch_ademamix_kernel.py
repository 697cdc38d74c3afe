"""funcopt.torch's AdEMAMix (bitsandbytes' 32-bit AdEMAMix drop-in) on the ademamix kernel's
direct entry point (funcopt/_kernels/ademamix.cc, ``funcopt_ademamix_f32``): bit for bit the
jitted XLA path (``funcopt.ademamix``'s update + ``apply_updates`` with the learning rate as
funcopt.torch passes it, a traced float32 value), whose parity with bitsandbytes itself is
tested in ``tests/trainer5``. A bf16 parameter takes the XLA path."""

import numpy as np
import pytest
from test_torch_direct import STEPS, assert_bitwise, problem, run_jax, run_torch
from torch_model import one_torch_thread, torch  # noqa: F401  (an autouse fixture)

import funcopt
from funcopt import _fused_ademamix, _kernels
from funcopt.torch import _direct

HAS_COMPILER = _kernels.compiler() is not None

CONFIGS = [dict(weight_decay=0.01),
           dict(b1=0.8, b2=0.99, b3=0.999, alpha=3.0, t_alpha=10, t_beta3=7, eps=1e-6,
                weight_decay=0.1),
           dict(b1=0.0, alpha=-1.0, eps=0.0, weight_decay=0.0)]


@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("schedule", ["decaying", "constant"])
def test_ademamix_kernel_is_the_xla_path(kw, schedule, monkeypatch):
    """(A constant learning rate reads the step scalars from a table made ahead.)"""
    entry = _fused_ademamix.direct_entry()  # built and checked before calls are counted
    assert entry is not None or not HAS_COMPILER
    calls = []
    call = _direct._direct.call
    monkeypatch.setattr(_direct._direct, "call", lambda fn, *a: calls.append(fn) or call(fn, *a))
    params, grads = problem()
    lrs = [1e-2 * (1 - i / 40) if schedule == "decaying" else 3e-3 for i in range(STEPS)]
    ours, opt = run_torch(funcopt.ademamix, kw, params, grads, lrs)
    theirs, state = run_jax(funcopt.ademamix, kw, params, grads, lrs)
    assert_bitwise(ours, theirs)
    for key in ("state1", "state2"):
        assert_bitwise([opt.state[p][key] for p in ours], getattr(state, key))
    assert [opt.state[p]["step"] for p in ours] == [STEPS] * len(ours)
    taken = _direct.takes(opt, ours, [1] * 5, ("state1", "state2"), stacked=("state1",))
    assert taken == [True] * 4 + [False] or not HAS_COMPILER
    if HAS_COMPILER:  # every step went through the kernel
        assert calls == [entry[0]] * STEPS
    assert list(opt.state[ours[0]]) == ["step", "state1", "state2"]
    assert np.shape(opt.state[ours[0]]["state1"]) == (2, *ours[0].shape)
