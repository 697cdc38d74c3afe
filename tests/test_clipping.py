"""funcopt.clip_grad_norm against the real torch.nn.utils.clip_grad_norm_ (torch 2.13, CPU).

Every comparison runs torch on the same gradients, side by side: total norm and clipped
gradients must be bitwise equal for the orders torch computes with fixed reductions (2, inf,
-inf, 0, 1); other orders go through powf and are held to 1e-6 relative. Figures are printed
(run with ``-s``) next to torch's own float32-vs-float64 noise on the same problems.
"""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import reference
from parity import SHAPES

import funcopt
from funcopt import _clipping

torch = reference("torch")

# 0-D to 4-D, plus lengths around torch's 8-lane loads (16 per bf16 load) and its 4-unrolled tail.
LEAF_SHAPES = [*SHAPES, (1,), (8,), (9,), (12,), (15,), (16,), (17,), (3, 11), (33,), (1, 5, 1)]
TORCH_DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_MIXES = {"f32": ["float32"], "bf16": ["bfloat16"], "f16": ["float16"],
               "mixed": ["float32", "bfloat16"], "three": ["float32", "bfloat16", "float16"]}
EXACT_ORDERS = [2.0, math.inf, -math.inf, 0.0, 1.0]


def random_tree(rng, mix):
    """Leaf shapes and dtypes of a random gradient pytree drawn from ``DTYPE_MIXES[mix]``."""
    n = int(rng.integers(1, 7))
    shapes = [LEAF_SHAPES[i] for i in rng.integers(0, len(LEAF_SHAPES), n)]
    dtypes = [DTYPE_MIXES[mix][i] for i in rng.integers(0, len(DTYPE_MIXES[mix]), n)]
    return shapes, dtypes


def random_values(rng, shapes, dtypes):
    """float32 values already rounded to each leaf's dtype; some leaves sparse, scales wide."""
    out = []
    for shape, dtype in zip(shapes, dtypes, strict=True):
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-2, 1.5)
        if rng.random() < 0.2:
            x = x * (rng.random(shape) < 0.5)
        rounded = torch.from_numpy(np.asarray(x, np.float32)).to(TORCH_DTYPE[dtype])
        out.append(rounded.float().numpy())
    return out


def torch_clip(values, dtypes, max_norm, norm_type, **kwargs):
    """(total norm, clipped gradients) from torch.nn.utils.clip_grad_norm_, as float32 numpy."""
    params = []
    for v, dtype in zip(values, dtypes, strict=True):
        p = torch.zeros(v.shape, dtype=TORCH_DTYPE[dtype], requires_grad=True)
        p.grad = torch.from_numpy(v.copy()).to(TORCH_DTYPE[dtype])
        params.append(p)
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, **kwargs)
    return total.float().numpy(), [p.grad.float().numpy() for p in params]


def funcopt_clip(update, values, dtypes, *args):
    grads = [jnp.asarray(v).astype(d) for v, d in zip(values, dtypes, strict=True)]
    out, state = update(grads, *args)
    return np.asarray(state.grad_norm), [np.asarray(g.astype(jnp.float32)) for g in out]


def jitted(max_norm, norm_type, **kwargs):
    """clip_grad_norm's update under jit, with max_norm static (a Python float)."""
    tx = funcopt.clip_grad_norm(max_norm, norm_type, **kwargs)
    return jax.jit(lambda g: tx.update(g, tx.init(g)))


def traced(norm_type):
    """The same with max_norm an argument (a traced float32, as torch rounds it)."""
    return jax.jit(lambda g, m: funcopt.clip_grad_norm(m, norm_type).update(g, None))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    finite = np.isfinite(b) & (b != 0)
    return float(np.max(np.abs(a - b)[finite] / np.abs(b)[finite], initial=0.0))


def same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


