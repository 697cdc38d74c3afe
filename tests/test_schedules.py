"""The nine LambdaLR schedules: HF's own test expectations, the golden values, a live
comparison with transformers 4.49.0 on random arguments, boundary properties (hypothesis),
jit/vmap/pickle, and every error path.

Worst deviations from transformers, per schedule type:
``.venv/bin/python -m pytest tests/test_schedules.py -k live -s -q``.
"""

import math
import pickle
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import golden, reference
from hypothesis import given, settings
from hypothesis import strategies as st

import funcopt
from funcopt import (
    get_constant_schedule,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_cosine_with_hard_restarts_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_inverse_sqrt_schedule,
    get_linear_schedule_with_warmup,
    get_polynomial_decay_schedule_with_warmup,
    get_wsd_schedule,
)

# A deviation of a couple of float32 ulps of the peak: measured worst is 1.9e-7.
TOL = 3e-7
COMMON = {"num_warmup_steps": 2, "num_training_steps": 10}


def lrs(schedule, n):
    return np.asarray(schedule(jnp.arange(n)), np.float64)


# ------------------------------------------------------------------------------------------
# HF's test_schedulers (spec §9.1): base lr 10, 10 steps, tolerance 1e-2.

HF_TEST_SCHEDULERS = [
    (get_constant_schedule, {}, [10.0] * 10),
    (get_constant_schedule_with_warmup, {"num_warmup_steps": 4},
     [0.0, 2.5, 5.0, 7.5, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]),
    (get_linear_schedule_with_warmup, COMMON,
     [0.0, 5.0, 10.0, 8.75, 7.5, 6.25, 5.0, 3.75, 2.5, 1.25]),
    (get_cosine_schedule_with_warmup, COMMON,
     [0.0, 5.0, 10.0, 9.61, 8.53, 6.91, 5.0, 3.08, 1.46, 0.38]),
    (get_cosine_with_hard_restarts_schedule_with_warmup, {**COMMON, "num_cycles": 2},
     [0.0, 5.0, 10.0, 8.53, 5.0, 1.46, 10.0, 8.53, 5.0, 1.46]),
    (get_polynomial_decay_schedule_with_warmup, {**COMMON, "power": 2.0, "lr_end": 1e-7},
     [0.0, 5.0, 10.0, 7.656, 5.625, 3.906, 2.5, 1.406, 0.625, 0.156]),
    (get_inverse_sqrt_schedule, {"num_warmup_steps": 2},
     [0.0, 5.0, 10.0, 8.165, 7.071, 6.325, 5.774, 5.345, 5.0, 4.714]),
    (get_wsd_schedule, {**COMMON, "num_decay_steps": 2, "min_lr_ratio": 0.0},
     [0.0, 5.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 5.0]),
]


@pytest.mark.parametrize(("fn", "kwargs", "expected"), HF_TEST_SCHEDULERS,
                         ids=[c[0].__name__ for c in HF_TEST_SCHEDULERS])
def test_hf_test_schedulers(fn, kwargs, expected):
    np.testing.assert_allclose(lrs(fn(10.0, **kwargs), 10), expected, rtol=0, atol=1e-2)


# ------------------------------------------------------------------------------------------
# Golden values (transformers 4.49.0 run, base lr 10, steps 0..11), checked without torch.

GOLDEN_FUNCTIONS = [  # (prefix of the golden entry, function); the longest prefix wins
    ("constant_with_warmup", get_constant_schedule_with_warmup),
    ("constant", get_constant_schedule),
    ("linear", get_linear_schedule_with_warmup),
    ("cosine_hard_restarts", get_cosine_with_hard_restarts_schedule_with_warmup),
    ("cosine_min_lr", get_cosine_with_min_lr_schedule_with_warmup),
    ("cosine", get_cosine_schedule_with_warmup),
    ("polynomial", get_polynomial_decay_schedule_with_warmup),
    ("inverse_sqrt", get_inverse_sqrt_schedule),
    ("wsd", get_wsd_schedule),
]
GOLDEN = golden("golden_pt")["schedules_base_lr_10"]


