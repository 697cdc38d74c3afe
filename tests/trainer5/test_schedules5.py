"""The schedules of transformers 5.23.0 against funcopt: the new ``cosine_warmup_with_min_lr``
LambdaLR, ``GreedyLR`` (``get_scheduler("greedy")``) on random and adversarial metric
sequences (eager, jit, lax.scan), the ten 4.49 schedules (unchanged in 5.x), and
``get_scheduler``'s 5.x dispatch and errors.

Worst deviations, next to the reference's own float32 noise:
``.venv5/bin/python -m pytest -q tests/trainer5/test_schedules5.py -s -k "live or greedy_random"``.
"""

import contextlib
import io
import math
import re
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import reference

import funcopt
from funcopt import SchedulerType, get_scheduler, greedy_lr

torch = reference("torch")
hf = reference("transformers.optimization")

TOL = 3e-7  # of the peak: a couple of float32 ulps (the 4.49 schedules' measured worst: 1.9e-7)
NAMES_5 = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
           "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr",
           "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy"]


def sgd(lr):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lambda_lrs(name, peak, n, **kwargs):
    """transformers' ``name`` schedule on a real optimizer: the lr before each of n steps."""
    optimizer = sgd(peak)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = getattr(hf, name)(optimizer, **kwargs)
        out = []
        for _ in range(n):
            out.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    return np.array(out)


def noise(ref, peak):
    """The reference's own float32 noise: its float64 lr against the float32 its kernel uses."""
    return float(np.max(np.abs(np.float32(ref).astype(np.float64) - ref)) / peak)


# ------------------------------------------------------------------------------------------
# cosine_warmup_with_min_lr (new in 5.0).

NEW = funcopt.get_cosine_with_min_lr_schedule_with_warmup_lr_rate


def random_new_arguments(rng):
    peak = float(10 ** rng.uniform(-6, 1))
    kwargs = {"num_warmup_steps": int(rng.choice([0, 1, 2, int(rng.integers(3, 40))])),
              "num_training_steps": int(rng.integers(0, 300)),
              "num_cycles": float(rng.choice([0.5, rng.uniform(0.1, 3)]))}
    if rng.random() < 0.5:
        kwargs["min_lr"] = peak * float(rng.uniform(0, 1))
    else:
        kwargs["min_lr_rate"] = float(rng.choice([0.0, rng.uniform(0, 1)]))
    if rng.random() < 0.6:
        kwargs["warmup_lr_rate"] = float(rng.choice([0.0, 1.0, rng.uniform(0, 1)]))
    return peak, kwargs


def test_cosine_warmup_with_min_lr_live_against_transformers5():
    rng = np.random.default_rng(51)
    worst, worst_noise, n = 0.0, 0.0, 400
    for i in range(30):
        peak, kwargs = random_new_arguments(rng)
        ref = lambda_lrs(NEW.__name__, peak, n, **kwargs)
        schedule = NEW(peak, **kwargs)
        ours = np.asarray(schedule(jnp.arange(n)), np.float64)
        deviation = np.max(np.abs(ours - ref)) / peak
        assert deviation <= TOL, (peak, kwargs, int(np.argmax(np.abs(ours - ref))))
        if i < 4:  # an outer jit may fuse a multiply-add: an ulp at most
            np.testing.assert_allclose(jax.jit(schedule)(jnp.arange(n)), ours, rtol=2.4e-7)
        # Exact where the multiplier is exactly 1 (end of warmup) or 0. (With W = 1 and a
        # warmup_lr_rate r, the single warmup step has r: (W - 1) / max(1, W - 1) = 0.)
        w = kwargs["num_warmup_steps"]
        peak_at_end = w >= 2 or kwargs.get("warmup_lr_rate") is None
        exact = (ref == 0.0) | ((np.arange(n) == w - 1) & peak_at_end)
        np.testing.assert_array_equal(ours[exact], np.float32(ref[exact]))
        worst, worst_noise = max(worst, deviation), max(worst_noise, noise(ref, peak))
    print(f"\n{NEW.__name__}: worst |funcopt - transformers 5.23| / peak = {worst:.2e} "
          f"(transformers' own float32 rounding of its lr: {worst_noise:.2e} of the peak)")