def compare(rng, mix, norm_type, trees=4, draws=6):
    """Runs random problems side by side: (cases, bitwise cases, worst relative deviation,
    torch's own float32-vs-float64 noise on the total norm)."""
    cases = bitwise = 0
    worst = noise = 0.0
    for _ in range(trees):
        shapes, dtypes = random_tree(rng, mix)
        max_norms = [math.inf, 1.0] + [float(10.0 ** rng.uniform(-2, 2)) for _ in range(draws)]
        update = traced(norm_type)
        for max_norm in max_norms:
            values = random_values(rng, shapes, dtypes)
            t_norm, t_grads = torch_clip(values, dtypes, max_norm, norm_type)
            f_norm, f_grads = funcopt_clip(update, values, dtypes, max_norm)
            cases += 1
            bitwise += same(f_norm, t_norm) and all(map(same, f_grads, t_grads))
            worst = max(worst, rel(f_norm, t_norm), *map(rel, f_grads, t_grads))
            t64 = torch.nn.utils.get_total_norm([torch.from_numpy(v).double() for v in values],
                                                norm_type)
            noise = max(noise, rel(t_norm, t64.numpy()))
    return cases, bitwise, worst, noise


# float16 has its own 2-norm path (torch's scalar reduction); inf, -inf and 0 are the same
# reductions in every dtype, so float16 and the three-dtype mix run with 2 and 1 only.
BITWISE_CASES = [(mix, p) for mix in ("f32", "bf16", "mixed") for p in EXACT_ORDERS] + [
    (mix, p) for mix in ("f16", "three") for p in (2.0, 1.0)]


@pytest.mark.parametrize("mix, norm_type", BITWISE_CASES)
def test_bitwise_equal_to_torch(mix, norm_type):
    rng = np.random.default_rng([7, list(DTYPE_MIXES).index(mix), EXACT_ORDERS.index(norm_type)])
    trees = 2 if mix in ("f16", "three") else 3
    cases, bitwise, worst, noise = compare(rng, mix, norm_type, trees=trees)
    print(f"clip_grad_norm {mix} p={norm_type}: bitwise {bitwise}/{cases}, worst rel {worst:.1e}"
          f" (torch float32 vs float64 norm: {noise:.1e})")
    assert bitwise == cases, (bitwise, cases, worst)


@pytest.mark.parametrize("norm_type", [3.0, 0.5, 1.5, -1.0])
@pytest.mark.parametrize("mix", ["f32", "bf16"])
def test_other_orders_within_float32_round_off(mix, norm_type):
    rng = np.random.default_rng([11, int(norm_type * 10) % 97, len(mix)])
    cases, bitwise, worst, noise = compare(rng, mix, norm_type, trees=2, draws=5)
    print(f"clip_grad_norm {mix} p={norm_type}: bitwise {bitwise}/{cases}, worst rel {worst:.1e}"
          f" (torch float32 vs float64 norm: {noise:.1e})")
    assert worst <= 1e-6 if mix == "f32" else worst <= 2**-8  # bf16: one bf16 ulp at most


def test_large_leaves_and_torch_threads():
    """Leaves far past one load and torch's 32768-element parallel grain: the 2-norm kernel
    is sequential whatever torch's thread count; order 1 splits across threads (bitwise with
    one thread, round-off otherwise)."""
    rng = np.random.default_rng(3)
    shapes, dtypes = [(317, 331), (70_001,), (3,)], ["float32", "bfloat16", "float32"]
    values = random_values(rng, shapes, dtypes)
    threads = torch.get_num_threads()
    try:
        for norm_type, count in [(2.0, threads), (1.0, 1), (1.0, max(threads, 2))]:
            torch.set_num_threads(count)
            t_norm, t_grads = torch_clip(values, dtypes, 0.5, norm_type)
            f_norm, f_grads = funcopt_clip(jitted(0.5, norm_type), values, dtypes)
            exact = same(f_norm, t_norm) and all(map(same, f_grads, t_grads))
            print(f"large leaves p={norm_type} torch threads={count}: bitwise={exact}, rel "
                  f"{rel(f_norm, t_norm):.1e}")
            if norm_type == 2.0 or count == 1:
                assert exact
            assert rel(f_norm, t_norm) <= 1e-6
    finally:
        torch.set_num_threads(threads)


