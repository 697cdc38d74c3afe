"""funcopt.stable_adamw's direct CPU kernel (funcopt/_kernels/stable_adamw.cc with the clipped
learning rates from funcopt/_stable_adamw_kernel.py) gives the XLA path's bits: the rule's
jitted update + apply_updates, with the learning rate as funcopt.torch passes it (float32).

Gradients spike now and then, so the per-tensor RMS clips the learning rate on some steps
(asserted), and the moments cross torch.lerp's two branches (b1_comp >= 0.5 early, < 0.5
later)."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from funcopt import _core, _kernels
from funcopt import _stable_adamw_kernel as kernel
from funcopt._stable_adamw import StableAdamW

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


def _xla_step(rule, grads, state, params):
    return kernel._xla_step(rule, grads, state, params)


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_kernel_is_the_xla_path(index):
    entry = kernel.direct_entry()
    assert entry is not None
    params, grads = _problem(index)
    rule = _rule(CONFIGS[index], list(params))
    step = jax.jit(functools.partial(_xla_step, rule))
    xla = ours = (params, _core.init(rule, params))
    clipped = 0
    for t, g in enumerate(grads):
        plan = _core.prepare(rule, g, ours[1], ours[0])
        _, leaf = kernel.direct_scalars(dataclasses.replace(rule, mask=None))(
            np.float32(1e-2), int(plan.count), [np.asarray(x) for x, *_ in plan.leaves],
            [np.asarray(f[1]) for _, _, f, _ in plan.leaves],
            np.float32([f[2] for _, _, f, _ in plan.leaves]))
        clipped += int((leaf[:, 0] < np.float32(1e-2)).sum())
        xla = step(g, xla[1], xla[0])
        ours = kernel.numpy_step(entry, rule, g, ours[1], ours[0])
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(xla), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"step {t}")
    assert clipped >= 3 * len(SHAPES)  # the clipped learning rates were exercised


def test_the_check_catches_other_rounding(monkeypatch):
    """A learning rate one ulp off (as a differently rounded clip would give) fails the
    self-check, which then refuses the kernel with a warning."""
    entry = kernel.direct_entry()
    real = kernel.direct_scalars

    def off_by_an_ulp(rule):
        fn = real(rule)

        def scalars(*args):
            c, leaf = fn(*args)
            leaf = leaf.copy()
            leaf[:, 0] = np.nextafter(leaf[:, 0], np.float32(1))
            return c, leaf
        return scalars

    monkeypatch.setattr(kernel, "direct_scalars", off_by_an_ulp)
    with pytest.warns(RuntimeWarning, match="does not round like XLA"):
        assert not kernel._agrees(entry)