def golden_function(name):
    return next(fn for prefix, fn in GOLDEN_FUNCTIONS if name.startswith(prefix))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_schedules(name):
    entry = GOLDEN[name]
    kwargs = entry.get("kwargs", {})
    ref = np.array(entry["lrs_steps0to11"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # WSD with both T and S given
        ours = lrs(golden_function(name)(10.0, **kwargs), 12)
    assert np.max(np.abs(ours - ref)) <= TOL * 10.0, (ours, ref)
    # Exact (to the float32 rounding of the reference) at step 0, at the end of warmup and
    # wherever the reference is 0 or the peak.
    w = kwargs.get("num_warmup_steps", 0)
    exact = (ref == 0.0) | (ref == 10.0) | np.isin(np.arange(12), [0, w])
    np.testing.assert_array_equal(ours[exact], np.float32(ref[exact]))


def test_golden_polynomial_ends_exactly_at_lr_end():
    ours = lrs(get_polynomial_decay_schedule_with_warmup(10.0, 2, 10, power=2.0), 14)
    assert np.all(ours[10:] == np.float32(1e-7))


def test_golden_error_messages():
    errors = golden("golden_pt")["errors"]

    def message(fn, *args, **kwargs):
        with pytest.raises(ValueError) as info:
            fn(*args, **kwargs)
        return f"ValueError: {info.value}"

    assert message(get_polynomial_decay_schedule_with_warmup, 1e-7, 2, 10) == errors[
        "poly_lr_end_eq_init"]
    assert message(get_cosine_with_min_lr_schedule_with_warmup, 1.0, 2, 10) == errors[
        "cos_min_lr_none"]
    assert message(get_cosine_with_min_lr_schedule_with_warmup, 1.0, 2, 10, min_lr=0.1,
                   min_lr_rate=0.1) == errors["cos_min_lr_both"]
    assert message(get_wsd_schedule, 1.0, 2, 2) == errors["wsd_no_training_no_stable"]
    assert message(get_wsd_schedule, 1.0, 2, 2, 10, warmup_type="exp") == errors[
        "wsd_bad_type"]


# ------------------------------------------------------------------------------------------
# Live comparison with transformers 4.49.0: a real torch optimizer, HF's get_* function,
# LambdaLR stepped and the group's lr read before each step (what update n uses).


def hf_scheduler(fn, peak, **kwargs):
    """transformers' scheduler named like ``fn`` on a real torch optimizer with lr ``peak``."""
    torch = reference("torch")
    hf = reference("transformers.optimization")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optimizer, getattr(hf, fn.__name__)(optimizer, **kwargs)


def hf_lrs(fn, peak, n, **kwargs):
    optimizer, scheduler = hf_scheduler(fn, peak, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = []
        for _ in range(n):
            out.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    return np.array(out)


def random_arguments(fn, rng):
    """Random valid arguments for ``fn``, edge regimes included (W = 0, T < W, after T)."""
    peak = float(10 ** rng.uniform(-6, 1))
    w, t = int(rng.integers(0, 40)), int(rng.integers(0, 300))
    if fn is get_constant_schedule:
        return peak, {}
    if fn is get_constant_schedule_with_warmup:
        return peak, {"num_warmup_steps": w}
    if fn is get_inverse_sqrt_schedule:
        kwargs = {"num_warmup_steps": w}
        choice = rng.integers(3)
        if choice:
            kwargs["timescale"] = (int(rng.integers(1, 1000)) if choice == 1
                                   else float(rng.uniform(0.5, 500)))
        return peak, kwargs
    if fn is get_wsd_schedule:
        kwargs = {"num_warmup_steps": w, "num_decay_steps": int(rng.integers(0, 100)),
                  "warmup_type": str(rng.choice(["linear", "cosine", "1-sqrt"])),
                  "decay_type": str(rng.choice(["linear", "cosine", "1-sqrt"])),
                  "min_lr_ratio": float(rng.uniform(0, 1)) if rng.random() < 0.7 else 0.0,
                  "num_cycles": float(rng.uniform(0.1, 2))}
        if rng.random() < 0.5:
            kwargs["num_training_steps"] = t
        else:
            kwargs["num_stable_steps"] = int(rng.integers(0, 100))
        return peak, kwargs
    kwargs = {"num_warmup_steps": w, "num_training_steps": t}
    if fn in (get_cosine_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup):
        kwargs["num_cycles"] = float(rng.uniform(0.1, 3))
    if fn is get_cosine_with_hard_restarts_schedule_with_warmup:
        kwargs["num_cycles"] = (int(rng.integers(1, 6)) if rng.random() < 0.5
                                else float(rng.uniform(0.2, 4)))
    if fn is get_cosine_with_min_lr_schedule_with_warmup:
        if rng.random() < 0.5:
            kwargs["min_lr"] = peak * float(rng.uniform(0, 1))
        else:
            kwargs["min_lr_rate"] = float(rng.uniform(0, 1))
    if fn is get_polynomial_decay_schedule_with_warmup:
        kwargs["num_training_steps"] = t if t != w else t + 1
        kwargs["lr_end"] = peak * float(rng.uniform(0, 0.99))
        kwargs["power"] = float(rng.uniform(0, 3))
    return peak, kwargs


ALL_SCHEDULES = [fn for _, fn in GOLDEN_FUNCTIONS]


@pytest.mark.parametrize("fn", ALL_SCHEDULES, ids=lambda fn: fn.__name__)
def test_live_against_transformers(fn):
    rng = np.random.default_rng(zlib.crc32(fn.__name__.encode()))
    worst, n = 0.0, 400
    for _ in range(25):
        peak, kwargs = random_arguments(fn, rng)
        ref = hf_lrs(fn, peak, n, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ours = lrs(fn(peak, **kwargs), n)
        deviation = np.max(np.abs(ours - ref)) / peak
        assert deviation <= TOL, (peak, kwargs, int(np.argmax(np.abs(ours - ref))))
        worst = max(worst, deviation)
    print(f"\n{fn.__name__}: worst |funcopt - transformers| / peak = {worst:.2e}")


# ------------------------------------------------------------------------------------------
# Properties at the boundaries: step 0, W - 1, W, W + 1, T - 1, T, T + 1 and far beyond,
# against HF's own lambdas (float64), and exact values where the math is exact.


def hf_lambda(fn, peak, **kwargs):
    _, scheduler = hf_scheduler(fn, peak, **kwargs)
    return lambda s: peak * scheduler.lr_lambdas[0](s)


counts = st.integers(0, 2000)
peaks = st.floats(1e-7, 100.0)
cycles = st.floats(0.05, 5.0)


@st.composite
def schedule_cases(draw):
    fn = draw(st.sampled_from(ALL_SCHEDULES))
    w, t = draw(counts), draw(counts)
    kwargs = {"num_warmup_steps": w, "num_training_steps": t}
    if fn is get_constant_schedule:
        kwargs = {}
    elif fn in (get_constant_schedule_with_warmup, get_inverse_sqrt_schedule):
        kwargs = {"num_warmup_steps": w}
        if fn is get_inverse_sqrt_schedule:
            kwargs["timescale"] = draw(st.none() | st.integers(1, 5000))
    elif fn is get_cosine_schedule_with_warmup:
        kwargs["num_cycles"] = draw(cycles)
    elif fn is get_cosine_with_hard_restarts_schedule_with_warmup:
        kwargs["num_cycles"] = draw(st.integers(1, 8) | cycles)
    elif fn is get_cosine_with_min_lr_schedule_with_warmup:
        kwargs["num_cycles"] = draw(cycles)
        kwargs["min_lr_rate"] = draw(st.floats(0.0, 1.0))
    elif fn is get_polynomial_decay_schedule_with_warmup:
        kwargs["num_training_steps"] = t if t != w else t + 1
        kwargs["lr_end"] = draw(st.floats(0.0, 0.999))  # times the peak, below
        kwargs["power"] = draw(st.floats(0.0, 4.0))
    elif fn is get_wsd_schedule:
        kwargs = {"num_warmup_steps": w, "num_decay_steps": draw(counts),
                  "num_stable_steps": draw(counts),
                  "warmup_type": draw(st.sampled_from(["linear", "cosine", "1-sqrt"])),
                  "decay_type": draw(st.sampled_from(["linear", "cosine", "1-sqrt"])),
                  # XLA on CPU flushes subnormal float32 results to zero: keep lr * ratio
                  # normal (a ratio of 1e-38 would give 0 under jit, 1.2e-38 eagerly).
                  "min_lr_ratio": draw(st.one_of(st.just(0.0), st.floats(1e-6, 1.0))),
                  "num_cycles": draw(cycles)}
    peak = draw(peaks)
    if "lr_end" in kwargs:
        kwargs["lr_end"] *= peak
    return fn, peak, kwargs


def boundary_steps(kwargs):
    w = kwargs.get("num_warmup_steps", 0)
    t = kwargs.get("num_training_steps")
    if t is None:
        t = w + kwargs.get("num_stable_steps", 0) + kwargs.get("num_decay_steps", 0)
    steps = {0, 1, w - 1, w, w + 1, t - 1, t, t + 1, 2 * t + 7, 5 * t + w + 3, 100_000}
    if "num_stable_steps" in kwargs:
        d = w + kwargs["num_stable_steps"]
        steps |= {d - 1, d, d + 1}
    return sorted(s for s in steps if s >= 0)


@settings(max_examples=60, deadline=None)
@given(schedule_cases())
def test_boundaries_against_transformers_lambdas(case):
    fn, peak, kwargs = case
    reference_lr = hf_lambda(fn, peak, **kwargs)
    schedule = fn(peak, **kwargs)
    steps = boundary_steps(kwargs)
    ours = np.asarray(schedule(jnp.asarray(steps)), np.float64)
    ref = np.array([reference_lr(s) for s in steps])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL * peak)


@settings(max_examples=40, deadline=None)
@given(schedule_cases())
def test_exact_boundary_values(case):
    check_exact_boundary_values(*case, jit=False)


@settings(max_examples=12, deadline=None)
@given(schedule_cases())
def test_exact_boundary_values_inside_jit(case):
    """Inside an outer jit the configuration is constant-folded: still exact."""
    check_exact_boundary_values(*case, jit=True)


def check_exact_boundary_values(fn, peak, kwargs, jit):
    schedule = fn(peak, **kwargs)
    if jit:
        schedule = jax.jit(schedule)
    w = kwargs.get("num_warmup_steps", 0)
    t = kwargs.get("num_training_steps")
    lr = np.float32(peak)
    if fn is not get_constant_schedule and w > 0:
        assert schedule(0) == 0.0 or fn is get_wsd_schedule
    if fn in (get_constant_schedule, get_constant_schedule_with_warmup, get_inverse_sqrt_schedule,
              get_cosine_schedule_with_warmup, get_cosine_with_hard_restarts_schedule_with_warmup,
              get_cosine_with_min_lr_schedule_with_warmup):
        assert schedule(w) == lr
    if fn is get_linear_schedule_with_warmup:
        assert schedule(w) == (lr if t > w else 0.0)
        assert schedule(max(t, w) + 3) == 0.0
    if fn is get_cosine_with_hard_restarts_schedule_with_warmup:
        assert schedule(max(t, w + 1) + 5) == 0.0
    if fn is get_polynomial_decay_schedule_with_warmup:
        end = np.float32(kwargs["lr_end"])
        assert schedule(w) == (lr if t > w else end)
        if t > w and kwargs["power"] > 0:
            assert schedule(t) == end
        assert schedule(max(t, w) + 1) == end
    if fn is get_wsd_schedule:
        r = kwargs["min_lr_ratio"]
        stable = w + kwargs["num_stable_steps"]
        if w > 0:
            assert schedule(0) == np.float32(lr * np.float32(r))
        if kwargs["num_stable_steps"] > 0:
            assert schedule(w) == lr and schedule(stable - 1) == lr
        end = stable + kwargs["num_decay_steps"]
        assert schedule(end) == np.float32(lr * np.float32(r))
        assert schedule(end + 1000) == schedule(end)


@settings(max_examples=30, deadline=None)
@given(schedule_cases())
def test_schedules_stay_in_range(case):
    fn, peak, kwargs = case
    values = lrs(fn(peak, **kwargs), 2500)
    assert np.all(values >= 0.0) and np.all(values <= np.float32(peak))
    assert np.all(np.isfinite(values))


# ------------------------------------------------------------------------------------------
# jit, vmap, dtypes, integer types, pickling, use inside optax.


@pytest.mark.parametrize("fn", ALL_SCHEDULES, ids=lambda fn: fn.__name__)
def test_jit_vmap_and_dtypes(fn):
    peak, kwargs = random_arguments(fn, np.random.default_rng(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        schedule = fn(peak, **kwargs)
    steps = jnp.arange(500)
    batched = schedule(steps)
    assert batched.dtype == jnp.float32 and batched.shape == (500,)
    eager = np.stack([np.asarray(schedule(int(s))) for s in range(0, 500, 37)])
    np.testing.assert_array_equal(np.asarray(batched)[::37], eager)
    np.testing.assert_array_equal(np.asarray(jax.vmap(schedule)(steps))[::37], eager)
    # XLA contracts a * b + c into a fused multiply-add under jit: at most an ulp apart.
    np.testing.assert_allclose(jax.jit(schedule)(steps), batched, rtol=2.4e-7, atol=0)
    assert schedule(3).shape == () and schedule(3).dtype == jnp.float32
    for dtype in (np.int8, np.int16, np.int32, np.uint32, np.int64):
        assert schedule(dtype(3)) == schedule(3)
    assert schedule(jnp.float32(3.0)) == schedule(3)
    with jax.enable_x64(True):
        assert fn(peak, **kwargs)(jnp.arange(5)).dtype == jnp.float32
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(schedule))(steps), batched)


def test_steps_beyond_training_keep_their_accuracy():
    """The cosine phase is reduced exactly: no drift however many periods have passed."""
    for c in (0.5, 1.3, 2.7182818):
        schedule = get_cosine_schedule_with_warmup(1.0, 100, 50, num_cycles=c)
        steps = np.array([101, 1234, 99_999, 1_000_000, 16_000_000])
        expected = [0.5 * (1 + math.cos(math.pi * c * 2 * (s - 100))) for s in steps]
        np.testing.assert_allclose(schedule(jnp.asarray(steps)), expected, atol=1e-7)


def test_schedule_drives_optax_and_funcopt():
    schedule = get_linear_schedule_with_warmup(0.5, 2, 10)
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.ones(3)}
    for opt in (optax.sgd(schedule), optax.inject_hyperparams(optax.sgd)(learning_rate=schedule),
                funcopt.adamw(learning_rate=schedule)):
        state = opt.init(params)
        update = jax.jit(opt.update)
        moved = []
        for _ in range(4):
            updates, state = update(grads, state, params)
            moved.append(float(jnp.abs(updates["w"][0])))
        assert moved[0] == 0.0 and moved[1] > 0.0  # lr(0) = 0, lr(1) = 0.25


def test_traced_peak_learning_rate():
    peaks = jnp.array([1.0, 2.0, 4.0])
    out = jax.vmap(lambda lr: get_cosine_schedule_with_warmup(lr, 2, 10)(6))(peaks)
    np.testing.assert_array_equal(out, [0.5, 1.0, 2.0])


# ------------------------------------------------------------------------------------------
# Errors: each names the argument, its value and what is allowed.


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: get_constant_schedule(-1.0), ValueError, r"learning_rate=-1.0 is invalid"),
    (lambda: get_constant_schedule(None), TypeError, r"learning_rate"),
    (lambda: get_constant_schedule("1e-3"), TypeError, r"learning_rate"),
    (lambda: get_constant_schedule_with_warmup(1.0, -1), ValueError, r"num_warmup_steps=-1"),
    (lambda: get_constant_schedule_with_warmup(1.0, 2.5), TypeError, r"num_warmup_steps"),
    (lambda: get_constant_schedule_with_warmup(1.0, 2**31), ValueError, r"must be < 2\*\*31"),
    (lambda: get_linear_schedule_with_warmup(1.0, 2, None), TypeError, r"num_training_steps"),
    (lambda: get_linear_schedule_with_warmup(1.0, 2, -5), ValueError, r"num_training_steps=-5"),
    (lambda: get_cosine_schedule_with_warmup(1.0, 2, 10, float("nan")), ValueError,
     r"num_cycles=nan is invalid: it must be a finite number"),
    (lambda: get_cosine_with_hard_restarts_schedule_with_warmup(1.0, 2, 10, float("inf")),
     ValueError, r"num_cycles=inf"),
    (lambda: get_polynomial_decay_schedule_with_warmup(1.0, 2, 10, lr_end=2.0), ValueError,
     r"lr_end \(2.0\) must be smaller than initial lr \(1.0\)"),
    (lambda: get_polynomial_decay_schedule_with_warmup(1.0, 5, 5), ValueError,
     r"num_training_steps=5 equals num_warmup_steps"),
    (lambda: get_polynomial_decay_schedule_with_warmup(1.0, 2, 10, power=-1.0), ValueError,
     r"power=-1.0 is invalid"),
    (lambda: get_polynomial_decay_schedule_with_warmup(1.0, 2, 10, lr_end=-1e-3), ValueError,
     r"lr_end=-0.001 is invalid"),
    (lambda: get_inverse_sqrt_schedule(1.0, 2, timescale=0), ValueError, r"timescale=0"),
    (lambda: get_inverse_sqrt_schedule(1.0, 2, timescale=-2.5), ValueError, r"timescale=-2.5"),
    (lambda: get_cosine_with_min_lr_schedule_with_warmup(0.0, 2, 10, min_lr=0.0), ValueError,
     r"min_lr needs learning_rate > 0"),
    (lambda: get_cosine_with_min_lr_schedule_with_warmup(1.0, 2, 10, min_lr_rate="x"),
     TypeError, r"min_lr_rate"),
    (lambda: get_wsd_schedule(1.0, 2, 3, 10, decay_type="exp"), ValueError,
     r"Unknown decay type: exp, expected 'linear', 'cosine' or '1-sqrt'"),
    (lambda: get_wsd_schedule(1.0, 2, 3, 10, min_lr_ratio=1.5), ValueError,
     r"min_lr_ratio=1.5 is invalid: it must be >= 0.0 and <= 1.0"),
    (lambda: get_wsd_schedule(1.0, 2, -3, 10), ValueError, r"num_decay_steps=-3"),
    (lambda: get_wsd_schedule(1.0, 2, 3, num_stable_steps=-1), ValueError,
     r"num_stable_steps=-1"),
    (lambda: get_linear_schedule_with_warmup(1.0, 2, 10)(True), TypeError, r"step must be"),
    (lambda: get_linear_schedule_with_warmup(1.0, 2, 10)(1j), TypeError, r"step must be"),
])
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_wsd_warns_when_both_lengths_are_given():
    with pytest.warns(UserWarning, match="num_stable_steps will be used"):
        schedule = get_wsd_schedule(1.0, 2, 2, num_training_steps=100, num_stable_steps=3)
    assert schedule(5) == 1.0 and schedule(6) < 1.0  # S = 3, not 100 - 2 - 2