def test_cosine_warmup_with_min_lr_differs_from_cosine_with_min_lr_by_one_step():
    """The 5.x schedule is the 4.49 one shifted one step earlier after warmup (same peak)."""
    old = funcopt.get_cosine_with_min_lr_schedule_with_warmup(2.0, 4, 40, min_lr_rate=0.1)
    new = NEW(2.0, 4, 40, min_lr_rate=0.1)
    steps = jnp.arange(4, 60)
    np.testing.assert_allclose(new(steps), old(steps + 1), rtol=3e-7)
    assert new(3) == 2.0 and old(4) == 2.0 and new(0) == 0.5 and old(0) == 0.0


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({}, ValueError, r"One of min_lr or min_lr_rate should be set"),
    ({"min_lr": 0.1, "min_lr_rate": 0.1}, ValueError, r"Only one of min_lr or min_lr_rate"),
    ({"min_lr_rate": 0.1, "warmup_lr_rate": -0.5}, ValueError,
     r"warmup_lr_rate=-0.5 is invalid: it must be >= 0"),
    ({"min_lr_rate": 0.1, "warmup_lr_rate": float("nan")}, ValueError, r"warmup_lr_rate=nan"),
    ({"min_lr_rate": 0.1, "warmup_lr_rate": "0.1"}, TypeError, r"warmup_lr_rate"),
    ({"min_lr_rate": 0.1, "num_cycles": float("inf")}, ValueError, r"num_cycles=inf"),
    ({"min_lr_rate": 0.1, "num_warmup_steps": -1}, ValueError, r"num_warmup_steps=-1"),
])
def test_cosine_warmup_with_min_lr_errors(kwargs, error, match):
    arguments = {"num_warmup_steps": 2, "num_training_steps": 10, **kwargs}
    with pytest.raises(error, match=match):
        NEW(1.0, **arguments)


def test_transformers_rejects_what_we_reject_for_min_lr():
    for kwargs in ({}, {"min_lr": 0.1, "min_lr_rate": 0.1}):
        with pytest.raises(ValueError):
            hf.get_cosine_with_min_lr_schedule_with_warmup_lr_rate(sgd(1.0), 2, 10, **kwargs)


# ------------------------------------------------------------------------------------------
# The ten schedules of 4.49: transformers 5.x did not change them (same values against 5.23).

OLD = {
    "get_constant_schedule": lambda rng, w, t: {},
    "get_constant_schedule_with_warmup": lambda rng, w, t: {"num_warmup_steps": w},
    "get_linear_schedule_with_warmup": lambda rng, w, t: {"num_warmup_steps": w,
                                                          "num_training_steps": t},
    "get_cosine_schedule_with_warmup": lambda rng, w, t: {
        "num_warmup_steps": w, "num_training_steps": t, "num_cycles": float(rng.uniform(0.1, 3))},
    "get_cosine_with_hard_restarts_schedule_with_warmup": lambda rng, w, t: {
        "num_warmup_steps": w, "num_training_steps": t, "num_cycles": int(rng.integers(1, 6))},
    "get_polynomial_decay_schedule_with_warmup": lambda rng, w, t: {
        "num_warmup_steps": w, "num_training_steps": t + 1 if t == w else t,
        "lr_end": 1e-9, "power": float(rng.uniform(0, 3))},
    "get_inverse_sqrt_schedule": lambda rng, w, t: {"num_warmup_steps": w,
                                                    "timescale": int(rng.integers(1, 500))},
    "get_cosine_with_min_lr_schedule_with_warmup": lambda rng, w, t: {
        "num_warmup_steps": w, "num_training_steps": t, "min_lr_rate": float(rng.uniform(0, 1))},
    "get_wsd_schedule": lambda rng, w, t: {
        "num_warmup_steps": w, "num_decay_steps": int(rng.integers(0, 100)),
        "num_training_steps": t, "warmup_type": str(rng.choice(["linear", "cosine", "1-sqrt"])),
        "decay_type": str(rng.choice(["linear", "cosine", "1-sqrt"])),
        "min_lr_ratio": float(rng.uniform(0, 1))},
}


