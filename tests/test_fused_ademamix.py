"""funcopt.fused_ademamix: bitwise funcopt.ademamix + optax.apply_updates, through the
ademamix C++ kernel's FFI handler.

Where a C++ compiler exists (``funcopt._kernels.compiler()``) the tests require that the
kernel was built, passed its check and is in the compiled step, so a build failure cannot pass
as the XLA fallback. The expected values are the jitted XLA path's (``ademamix``'s update +
``apply_updates``), whose parity with bitsandbytes' AdEMAMix itself is tested in
``tests/trainer5``.
"""


import jax
import jax.numpy as jnp
import optax
import parity
import pytest
from parity import assert_bitwise, run_applying

import funcopt
from funcopt import _fused_ademamix, _kernels
from funcopt._kernels import _direct

HAS_COMPILER = _kernels.compiler() is not None
KERNEL = 'custom_call_target="funcopt_FuncoptAdEMAMixF32"'
STEPS = 25

# 0-D to 4-D; an empty leaf; small leaves (1 to 63 elements, where XLA:CPU has rounded other
# expressions unfused: funcopt._schedule_free_kernel's docstring); a leaf of two kernel
# blocks (> 65536 elements).
SHAPES = {"scalar": (), "empty": (0, 3), "one": (1,), "vec": (7,), "small": (13,),
          "odd": (31,), "mid": (63,), "mat": (5, 6), "big": (300, 230), "cube": (2, 3, 4),
          "quad": (2, 3, 2, 2)}

CONFIGS = [
    dict(),
    dict(learning_rate=1e-2, weight_decay=0.1, t_alpha=10, t_beta3=8),
    dict(learning_rate=optax.linear_schedule(1e-2, 1e-3, 30), t_alpha=0, t_beta3=None,
         mask=lambda p: {k: k not in ("vec", "small", "bf16_vec") for k in p}),
    dict(learning_rate=funcopt.get_cosine_schedule_with_warmup(1e-2, 3, 30), b1=0.0,
         b2=0.99, b3=0.999, alpha=-1.5, eps=0.0, weight_decay=0.0),
    dict(learning_rate=5e-3, b1=0.5, b2=0.9, b3=0.6, alpha=8.0, t_alpha=100, t_beta3=5,
         eps=1e-6, weight_decay=0.5),
]


def make_problem(seed=0, steps=STEPS, shapes=SHAPES):
    return parity.make_fused_problem(shapes, steps, seed)


def run_plain(kwargs, params, grads, state=None):
    return run_applying(funcopt.ademamix(**kwargs), params, grads, state)


def run_fused(kwargs, params, grads, state=None, donate=True):
    return parity.run_fused(funcopt.fused_ademamix(**kwargs), params, grads, state, donate)


def compiled(kwargs, params, grads):
    opt = funcopt.fused_ademamix(**kwargs)
    step = jax.jit(lambda p, s, g: opt.step(g, s, p), donate_argnums=(0, 1))
    return step.lower(params, opt.init(params), grads).compile()


@pytest.fixture(scope="module", autouse=True)
def kernel_built():
    """Where a C++ compiler exists, the kernel must build and pass its check."""
    if HAS_COMPILER:
        assert _fused_ademamix.kernel_available()


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_bitwise_equal_to_ademamix_and_apply_updates(kwargs):
    params, grads = make_problem()
    ours = run_fused(kwargs, params, grads)
    assert isinstance(ours[1], funcopt.AdEMAMixState)
    assert int(ours[1].step["big"]) == STEPS
    assert_bitwise(ours, run_plain(kwargs, params, grads))


def test_without_donation_the_same_numbers():
    params, grads = make_problem(seed=3, steps=4)
    kwargs = CONFIGS[1]
    assert_bitwise(run_fused(kwargs, params, grads, donate=False),
                   run_plain(kwargs, params, grads))


def test_subnormal_and_tiny_values_round_like_xla():
    """XLA flushes subnormals to zero under jit; the kernel's threads do the same."""
    params, grads = make_problem(seed=1, steps=6)
    params = jax.tree.map(lambda p: p * 1e-37, params)
    grads = [jax.tree.map(lambda g: g * 1e-36, g) for g in grads]
    kwargs = dict(learning_rate=1e-3, weight_decay=0.5, eps=1e-40, t_alpha=3, t_beta3=4)
    assert_bitwise(run_fused(kwargs, params, grads), run_plain(kwargs, params, grads))


def test_leaves_at_different_steps():
    """Each leaf's scalars come from its own step (bitsandbytes' state["step"]): a state whose
    leaves are in and past both warmups, and at the first step."""
    params, grads = make_problem(seed=7, steps=STEPS)
    kwargs = dict(learning_rate=1e-2, weight_decay=0.1, t_alpha=12, t_beta3=9)
    _, state = run_plain(kwargs, params, grads[:3])
    steps = {name: jnp.int32(3 * i) for i, name in enumerate(SHAPES)}
    state = state._replace(step=steps)
    ours = run_fused(kwargs, params, grads, state=state)
    assert [int(ours[1].step[k]) for k in SHAPES] == [3 * i + STEPS for i in range(len(SHAPES))]
    assert_bitwise(ours, run_plain(kwargs, params, grads, state=state))


