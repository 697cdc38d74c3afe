"""funcopt.fused_schedule_free_adamw: bitwise funcopt.schedule_free_adamw + optax.apply_updates,
through the schedule_free C++ kernel's FFI handler.

Where a C++ compiler exists (``funcopt._kernels.compiler()``) the tests require that the
kernel was built, passed its check and is in the compiled step, so a build failure cannot pass
as the XLA fallback. The expected values are the jitted XLA path's (``schedule_free_adamw``'s
update + ``apply_updates``), whose parity with schedulefree itself is tested elsewhere.
"""

import functools

import jax
import jax.numpy as jnp
import parity
import pytest
from parity import assert_bitwise, run_applying

import funcopt
from funcopt import _core, _fused_schedule_free, _kernels

HAS_COMPILER = _kernels.compiler() is not None
KERNEL = 'custom_call_target="funcopt_FuncoptScheduleFreeF32"'
STEPS = 25

# 0-D to 4-D; an empty leaf; small leaves (10-63 elements, where XLA:CPU has rounded other
# schedule-free expressions unfused); a leaf of two kernel blocks (> 65536 elements).
SHAPES = {"scalar": (), "empty": (0, 3), "vec": (7,), "small": (13,), "mid": (40,),
          "mat": (5, 6), "big": (300, 230), "cube": (2, 3, 4), "quad": (2, 3, 2, 2)}

CONFIGS = [
    dict(learning_rate=2.5e-3),
    dict(learning_rate=1e-2, weight_decay=0.1, warmup_steps=5),
    dict(learning_rate=1e-2, weight_decay=0.05, warmup_steps=0.5,
         mask=lambda p: {k: k not in ("vec", "small", "bf16_vec") for k in p}),
    dict(learning_rate=funcopt.get_cosine_schedule_with_warmup(1e-2, 3, 30), b1=0.95,
         b2=0.99, eps=0.0, weight_decay=0.1),
    # A schedule that starts at 0: weight_sum stays 0 (ckp1 = 0) for the first step.
    dict(learning_rate=funcopt.get_linear_schedule_with_warmup(1e-2, 4, 30), r=1.0,
         weight_lr_power=0.5, b1=1.0),
    dict(learning_rate=5e-3, r=0.5, weight_lr_power=3.0, weight_decay=0.01, b2=0.9),
    dict(learning_rate=5e-3, r=-0.3, weight_lr_power=1.7, eps=1e-6),  # float32 powers
]


def make_problem(seed=0, steps=STEPS, shapes=SHAPES):
    return parity.make_fused_problem(shapes, steps, seed)


def run_plain(kwargs, params, grads, state=None):
    return run_applying(funcopt.schedule_free_adamw(**kwargs), params, grads, state)


def fused_step(kwargs, donate=True):
    opt = funcopt.fused_schedule_free_adamw(**kwargs)
    return opt, jax.jit(lambda p, s, g: opt.step(g, s, p),
                        donate_argnums=(0, 1) if donate else ())


def run_fused(kwargs, params, grads, state=None, donate=True):
    return parity.run_fused(funcopt.fused_schedule_free_adamw(**kwargs), params, grads, state,
                            donate)


@pytest.fixture(scope="module", autouse=True)
def kernel_built():
    """Where a C++ compiler exists, the kernel must build and pass its check."""
    if HAS_COMPILER:
        assert _fused_schedule_free.kernel_available()


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_bitwise_equal_to_schedule_free_adamw_and_apply_updates(kwargs):
    params, grads = make_problem()
    ours = run_fused(kwargs, params, grads)
    assert isinstance(ours[1], funcopt.ScheduleFreeState)
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
    kwargs = dict(learning_rate=1e-3, weight_decay=0.5, eps=1e-40, warmup_steps=2)
    assert_bitwise(run_fused(kwargs, params, grads), run_plain(kwargs, params, grads))


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: every path is XLA's")
def test_compiled_step_calls_the_kernel_once_in_place():
    params, grads = make_problem(steps=1)
    opt, step = fused_step(dict(weight_decay=0.1))
    compiled = step.lower(params, opt.init(params), grads[0]).compile()
    assert compiled.as_text().count(KERNEL) == 1
    parity.assert_in_place(compiled)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: every path is XLA's")
def test_bf16_leaves_take_the_xla_path_with_the_same_numbers():
    shapes = {"vec": (7,), "big": (300, 230), "bf16_vec": (9,), "bf16_mat": (4, 5)}
    params, grads = make_problem(seed=2, shapes=shapes)
    kwargs = CONFIGS[2]
    assert_bitwise(run_fused(kwargs, params, grads), run_plain(kwargs, params, grads))
    opt, step = fused_step(kwargs)
    hlo = step.lower(params, opt.init(params), grads[0]).compile().as_text()
    assert hlo.count(KERNEL) == 1  # the float32 leaves still take the kernel
    bf16 = {k: v for k, v in params.items() if k.startswith("bf16")}
    hlo = step.lower(bf16, opt.init(bf16), {k: grads[0][k] for k in bf16}).compile().as_text()
    assert KERNEL not in hlo