@pytest.mark.parametrize("name", sorted(OLD))
def test_4_49_schedules_live_against_transformers5(name):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    worst, worst_noise, n = 0.0, 0.0, 300
    for _ in range(8):
        peak = float(10 ** rng.uniform(-5, 1))
        kwargs = OLD[name](rng, int(rng.integers(0, 40)), int(rng.integers(1, 300)))
        ref = lambda_lrs(name, peak, n, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ours = np.asarray(getattr(funcopt, name)(peak, **kwargs)(jnp.arange(n)), np.float64)
        deviation = np.max(np.abs(ours - ref)) / peak
        assert deviation <= TOL, (peak, kwargs)
        worst, worst_noise = max(worst, deviation), max(worst_noise, noise(ref, peak))
    print(f"\n{name}: worst |funcopt - transformers 5.23| / peak = {worst:.2e} "
          f"(transformers' own float32 rounding: {worst_noise:.2e})")


# ------------------------------------------------------------------------------------------
# GreedyLR.

FIELDS = ("num_bad_epochs", "num_good_epochs", "cooldown_counter", "warmup_counter",
          "reset_start", "last_epoch")


def f64_bits(x):
    return np.array([x], np.float64).view(np.uint32)


def run_torch_greedy(metrics, base_lr, **kwargs):
    """After each ``step(metric)``: the float64 lr, best and window sum as bits, and the
    counters."""
    optimizer = sgd(base_lr)
    scheduler = hf.GreedyLR(optimizer, **kwargs)
    rows = []
    for metric in metrics:
        scheduler.step(metric)
        window = scheduler._streaming_avg
        rows.append((f64_bits(optimizer.param_groups[0]["lr"]), f64_bits(scheduler.best),
                     f64_bits(window.sum if window else 0.0),
                     *(getattr(scheduler, field) for field in FIELDS)))
    return [np.array(column) for column in zip(*rows, strict=True)]


def run_funcopt_greedy(metrics, base_lr, how="eager", **kwargs):
    """The states after each update (eager, jitted update, or one lax.scan), checking that the
    updates are the gradients times the scale and that the state keeps its shapes."""
    tx = greedy_lr(**kwargs, base_learning_rate=base_lr)
    grads = {"w": jnp.array([1.0, -2.0, 0.5])}
    state = tx.init(grads)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    if how == "scan":
        def body(state, metric):
            updates, state = tx.update(grads, state, value=metric)
            return state, (state, updates)

        _, (states, updates) = jax.jit(lambda s, m: jax.lax.scan(body, s, m))(
            state, jnp.asarray(metrics, jnp.float32))
        np.testing.assert_array_equal(updates["w"], np.outer(states.scale, grads["w"]))
        assert jax.tree.map(lambda x: (x.shape[1:], x.dtype), states) == shapes
        return states
    update = jax.jit(tx.update) if how == "jit" else tx.update
    states = []
    for metric in metrics:
        updates, state = update(grads, state, value=metric)
        np.testing.assert_array_equal(updates["w"], state.scale * grads["w"])
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes
        states.append(state)
    return jax.tree.map(lambda *xs: np.stack(xs), *states)


def compare_greedy(metrics, base_lr, how="eager", **kwargs):
    """funcopt against torch, bit for bit; returns torch's lrs and funcopt's scales."""
    lr, best, window_sum, *counters = run_torch_greedy(metrics, base_lr, **kwargs)
    states = run_funcopt_greedy(metrics, base_lr, how, **kwargs)
    np.testing.assert_array_equal(states.lr_bits, lr)
    np.testing.assert_array_equal(states.best_bits, best)
    if kwargs.get("smooth"):
        np.testing.assert_array_equal(states.smoothing.sum_bits, window_sum)
    for field, column in zip(FIELDS, counters, strict=True):
        np.testing.assert_array_equal(getattr(states, field), column, err_msg=field)
    lrs = lr.view(np.float64)[:, 0]
    np.testing.assert_array_equal(states.scale, np.float32(lrs / base_lr))  # rounded once
    return lrs, states


def random_greedy_config(rng):
    base_lr = float(10 ** rng.uniform(-3, -0.5))
    return base_lr, {
        "mode": str(rng.choice(["min", "max"])),
        "threshold_mode": str(rng.choice(["abs", "rel"])),
        "factor": float(rng.choice([0.5, 0.95, rng.uniform(0.05, 0.999)])),
        "patience": int(rng.integers(0, 4)),
        "threshold": float(rng.choice([0.0, 1e-6, 0.003])),
        "cooldown": int(rng.integers(0, 3)),
        "warmup": int(rng.integers(0, 3)),
        "min_lr": base_lr * float(rng.choice([0.0, 0.01, 0.3, 2.0])),  # 2.0: above the start
        "max_lr": base_lr * float(rng.choice([1.0, 1.5, 50.0])),
        "eps": float(rng.choice([0.0, 1e-8, base_lr * 0.02])),
        "smooth": bool(rng.random() < 0.5),
        "window_size": int(rng.choice([1, 2, 5, 50])),
        "reset_start": int(rng.choice([0, 1, 3, 500])),
    }


def random_walk(rng, n, dtype):
    """A noisy metric with trends and plateaus, in float64 (not float32-representable) or in
    float32 (what a jitted update sees without x64)."""
    steps = rng.normal(0.0, 1.0, n) * rng.choice([0.0, 0.01, 0.1], size=n, p=[0.3, 0.4, 0.3])
    drift = np.repeat(rng.normal(0, 0.05, n // 20 + 1), 20)[:n]
    walk = 3.0 + np.cumsum(steps + drift)
    return [float(x) for x in walk.astype(dtype)]


@pytest.mark.parametrize("how", ["eager", "jit", "scan"])
def test_greedy_random_against_transformers5(how):
    rng = np.random.default_rng({"eager": 1, "jit": 2, "scan": 3}[how])
    worst, worst_noise, moves = 0.0, 0.0, 0
    for _ in range(8 if how == "eager" else 5):
        base_lr, kwargs = random_greedy_config(rng)
        metrics = random_walk(rng, 250, np.float64 if how == "eager" else np.float32)
        lrs, states = compare_greedy(metrics, base_lr, how, **kwargs)
        moves += int(np.sum(np.diff(lrs) != 0))
        lr32 = np.float32(lrs).astype(np.float64)  # what torch's float32 kernels use
        ours = np.asarray(states.scale, np.float64) * base_lr
        worst = max(worst, float(np.max(np.abs(ours - lrs) / lrs)))
        worst_noise = max(worst_noise, float(np.max(np.abs(lr32 - lrs) / lrs)))
    assert moves > 20  # the lr did go up and down
    print(f"\ngreedy ({how}): lr, best, window sum bit for bit; worst |scale * base - lr| / lr "
          f"= {worst:.2e} (torch's own float32 rounding of its lr: {worst_noise:.2e})")


def adversarial_cases():
    """(name, metrics, base_lr, kwargs): sequences aimed at the decisions' edges."""
    ties = [1.0, 0.75, 0.5, 0.5, 0.25, 0.25, 0.0, -0.25, -0.25, -0.5] * 6  # a - b = -threshold
    cases = [
        ("abs ties", ties, 0.1, {"threshold": 0.25, "patience": 1}),
        ("rel ties", [8.0, 6.0, 4.5, 4.5, 3.375] * 8, 0.1,
         {"threshold": 0.25, "threshold_mode": "rel", "patience": 0}),
        ("max ties", [-x for x in ties], 0.1, {"mode": "max", "threshold": 0.25, "patience": 1}),
        ("plateau to reset", [1.0] * 120, 0.1,
         {"factor": 0.5, "patience": 0, "min_lr": 0.01, "reset_start": 3, "cooldown": 1}),
        ("reset clears the window", [1.0] * 60 + [0.5 - 0.01 * i for i in range(40)], 0.1,
         {"factor": 0.7, "patience": 1, "min_lr": 0.02, "reset_start": 2, "smooth": True,
          "window_size": 4}),
        ("improving to max_lr", [10.0 - 0.1 * i for i in range(80)], 0.01,
         {"patience": 0, "max_lr": 0.2, "warmup": 1, "factor": 0.8}),
        ("eps skips", [1.0, 2.0] * 40, 1e-5, {"patience": 0, "min_lr": 0.0, "eps": 1e-8}),
        ("nan and inf", [1.0, float("nan"), 0.5, float("inf"), 0.25, float("-inf"), 0.1,
                         float("nan")] * 8, 0.1, {"patience": 0, "min_lr": 1e-3}),
        ("nan in the window", [1.0, 0.9, float("nan")] + [0.8 - 0.01 * i for i in range(50)],
         0.1, {"patience": 0, "smooth": True, "window_size": 3, "reset_start": 2,
               "min_lr": 0.05, "factor": 0.5}),
        ("negative metrics, rel", [-1.0 - 0.01 * i for i in range(30)] + [-1.2] * 30, 0.1,
         {"threshold_mode": "rel", "threshold": 1e-3, "patience": 2}),
        ("factor near 1", [3.0 - 0.001 * (i % 7) for i in range(150)], 0.05,
         {"factor": 0.999, "patience": 0, "min_lr": 0.049, "reset_start": 2}),
        ("tiny factor", [1.0, 0.5, 0.5, 0.5, 0.25, 0.1] * 10, 0.1,
         {"factor": 0.01, "patience": 0, "min_lr": 1e-6, "max_lr": 10.0}),
        ("min_lr above the start", [1.0] * 40 + [0.9 - 0.01 * i for i in range(40)], 5e-5, {}),
        ("float64 digits", [0.1 + 1e-17 * i for i in range(30)] + [0.1 - 1e-12] * 5, 0.1,
         {"threshold": 0.0, "patience": 0}),
    ]
    return cases


@pytest.mark.parametrize("case", adversarial_cases(), ids=lambda case: case[0])
def test_greedy_adversarial_against_transformers5(case):
    _, metrics, base_lr, kwargs = case
    compare_greedy(metrics, base_lr, **kwargs)


def test_greedy_adversarial_sequences_do_what_they_aim_at():
    """The adversarial cases reach their targets (a test that cannot fail proves nothing)."""
    cases = {name: (metrics, base, kwargs) for name, metrics, base, kwargs in
             adversarial_cases()}
    lrs, states = compare_greedy(*cases["plateau to reset"][:2], **cases["plateau to reset"][2])
    assert np.any(lrs == 0.01) and np.any((lrs[1:] == 0.1) & (lrs[:-1] == 0.01))  # reset
    lrs, _ = compare_greedy(*cases["improving to max_lr"][:2], **cases["improving to max_lr"][2])
    assert np.any(lrs == 0.2)
    lrs, _ = compare_greedy(*cases["eps skips"][:2], **cases["eps skips"][2])
    assert lrs.min() > 0  # 1e-5 * 0.95**n stops once a step would change it by <= 1e-8
    lrs, states = compare_greedy(*cases["nan in the window"][:2], **cases["nan in the window"][2])
    assert np.any(np.isnan(states.smoothing.sum)) and not np.isnan(states.smoothing.sum[-1])
    assert np.any(lrs[1:] > lrs[:-1])  # a reset cleared the NaN, and the lr went up again


def test_greedy_lr_stuck_one_ulp_above_min_lr_like_torch():
    """After going up from min_lr and down again, torch's float64 lr can end one ulp above
    min_lr: then it is never "at the minimum" and the reset count-down stops. funcopt's
    float64 step does the same."""
    min_lr = 1e-3
    factor = next(float(f) for f in np.linspace(0.5, 0.9, 400)
                  if min_lr / f / f * f * f > min_lr)  # torch's two ups and two downs
    metrics = [1.0] * 40 + [0.99, 0.98] + [0.98] * 20  # down to min_lr, up twice, down again
    lrs, states = compare_greedy(metrics, 0.01, factor=factor, patience=0, min_lr=min_lr,
                                 reset_start=50, threshold=0.0)
    assert np.any(lrs[:40] == min_lr)
    assert lrs[-1] > min_lr and lrs[-1] - min_lr < 1e-18  # stuck an ulp above
    assert np.all(states.reset_start[-15:] == 50)  # no count-down


def test_greedy_eager_and_jitted_metric_digits():
    """Eagerly a Python float metric keeps its float64 digits (torch's float(metric)); under an
    outer jit without x64 the metric is a float32 array, as a float32 loss tensor in torch."""
    metrics = [0.1 + 1e-12 * i for i in range(10)]
    compare_greedy(metrics, 0.1, threshold=0.0, patience=0)
    compare_greedy([float(np.float32(m)) for m in metrics], 0.1, "jit", threshold=0.0,
                   patience=0)


def test_greedy_verbose_prints_torch_messages():
    metrics = [1.0, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]
    kwargs = {"patience": 1, "factor": 0.5, "min_lr": 0.05, "reset_start": 1, "verbose": True}
    theirs = io.StringIO()
    with contextlib.redirect_stdout(theirs):
        scheduler = hf.GreedyLR(sgd(0.1), **kwargs)
        for metric in metrics:
            scheduler.step(metric)
    ours = io.StringIO()
    with contextlib.redirect_stdout(ours):
        tx = greedy_lr(**kwargs, base_learning_rate=0.1)
        state = tx.init({})
        for metric in metrics:
            _, state = tx.update({}, state, value=metric)
        jax.effects_barrier()
    assert "reset" in theirs.getvalue() and "increasing" in theirs.getvalue()
    assert ours.getvalue() == theirs.getvalue()


def test_greedy_in_a_chain_under_jit():
    lr = 1e-2
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.array([1.0, -2.0, 0.5])}
    tx = optax.chain(funcopt.adamw(lr), greedy_lr(factor=0.5, patience=0, base_learning_rate=lr))
    alone = funcopt.adamw(lr)
    state, alone_state, update = tx.init(params), alone.init(params), jax.jit(tx.update)
    for loss, scale in ((1.0, 2.0), (2.0, 1.0), (0.5, 2.0), (0.5, 1.0)):
        updates, state = update(grads, state, params, value=jnp.float32(loss))
        plain, alone_state = alone.update(grads, alone_state, params)
        assert isinstance(state[1], funcopt.GreedyLRState) and float(state[1].scale) == scale
        np.testing.assert_array_equal(updates["w"], plain["w"] * scale)


def test_greedy_state_dtypes_bf16_and_x64():
    tx = greedy_lr(smooth=True, window_size=3)
    state = tx.init({"a": jnp.zeros(2, jnp.bfloat16)})
    updates, new = tx.update({"a": jnp.ones(2, jnp.bfloat16)}, state, value=jnp.array([3.0]))
    assert updates["a"].dtype == jnp.bfloat16 and float(new.best) == 3.0
    assert jax.tree.map(lambda x: x.dtype, new) == jax.tree.map(lambda x: x.dtype, state)
    with jax.enable_x64(True):  # the same state, whatever the global setting
        assert jax.tree.map(lambda x: x.dtype, greedy_lr().init({})) == jax.tree.map(
            lambda x: x.dtype, greedy_lr().init({}))
        _, state64 = greedy_lr().update({}, greedy_lr().init({}), value=np.float64(0.1))
        assert state64.lr_bits.dtype == jnp.uint32 and float(state64.best) == 0.1


def test_greedy_value_is_required():
    tx = greedy_lr()
    with pytest.raises(TypeError, match="value"):
        tx.update({}, tx.init({}))
    with pytest.raises(ValueError, match=r"value must be a scalar"):
        tx.update({}, tx.init({}), value=jnp.ones(3))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"mode": "maximum"}, ValueError, r"mode='maximum' is invalid: it must be one of"),
    ({"threshold_mode": "relative"}, ValueError, r"threshold_mode='relative' is invalid"),
    ({"factor": 1.0}, ValueError, r"factor=1.0 is invalid: it must be in \(0.0, 1.0\)"),
    ({"factor": 0.0}, ValueError, r"factor=0.0 is invalid.*divides by zero"),
    ({"factor": -0.5}, ValueError, r"factor=-0.5"),
    ({"patience": -1}, ValueError, r"patience=-1"),
    ({"patience": 2.5}, TypeError, r"patience must be an integer"),
    ({"patience": 2**31}, ValueError, r"patience=2147483648 is invalid"),
    ({"cooldown": -2}, ValueError, r"cooldown=-2"),
    ({"warmup": -1}, ValueError, r"warmup=-1"),
    ({"threshold": -1e-4}, ValueError, r"threshold=-0.0001"),
    ({"min_lr": -1.0}, ValueError, r"min_lr=-1.0"),
    ({"min_lr": [1e-3, 1e-4]}, ValueError, r"expected 1 min_lrs, got 2"),
    ({"max_lr": (1.0, 2.0)}, ValueError, r"expected 1 max_lrs, got 2"),
    ({"max_lr": "1"}, TypeError, r"max_lr"),
    ({"eps": float("nan")}, ValueError, r"eps=nan"),
    ({"smooth": 1}, TypeError, r"smooth must be a bool"),
    ({"verbose": "yes"}, TypeError, r"verbose must be a bool"),
    ({"smooth": True, "window_size": 0}, ValueError, r"window_size=0 is invalid"),
    ({"reset_start": -1}, ValueError, r"reset_start=-1"),
    ({"base_learning_rate": 0.0}, ValueError, r"base_learning_rate=0.0 is invalid: it must be > 0"),
])
def test_greedy_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        greedy_lr(**kwargs)