def test_warmups_past_the_step_tables():
    """Warmups longer than funcopt._step_table.CAP: leaves around the cut take the rule's
    float32 formulas, computed for a vector of steps here and per leaf by the XLA path."""
    params, grads = make_problem(seed=8, steps=5, shapes={"vec": (7,), "big": (300, 230),
                                                          "scalar": ()})
    kwargs = dict(learning_rate=1e-2, weight_decay=0.1, t_alpha=300000, t_beta3=300001)
    state = funcopt.ademamix(**kwargs).init(params)._replace(step={
        "vec": jnp.int32(270000), "big": jnp.int32(262140), "scalar": jnp.int32(299999)})
    assert_bitwise(run_fused(kwargs, params, grads, state=state),
                   run_plain(kwargs, params, grads, state=state))


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: every path is XLA's")
def test_compiled_step_calls_the_kernel_once_in_place():
    params, grads = make_problem(steps=1)
    step = compiled(dict(weight_decay=0.1, t_alpha=5, t_beta3=5), params, grads[0])
    assert step.as_text().count(KERNEL) == 1
    parity.assert_in_place(step)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: every path is XLA's")
def test_bf16_leaves_take_the_xla_path_with_the_same_numbers():
    shapes = {"vec": (7,), "big": (300, 230), "bf16_vec": (9,), "bf16_mat": (4, 5)}
    params, grads = make_problem(seed=2, shapes=shapes)
    kwargs = CONFIGS[2]
    ours = run_fused(kwargs, params, grads)
    assert ours[0]["bf16_mat"].dtype == jnp.bfloat16
    assert_bitwise(ours, run_plain(kwargs, params, grads))
    assert compiled(kwargs, params, grads[0]).as_text().count(KERNEL) == 1
    bf16 = {k: v for k, v in params.items() if k.startswith("bf16")}
    assert KERNEL not in compiled(kwargs, bf16, {k: grads[0][k] for k in bf16}).as_text()


def test_state_is_interchangeable_with_ademamix_mid_run():
    params, grads = make_problem(seed=4, steps=30)
    kwargs = dict(learning_rate=1e-2, weight_decay=0.1, t_alpha=15, t_beta3=15)
    parity.assert_interchangeable(funcopt.fused_ademamix(**kwargs), funcopt.ademamix(**kwargs),
                                  params, grads)


def test_vmap_and_scan():
    params, grads = make_problem(seed=5, steps=4, shapes={"vec": (7,), "mat": (5, 6)})
    kwargs = dict(learning_rate=1e-2, weight_decay=0.1, t_alpha=3)
    opt, tx = funcopt.fused_ademamix(**kwargs), funcopt.ademamix(**kwargs)
    parity.assert_vmap_and_scan(opt, tx, params, grads)


def test_construction_errors_are_ademamix_s():
    with pytest.raises(ValueError, match="b3"):
        funcopt.fused_ademamix(b3=1.0)
    with pytest.raises(ValueError, match="eps"):
        funcopt.fused_ademamix(eps=-1e-8)
    with pytest.raises(ValueError, match="t_alpha"):
        funcopt.fused_ademamix(t_alpha=-1)
    with pytest.raises(TypeError, match="t_beta3"):
        funcopt.fused_ademamix(t_beta3=2.5)
    with pytest.raises(ValueError, match="b1"):
        funcopt.fused_ademamix(b1=0.0, t_beta3=10)
    with pytest.raises(ValueError, match="alpha"):
        funcopt.fused_ademamix(alpha=-1.0, t_alpha=10)
    opt = funcopt.fused_ademamix()
    with pytest.raises(ValueError, match="needs the parameters"):
        opt.step({"w": jnp.zeros(2)}, opt.init({"w": jnp.zeros(2)}), None)


def test_disabled_kernels_take_the_xla_path_with_the_same_numbers(tmp_path):
    parity.assert_disabled_kernels_same(
        tmp_path, "fused_ademamix(1e-2, weight_decay=0.1, t_alpha=3, t_beta3=3)",
        "FuncoptAdEMAMix", HAS_COMPILER)


@pytest.mark.skipif(not HAS_COMPILER, reason="without the kernel every path is XLA's")
def test_sharded_parameters_take_the_partitionable_xla_path():
    """Under an 8-device mesh the step is XLA's (partitionable), though the kernel is built:
    nothing gathered, the sharding kept, ademamix's bits."""
    parity.assert_sharded_takes_xla("fused_ademamix", "ademamix",
                                    "learning_rate=1e-2, weight_decay=0.1, t_alpha=2, t_beta3=2",
                                    "_fused_ademamix", "FuncoptAdEMAMix")


@pytest.mark.skipif(not HAS_COMPILER, reason="needs a C++ compiler")
@pytest.mark.parametrize("fused, variant", [
    # The step's product rounded before the decayed parameter is added (XLA contracts it).
    ("std::fma(neg_lr, mixed / adaptive, kept)", "(neg_lr * (mixed / adaptive) + kept)"),
    # m1 / c1 as a multiplication by the reciprocal (what `divide` keeps XLA from doing).
    ("m1 / c1 ", "m1 * (1.0f / c1) "),
])
def test_a_kernel_that_rounds_differently_is_refused(tmp_path, monkeypatch, fused, variant):
    """The checks run before the kernel's entry points are first used have teeth: variants
    an ulp apart now and then are refused."""
    library = parity.assert_variant_refused(tmp_path, monkeypatch, "ademamix",
                                            "FuncoptAdEMAMixF32", fused, variant,
                                            _fused_ademamix, "fused_ademamix")
    # The direct entry point (funcopt.torch's AdEMAMix) has the same check.
    direct = library.funcopt_ademamix_f32
    direct.argtypes = _direct.entry_point("ademamix", "funcopt_ademamix_f32").argtypes
    entry = (direct, _kernels.xla_fp_control("ademamix"))
    with pytest.warns(RuntimeWarning, match="does not round like XLA"):
        assert not _fused_ademamix._direct_same_as_xla(entry)
    assert _fused_ademamix._direct_same_as_xla(_fused_ademamix.direct_entry())