def test_wsd_negative_stable_phase_is_kept():
    """S = T - W - D < 0 is not an error in transformers: the decay starts inside warmup."""
    schedule = get_wsd_schedule(1.0, 4, 4, num_training_steps=6, decay_type="linear")
    np.testing.assert_allclose(lrs(schedule, 8), [0, 0.25, 0.5, 0.75, 0.5, 0.25, 0, 0])


@pytest.mark.parametrize("num_cycles", [3, 22, 45])
def test_hard_restarts_land_exactly_as_transformers(num_cycles):
    """At restart m (step W + m L / c) transformers gives the peak, except where its float64
    (c * (n / L)) % 1 rounds to 1 - 2**-53 (integer c >= 22): there it gives 0."""
    w, length = 13, 90 * num_cycles
    reference_lr = hf_lambda(get_cosine_with_hard_restarts_schedule_with_warmup, 1.0,
                             num_warmup_steps=w, num_training_steps=w + length,
                             num_cycles=num_cycles)
    schedule = get_cosine_with_hard_restarts_schedule_with_warmup(1.0, w, w + length,
                                                                  num_cycles)
    restarts = w + np.arange(num_cycles + 1) * (length // num_cycles)
    expected = [reference_lr(int(s)) for s in restarts]
    np.testing.assert_array_equal(schedule(jnp.asarray(restarts)), expected)
    if num_cycles >= 22:
        assert 0.0 in expected[1:-1]  # a missed restart is part of the test