def test_greedy_one_element_bounds_are_accepted():
    assert float(greedy_lr(min_lr=[0.2], max_lr=(3.0,)).init({}).lr) == 1.0


def test_transformers_rejects_what_we_reject():
    for kwargs in ({"mode": "maximum"}, {"threshold_mode": "relative"}, {"factor": 1.0},
                   {"min_lr": [1e-3, 1e-4]}):
        with pytest.raises(ValueError):
            hf.GreedyLR(sgd(1.0), **kwargs)
        with pytest.raises(ValueError):
            greedy_lr(**kwargs)
    scheduler = hf.GreedyLR(sgd(1.0), factor=0.0, patience=0)  # accepted, fails later:
    with pytest.raises(ZeroDivisionError):
        scheduler.step(1.0)
    scheduler = hf.GreedyLR(sgd(1.0), smooth=True, window_size=0)
    with pytest.raises(ZeroDivisionError):
        scheduler.step(1.0)


# ------------------------------------------------------------------------------------------
# get_scheduler: transformers 5.x's dispatch.


def test_scheduler_type_matches_transformers5():
    trainer_utils = reference("transformers.trainer_utils")
    assert [m.value for m in trainer_utils.SchedulerType] == NAMES_5
    assert [m.name for m in trainer_utils.SchedulerType] == [m.name for m in SchedulerType]
    assert [m.value for m in SchedulerType] == NAMES_5