def test_trainer_max_grad_norm_zero_multiplies_by_one():
    """max_grad_norm=0: the Trainer still calls clip_grad_norm_(params, inf) to log the norm."""
    rng = np.random.default_rng(4)
    shapes, dtypes = LEAF_SHAPES[:6], ["float32", "bfloat16"] * 3
    values = random_values(rng, shapes, dtypes)
    t_norm, t_grads = torch_clip(values, dtypes, math.inf, 2.0)
    f_norm, f_grads = funcopt_clip(jitted(math.inf, 2.0), values, dtypes)
    assert same(f_norm, t_norm)
    assert all(map(same, f_grads, values)) and all(map(same, t_grads, values))


@pytest.mark.parametrize("max_norm", [1.0, math.inf])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_gradients_follow_torch(bad, max_norm):
    values = [np.array([1.0, bad, 3.0], np.float32), np.array([[0.5, -2.0]], np.float32)]
    dtypes = ["float32", "float32"]
    for norm_type in (2.0, math.inf, 1.0):
        t_norm, t_grads = torch_clip(values, dtypes, max_norm, norm_type)
        f_norm, f_grads = funcopt_clip(jitted(max_norm, norm_type), values, dtypes)
        assert same(f_norm, t_norm) and all(map(same, f_grads, t_grads)), (norm_type, f_grads)


def test_error_if_nonfinite():
    values = [np.array([1.0, math.inf], np.float32)]
    with pytest.raises(RuntimeError) as torch_error:
        torch_clip(values, ["float32"], 1.0, 2.0, error_if_nonfinite=True)
    tx = funcopt.clip_grad_norm(1.0, error_if_nonfinite=True)
    grads = [jnp.asarray(values[0])]
    with pytest.raises(RuntimeError) as eager_error:
        tx.update(grads, tx.init(grads))
    assert str(eager_error.value) == str(torch_error.value)
    step = jax.jit(tx.update)
    with pytest.raises(jax.errors.JaxRuntimeError, match="is non-finite, so it cannot be clipped"):
        jax.block_until_ready(step(grads, tx.init(grads)))
    finite = [np.array([3.0, 4.0], np.float32)]
    t_norm, t_grads = torch_clip(finite, ["float32"], 1.0, 2.0, error_if_nonfinite=True)
    out, state = step([jnp.asarray(finite[0])], tx.init(grads))
    assert same(state.grad_norm, t_norm) and same(out[0], t_grads[0])


def test_empty_and_zero_gradients():
    assert float(funcopt.get_total_norm({})) == float(torch.nn.utils.get_total_norm([])) == 0.0
    tx = funcopt.clip_grad_norm(1.0)
    out, state = tx.update({}, tx.init({}))
    assert out == {} and float(state.grad_norm) == 0.0
    values = [np.zeros((3, 2), np.float32), np.zeros((0, 4), np.float32)]
    for norm_type in (2.0, 0.0, 1.0, 3.0):
        t_norm, t_grads = torch_clip(values, ["float32"] * 2, 1.0, norm_type)
        f_norm, f_grads = funcopt_clip(jitted(1.0, norm_type), values, ["float32"] * 2)
        assert same(f_norm, t_norm) and all(map(same, f_grads, t_grads))
    for norm_type in (math.inf, -1.0):  # torch: the norm of an empty tensor has no identity
        with pytest.raises(RuntimeError, match="empty tensor"):
            torch_clip(values, ["float32"] * 2, 1.0, norm_type)
        with pytest.raises(ValueError, match="empty gradient leaf"):
            funcopt_clip(jitted(1.0, norm_type), values, ["float32"] * 2)


def test_order_zero_counts_like_torch():
    """torch's total 0-norm is the 0-norm of the per-leaf counts (a lone leaf gives 0 or 1)."""
    for values in ([np.array([0.0, 2.0, 3.0], np.float32)],
                   [np.array([0.0, 2.0], np.float32), np.zeros(3, np.float32), np.ones((2, 2),
                                                                                      np.float32)]):
        t_norm, _ = torch_clip(values, ["float32"] * len(values), 1.0, 0.0)
        f_norm, _ = funcopt_clip(jitted(1.0, 0.0), values, ["float32"] * len(values))
        assert same(f_norm, t_norm)