def test_state_is_interchangeable_with_schedule_free_adamw_mid_run():
    params, grads = make_problem(seed=4, steps=30)
    kwargs = dict(learning_rate=1e-2, weight_decay=0.1, warmup_steps=4)
    parity.assert_interchangeable(funcopt.fused_schedule_free_adamw(**kwargs),
                                  funcopt.schedule_free_adamw(**kwargs), params, grads)


def test_vmap_and_scan():
    params, grads = make_problem(seed=5, steps=4, shapes={"vec": (7,), "mat": (5, 6)})
    kwargs = dict(learning_rate=1e-2, weight_decay=0.1)
    opt, tx = funcopt.fused_schedule_free_adamw(**kwargs), funcopt.schedule_free_adamw(**kwargs)
    parity.assert_vmap_and_scan(opt, tx, params, grads)


def test_construction_errors_are_schedule_free_adamw_s():
    with pytest.raises(ValueError, match="b1"):
        funcopt.fused_schedule_free_adamw(b1=0.0)
    with pytest.raises(ValueError, match="b2"):
        funcopt.fused_schedule_free_adamw(b2=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        funcopt.fused_schedule_free_adamw(warmup_steps=-1)
    with pytest.raises(ValueError, match="weight_lr_power"):
        funcopt.fused_schedule_free_adamw(weight_lr_power=-1.0)
    opt = funcopt.fused_schedule_free_adamw()
    with pytest.raises(ValueError, match="needs the parameters"):
        opt.step({"w": jnp.zeros(2)}, opt.init({"w": jnp.zeros(2)}), None)


def test_disabled_kernels_take_the_xla_path_with_the_same_numbers(tmp_path):
    parity.assert_disabled_kernels_same(
        tmp_path, "fused_schedule_free_adamw(1e-2, weight_decay=0.1, warmup_steps=3)",
        "FuncoptScheduleFree", HAS_COMPILER)


@pytest.mark.skipif(not HAS_COMPILER, reason="without the kernel every path is XLA's")
def test_sharded_parameters_take_the_partitionable_xla_path():
    """The kernel is built (so its absence from the compiled step means something), yet a
    sharded step does not call it: no all-gather, the sharding kept, the plain step's bits."""
    parity.assert_sharded_takes_xla("fused_schedule_free_adamw", "schedule_free_adamw",
                                    "learning_rate=1e-2, weight_decay=0.1, warmup_steps=2",
                                    "_fused_schedule_free", "FuncoptScheduleFree")


@pytest.mark.skipif(not HAS_COMPILER, reason="needs a C++ compiler")
def test_a_kernel_that_rounds_differently_is_refused(tmp_path, monkeypatch):
    """The check run before the kernel is first used has teeth: a variant that rounds y's
    step product before adding it to the lerp (an ulp apart, now and then) is refused."""
    parity.assert_variant_refused(tmp_path, monkeypatch, "schedule_free",
                                  "FuncoptScheduleFreeF32", "std::fma(d, c.alpha, lerp)",
                                  "(d * c.alpha + lerp)", _fused_schedule_free,
                                  "fused_schedule_free_adamw")


@pytest.mark.skipif(not HAS_COMPILER, reason="needs a C++ compiler")
def test_the_handler_steps_sgd_leaves_too():
    """The handler also takes leaves without exp_avg_sq (schedule_free_sgd's: operands
    (y, g, z), results (y', z')); bitwise the XLA path with and without decay, on leaves of
    64 elements and more (on smaller ones XLA:CPU may round y's decayed step unfused:
    ``funcopt._schedule_free_kernel``'s docstring)."""
    shapes = {"scalar": (), "vec": (64,), "big": (300, 230), "quad": (2, 4, 2, 4)}
    params, grads = make_problem(seed=6, steps=STEPS, shapes=shapes)
    target = _fused_schedule_free._target()
    for kwargs in (dict(learning_rate=0.5, warmup_steps=3),
                   dict(learning_rate=0.5, weight_decay=0.1, r=1.0,
                        mask=lambda p: {k: k != "scalar" for k in p})):
        rule = _core.rule_of(funcopt.schedule_free_sgd(**kwargs))
        step = jax.jit(functools.partial(_fused_schedule_free._kernel_step, target, rule))
        lowered = step.lower(grads[0], _core.init(rule, params), params).as_text()
        assert "funcopt_FuncoptScheduleFreeF32" in lowered
        ours = (params, _core.init(rule, params))
        for g in grads:
            ours = step(g, ours[1], ours[0])
        assert ours[1].exp_avg_sq is None
        assert_bitwise(ours, run_applying(funcopt.schedule_free_sgd(**kwargs), params, grads))