KWARG_POOL = {
    "num_cycles": 0.7, "lr_end": 1e-5, "power": 2.0, "min_lr_rate": 0.1, "min_lr": 0.02,
    "num_decay_steps": 5, "num_stable_steps": 3, "warmup_type": "cosine",
    "decay_type": "1-sqrt", "min_lr_ratio": 0.2, "timescale": 7, "foo": 1, "patience": 2,
    "factor": 0.5, "mode": "max", "num_warmup_steps": 4, "warmup_lr_rate": 0.3, "warmup": 2,
    "max_lr": 0.5, "smooth": True, "window_size": 3, "reset_start": 4, "cooldown": 1,
}


def outcome(function, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = function(*args, **kwargs)
        except (TypeError, ValueError) as err:
            message = re.sub(r"\b(transformers\.optimization|funcopt\._\w+)\.", "", str(err))
            return ("error", type(err).__name__, message), None
    warned = tuple(str(w.message) for w in caught if "num_stable_steps will be used"
                   in str(w.message))
    return ("ok", warned), result


def check_same(ours, theirs, case):
    if theirs[:2] == ("error", "TypeError") and "unexpected keyword" in theirs[2]:
        key = re.search(r"argument '(\w+)'", theirs[2]).group(1)
        assert ours[:2] == theirs[:2] and f"argument '{key}'. " in ours[2], case
        assert "scheduler_specific_kwargs for" in ours[2], case  # lists the accepted keys
    elif case[0] in ("reduce_lr_on_plateau", "greedy") and theirs[0] == "error":
        assert ours[:2] == theirs[:2], case  # torch names its class, funcopt its function
    else:
        assert ours == theirs, case


def check_metric_driven(name, scheduler, optimizer, transformation, lr):
    state = transformation.init({})
    for metric in [3.0, 2.0, 2.0, 2.0, 2.5, 2.5, 1.5, 1.0, 0.5, 0.4, 0.3, 1.0, 1.0, 1.0] * 3:
        scheduler.step(metric)
        _, state = transformation.update({}, state, value=metric)
        expected = optimizer.param_groups[0]["lr"]
        if name == "greedy":
            assert float(state.lr) == expected
        np.testing.assert_allclose(float(state.scale) * lr, expected, rtol=1e-7)


def test_get_scheduler_random_calls_against_transformers5():
    rng = np.random.default_rng(5)
    counts = {"ok": 0, "error": 0}
    for _ in range(300):
        name = str(rng.choice(NAMES_5 + ["Linear", "greedy", "inverse_sqrt"]))
        lr = 0.1
        w = None if rng.random() < 0.15 else int(rng.integers(0, 20))
        t = None if rng.random() < 0.15 else (w or 0) + int(rng.integers(1, 60))
        keys = rng.choice(sorted(KWARG_POOL), size=int(rng.integers(0, 3)), replace=False)
        kwargs = None if rng.random() < 0.2 else {str(k): KWARG_POOL[k] for k in keys}
        optimizer = sgd(lr)
        theirs, scheduler = outcome(
            hf.get_scheduler, name, optimizer, num_warmup_steps=w, num_training_steps=t,
            scheduler_specific_kwargs=None if kwargs is None else dict(kwargs))
        ours, schedule = outcome(
            get_scheduler, name, lr, num_warmup_steps=w, num_training_steps=t,
            scheduler_specific_kwargs=None if kwargs is None else dict(kwargs))
        case = (name, w, t, kwargs)
        counts[theirs[0]] += 1
        check_same(ours, theirs, case)
        if theirs[0] == "ok" and name in ("reduce_lr_on_plateau", "greedy"):
            check_metric_driven(name, scheduler, optimizer, schedule, lr)
        elif theirs[0] == "ok":
            lrs = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch: lr_scheduler.step() before optimizer's
                for _ in range(80):
                    lrs.append(optimizer.param_groups[0]["lr"])
                    scheduler.step()
            np.testing.assert_allclose(schedule(jnp.arange(80)), lrs, rtol=0, atol=TOL * lr)
    assert counts["ok"] > 80 and counts["error"] > 80


def test_get_scheduler_unknown_key_names_it_and_lists_the_accepted_ones():
    with pytest.raises(TypeError) as info:
        get_scheduler("greedy", 0.1, scheduler_specific_kwargs={"bogus": 1})
    message = str(info.value)
    assert message.startswith("greedy_lr() got an unexpected keyword argument 'bogus'.")
    assert message.endswith(
        "scheduler_specific_kwargs for 'greedy' may hold: mode, factor, patience, threshold, "
        "threshold_mode, cooldown, warmup, min_lr, max_lr, eps, verbose, smooth, window_size, "
        "reset_start.")
    with pytest.raises(TypeError, match=r"'bogus'\. scheduler_specific_kwargs for "
                                         r"'cosine_warmup_with_min_lr' may hold: num_cycles, "
                                         r"min_lr, min_lr_rate, warmup_lr_rate\.$"):
        get_scheduler("cosine_warmup_with_min_lr", 0.1, 2, 10, {"bogus": 1, "min_lr": 0.01})
    with pytest.raises(TypeError, match=r"may hold: timescale\.$"):
        get_scheduler("inverse_sqrt", 0.1, 2, 10, {"bogus": 1})
    with pytest.raises(TypeError, match=r"'learning_rate'"):  # get_scheduler passes it
        get_scheduler("linear", 0.1, 2, 10, {"learning_rate": 1.0})


def test_get_scheduler_greedy_and_inverse_sqrt_follow_5x():
    greedy = get_scheduler("greedy", 0.1, None, None, {"patience": 0, "factor": 0.5})
    assert isinstance(greedy.init({}), funcopt.GreedyLRState)
    assert float(greedy.init({}).lr) == 0.1  # base_learning_rate = learning_rate
    theirs = hf.get_scheduler("inverse_sqrt", sgd(1.0), 5, None, {"timescale": 3})
    assert theirs.lr_lambdas[0](9) == pytest.approx(math.sqrt(3 / 7))
    ours = get_scheduler("inverse_sqrt", 1.0, 5, None, {"timescale": 3})
    assert float(ours(9)) == pytest.approx(math.sqrt(3 / 7), rel=1e-7)
    with pytest.raises(ValueError, match="base_learning_rate"):
        get_scheduler("greedy", 0.0)