@pytest.mark.parametrize("norm_type", [2.0, 0.0, 3.0])
def test_inject_hyperparams_and_scan(norm_type):
    """Injected (traced) max_norm and norm_type give the static numbers (every order's kernel
    is compiled and the step picks one); the state's dtype is fixed inside lax.scan."""
    rng = np.random.default_rng(5)
    grads = [jnp.asarray(v) for v in random_values(rng, [(5, 6), (9,), ()], ["float32"] * 3)]
    static = funcopt.clip_grad_norm(0.3, norm_type)
    injected = optax.inject_hyperparams(funcopt.clip_grad_norm)(max_norm=0.3, norm_type=norm_type)
    expected, expected_state = jax.jit(static.update)(grads, static.init(grads))
    got, state = jax.jit(injected.update)(grads, injected.init(grads))
    assert all(map(same, got, expected))
    assert same(state.inner_state.grad_norm, expected_state.grad_norm)

    def body(state, g):
        out, state = static.update(g, state)
        return state, out[0]

    stacked = [jnp.stack([g, 2 * g]) for g in grads]
    final, _ = jax.lax.scan(body, static.init(grads), stacked)
    assert final.grad_norm.dtype == jnp.float32 and final.grad_norm.shape == ()


def test_fused_multiply_add_is_exact():
    """The tail's fused multiply-add, against exact rational arithmetic rounded to float32."""
    rng = np.random.default_rng(6)
    a = (rng.standard_normal(3000) * 10.0 ** rng.uniform(-12, 12, 3000)).astype(np.float32)
    b = np.abs(rng.standard_normal(3000) * 10.0 ** rng.uniform(-12, 12, 3000)).astype(np.float32)
    a[:1000], b[:1000] = rng.standard_normal(1000), np.abs(rng.standard_normal(1000))
    a[1000:1500], b[1000:1500] = rng.integers(1, 4096, 500), rng.integers(0, 2**26, 500)
    got = np.asarray(jax.jit(jax.vmap(_clipping._fma_square))(a, b))

    def exact(x, y):
        value = Fraction(float(x)) ** 2 + Fraction(float(y))
        near = np.float32(float(value))
        candidates = [np.nextafter(near, np.float32(-np.inf)), near,
                      np.nextafter(near, np.float32(np.inf))]
        return min(candidates, key=lambda c: (abs(Fraction(float(c)) - value),
                                              int(np.float32(c).view(np.int32)) & 1))

    assert all(g == exact(x, y) for g, x, y in zip(got, a, b, strict=True))


@pytest.mark.parametrize(
    "kwargs, error",
    [({"max_norm": -1.0}, ValueError), ({"max_norm": math.nan}, ValueError),
     ({"max_norm": "1"}, TypeError), ({"max_norm": 1.0, "norm_type": "two"}, ValueError),
     ({"max_norm": 1.0, "norm_type": math.nan}, ValueError),
     ({"max_norm": 1.0, "error_if_nonfinite": 1}, TypeError)],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match=list(kwargs)[-1] if error is ValueError else None):
        funcopt.clip_grad_norm(**kwargs)


def test_norm_type_string_and_integer_leaves():
    grads = [jnp.array([3.0, -4.0])]
    assert float(funcopt.get_total_norm(grads, "inf")) == 4.0
    with pytest.raises(TypeError, match="dtype int32"):
        funcopt.get_total_norm([jnp.array([1, 2])])


def test_accelerator_branch_within_round_off(monkeypatch):
    """Off CPU the leaf sums take XLA's own reduction order: run that branch here and hold it
    to float32 round-off against torch."""
    monkeypatch.setattr(_clipping, "_column_sums",
                        lambda rows, fn: jnp.sum(fn(rows), axis=0))
    rng = np.random.default_rng(8)
    shapes, dtypes = [(317, 331), (70_001,), (3,), (5, 6)], ["float32", "bfloat16"] * 2
    values = random_values(rng, shapes, dtypes)
    for norm_type in (2.0, 1.0):
        t_norm, t_grads = torch_clip(values, dtypes, 0.5, norm_type)
        f_norm, f_grads = funcopt_clip(jitted(0.5, norm_type), values, dtypes)
        worst = max(rel(f_norm, t_norm), *(rel(f, t) for f, t in zip(f_grads[::2], t_grads[::2],
                                                                     strict=True)))
        print(f"XLA-order branch p={norm_type}: worst rel {worst:.1e} (float32 leaves)")
        assert worst <= 1e-6
