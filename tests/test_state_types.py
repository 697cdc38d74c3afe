"""Every funcopt optimizer keeps its state's dtypes and shapes across updates (issue 11, bug 1).

For float32, bfloat16 and float16 parameters, with and without ``params`` where the optimizer
allows none: the state after ``update`` has the dtypes and shapes ``init`` gave it, so it is a
valid ``jax.lax.scan`` carry (and a jitted step never recompiles for it). Before the optimizer
core, ``adam_weight_decay`` (and ``create_optimizer`` without decay) turned bf16/fp16 moments
into float32 on an update without params.

Add a new optimizer to ``OPTIMIZERS``: ``(id, factory, params_optional)``, where the factory
returns an ``optax.GradientTransformation`` (or a ``funcopt.FusedOptimizer``) and
``params_optional`` says whether ``update(grads, state, None)`` is allowed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcopt

OPTIMIZERS = [
    ("adamw", lambda: funcopt.adamw(1e-2), True),
    ("adamw-decay-mask", lambda: funcopt.adamw(
        1e-2, weight_decay=0.1, mask=lambda p: funcopt.name_mask(p, exclude=["bias"])), False),
    ("fused_adamw", lambda: funcopt.fused_adamw(1e-2, weight_decay=0.1), False),
    ("adafactor", lambda: funcopt.adafactor(), False),
    ("adafactor-manual-beta1-decay", lambda: funcopt.adafactor(
        1e-2, relative_step=False, beta1=0.9, weight_decay=0.1), False),
    ("adam_weight_decay", lambda: funcopt.adam_weight_decay(1e-2, amsgrad=True), True),
    ("adam_weight_decay-decay-clip", lambda: funcopt.adam_weight_decay(
        1e-2, weight_decay_rate=0.1, exclude_from_weight_decay=["bias"], clipnorm=1.0,
        global_clipnorm=None, clipvalue=0.5), False),
    ("create_optimizer", lambda: funcopt.create_optimizer(
        1e-2, 10, 2, adam_global_clipnorm=1.0)[0], True),
    ("create_optimizer-decay", lambda: funcopt.create_optimizer(
        1e-2, 10, 2, weight_decay_rate=0.1)[0], False),
    # The Trainer's menu.
    ("adamw_torch", lambda: funcopt.adamw_torch(1e-2, amsgrad=True), False),
    ("adamw_torch_fused", lambda: funcopt.adamw_torch_fused(1e-2), False),
    ("adam_torch", lambda: funcopt.adam_torch(1e-2), True),
    ("sgd", lambda: funcopt.sgd(1e-2, momentum=0.9, nesterov=True), True),
    ("adagrad", lambda: funcopt.adagrad(1e-2, lr_decay=0.1), True),
    ("rmsprop", lambda: funcopt.rmsprop(1e-2, momentum=0.5, centered=True), True),
    ("lion", lambda: funcopt.lion(1e-3, weight_decay=0.1), False),
    ("ademamix", lambda: funcopt.ademamix(1e-3, t_alpha=5, t_beta3=5), False),
    ("rmsprop_bnb", lambda: funcopt.rmsprop_bnb(1e-3), False),
    ("adamw_bnb", lambda: funcopt.adamw_bnb(1e-3), False),
    ("adamw_8bit", lambda: funcopt.adamw_8bit(1e-3, min_8bit_size=4), False),
    ("lion_8bit", lambda: funcopt.lion_8bit(1e-3, min_8bit_size=4), False),
    ("ademamix_8bit", lambda: funcopt.ademamix_8bit(1e-3, min_8bit_size=4), False),
    ("rmsprop_8bit", lambda: funcopt.rmsprop_8bit(1e-3, min_8bit_size=4), False),
    ("schedule_free_adamw", lambda: funcopt.schedule_free_adamw(1e-2, warmup_steps=2), False),
    ("schedule_free_sgd", lambda: funcopt.schedule_free_sgd(1e-2), False),
    ("schedule_free_radam", lambda: funcopt.schedule_free_radam(1e-2), False),
    ("grokadamw", lambda: funcopt.grokadamw(1e-3), False),
    ("stable_adamw", lambda: funcopt.stable_adamw(1e-3), False),
    ("galore_adamw", lambda: funcopt.galore_adamw(1e-3, rank=2, update_proj_gap=2), False),
    ("galore_adafactor", lambda: funcopt.galore_adafactor(
        1e-3, relative_step=False, scale_parameter=False, rank=2, update_proj_gap=2), False),
]

SHAPES = {"scale": (), "bias": (3,), "kernel": (3, 4), "conv": (2, 3, 2)}
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
STEPS = 3


def cases():
    return [pytest.param(factory, dtype, with_params,
                         id=f"{name}-{jnp.dtype(dtype).name}-"
                            f"{'params' if with_params else 'no-params'}")
            for name, factory, params_optional in OPTIMIZERS for dtype in DTYPES
            for with_params in ((True, False) if params_optional else (True,))]


def problem(dtype):
    rng = np.random.default_rng(0)
    params = {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in SHAPES.items()}
    grads = {k: jnp.asarray(rng.standard_normal((STEPS, *s)), dtype) for k, s in SHAPES.items()}
    return params, grads


def one_step(opt, with_params):
    """``(params, state, grads) -> (params, state)`` for either kind of optimizer."""

    def step(params, state, grads):
        if isinstance(opt, funcopt.FusedOptimizer):
            return opt.step(grads, state, params)
        updates, state = opt.update(grads, state, params if with_params else None)
        return (optax.apply_updates(params, updates) if with_params else params), state

    return step


def types(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


@pytest.mark.parametrize("factory, dtype, with_params", cases())
def test_state_types_survive_updates_inside_scan(factory, dtype, with_params):
    opt = factory()
    params, grads = problem(dtype)
    step = one_step(opt, with_params)
    state = opt.init(params)
    first = {k: g[0] for k, g in grads.items()}
    _, after_one = step(params, state, first)
    assert types(after_one) == types(state)  # structure, shapes and dtypes

    def body(carry, g):
        return step(*carry, g), None

    (_, after_scan), _ = jax.lax.scan(body, (params, state), grads)
    assert types(after_scan) == types(state)
    assert int(after_scan[0]) == STEPS  # the count: the scan really ran the updates
