"""torch.optim's classes across the torch bridge: each funcopt twin continues a run of
``torch.optim.AdamW`` (for-loop and fused), ``Adam``, ``SGD``, ``Adagrad`` and ``RMSprop`` in
JAX and back, and ``funcopt.torch.Optimizer`` runs it beside the class (param groups, state
dicts both ways). See ``bridge_parity.py`` for what each figure compares; the reference's own
float32-vs-float64 noise is printed beside it (``pytest -s``).

Continuations are asserted bitwise where the optimizer is (torch's fused kernel); the
for-loop paths take MKL's square root, an ulp low on some elements (``funcopt.adamw_torch``'s
docs), and SGD's parameter can land an ulp away when it steps across zero. The ``Optimizer``
figures are not bitwise: it hands the group's ``lr`` to the jitted update as a traced float32
(so that schedulers never recompile), and the rules then form their step scalars
(``lr / (1 - b1**t)``, ``1 - lr * weight_decay``) in float32 rather than from torch's float64.
"""

import numpy as np
import pytest
from bridge_parity import Pair, check
from conftest import reference
from torch_model import raises

import funcopt
import funcopt.torch

torch = reference("torch")

N, M = 13, 13  # steps before and after the switch (>= 25 in all)
TOL = 1e-6


def _adam(cls, fused=False, **kw):
    def make(params):
        return cls(params, lr=kw["learning_rate"], betas=(kw["b1"], kw["b2"]), eps=kw["eps"],
                   weight_decay=kw["weight_decay"], amsgrad=kw["amsgrad"],
                   maximize=kw["maximize"], fused=fused or None)
    return make


ADAM = dict(learning_rate=0.01, b1=0.85, b2=0.99, eps=1e-8, weight_decay=0.1, amsgrad=False,
            maximize=False)
SGD = dict(learning_rate=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01, nesterov=False,
           maximize=False)
ADAGRAD = dict(learning_rate=0.1, lr_decay=0.01, weight_decay=0.01,
               initial_accumulator_value=0.1, eps=1e-10, maximize=False)
RMSPROP = dict(learning_rate=0.01, alpha=0.9, eps=1e-8, weight_decay=0.01, momentum=0.5,
               centered=True, maximize=False)


def _kw(cls, names):
    def make(kw):
        return lambda params: cls(params, lr=kw["learning_rate"],
                                  **{k: kw[k] for k in names if k != "learning_rate"})
    return make


def _pair(name, fn, kw, make, group, bitwise=False):
    return pytest.param(Pair(name, fn, kw, make, group=group), bitwise, id=name)


PAIRS = [
    _pair("adamw_torch", funcopt.adamw_torch, ADAM, _adam(torch.optim.AdamW, **ADAM),
          {"lr": 0.003, "weight_decay": 0.0}),
    _pair("adamw_torch-amsgrad-maximize", funcopt.adamw_torch,
          {**ADAM, "amsgrad": True, "maximize": True},
          _adam(torch.optim.AdamW, **{**ADAM, "amsgrad": True, "maximize": True}),
          {"eps": 1e-6}),
    _pair("adamw_torch_fused", funcopt.adamw_torch_fused, ADAM,
          _adam(torch.optim.AdamW, fused=True, **ADAM), {"lr": 0.003, "weight_decay": 0.0},
          bitwise=True),
    _pair("adam_torch", funcopt.adam_torch, {**ADAM, "weight_decay": 0.05, "amsgrad": True},
          _adam(torch.optim.Adam, **{**ADAM, "weight_decay": 0.05, "amsgrad": True}),
          {"lr": 0.02}),
    _pair("adam_torch-fused", funcopt.adam_torch, {**ADAM, "fused": True},
          _adam(torch.optim.Adam, fused=True, **ADAM), {"lr": 0.02}, bitwise=True),
    _pair("sgd", funcopt.sgd, SGD, _kw(torch.optim.SGD, SGD)(SGD), {"lr": 0.02,
                                                                     "momentum": 0.0}),
    _pair("sgd-nesterov", funcopt.sgd, {**SGD, "dampening": 0.0, "nesterov": True},
          _kw(torch.optim.SGD, SGD)({**SGD, "dampening": 0.0, "nesterov": True}),
          {"weight_decay": 0.0}),
    _pair("sgd-no-momentum", funcopt.sgd, {**SGD, "momentum": 0.0},
          _kw(torch.optim.SGD, SGD)({**SGD, "momentum": 0.0}), {"momentum": 0.5}),
    _pair("adagrad", funcopt.adagrad, ADAGRAD, _kw(torch.optim.Adagrad, ADAGRAD)(ADAGRAD),
          {"lr": 0.05, "lr_decay": 0.0}),
    _pair("rmsprop-centered-momentum", funcopt.rmsprop, RMSPROP,
          _kw(torch.optim.RMSprop, RMSPROP)(RMSPROP), {"lr": 0.003, "centered": False}),
    _pair("rmsprop", funcopt.rmsprop, {**RMSPROP, "momentum": 0.0, "centered": False},
          _kw(torch.optim.RMSprop, RMSPROP)({**RMSPROP, "momentum": 0.0, "centered": False}),
          {"lr": 0.003, "momentum": 0.9}),
]


@pytest.mark.parametrize(("pair", "bitwise"), PAIRS)
def test_continuations_and_optimizer_match_the_reference(pair, bitwise):
    check(pair, bitwise, N, M, TOL)


def test_reference_classes_pick_the_function():
    """torch 2.x's AdamW is Adam with decoupled_weight_decay; fused picks the fused twin."""
    w = torch.nn.Parameter(torch.ones(3))
    cases = [(torch.optim.AdamW([w]), funcopt.AdamTorchState, {"fused": False}),
             (torch.optim.AdamW([w], fused=True), funcopt.AdamTorchState, {"fused": True}),
             (torch.optim.Adam([w], decoupled_weight_decay=True), funcopt.AdamTorchState, {}),
             (torch.optim.SGD([w], lr=0.1), funcopt.SGDState, {}),
             (torch.optim.Adagrad([w]), funcopt.AdagradState, {}),
             (torch.optim.RMSprop([w]), funcopt.RMSpropState, {})]
    for opt, state_type, _ in cases:
        state = funcopt.torch.state_from_torch(opt, [np.ones(3, np.float32)])
        assert isinstance(state, state_type)
    from funcopt.torch import _registry
    assert _registry.reference_of(cases[0][0])[0].optimizer_fn is funcopt.adamw_torch
    assert _registry.reference_of(cases[1][0])[0].optimizer_fn is funcopt.adamw_torch_fused
    assert _registry.reference_of(cases[2][0])[0].optimizer_fn is funcopt.adamw_torch
    adam = torch.optim.Adam([w])
    assert _registry.reference_of(adam)[0].optimizer_fn is funcopt.adam_torch


def test_reference_state_formats_are_written_as_torch_keeps_them():
    """torch.optim's float32 tensor step; SGD without a step, and without a buffer when
    ``momentum`` is 0; Adagrad's initial accumulator read from torch before any step."""
    w = torch.nn.Parameter(torch.ones(3))
    params = [np.ones(3, np.float32)]
    for make, keys in [(lambda: torch.optim.AdamW([w]), ["step", "exp_avg", "exp_avg_sq"]),
                       (lambda: torch.optim.SGD([w], lr=0.1, momentum=0.9),
                        ["momentum_buffer"]),
                       (lambda: torch.optim.SGD([w], lr=0.1), [])]:
        source = make()
        w.grad = torch.ones(3)
        source.step()
        state = funcopt.torch.state_from_torch(source, params)
        target = make()
        funcopt.torch.state_to_torch(state, target)
        assert sorted(target.state[w]) == sorted(keys)
        if "step" in keys:
            step = target.state[w]["step"]
            assert step.dtype == torch.float32 and step.shape == () and step.item() == 1.0
    adagrad = torch.optim.Adagrad([w], initial_accumulator_value=0.5)
    state = funcopt.torch.state_from_torch(adagrad, params)
    assert state.sum[0].tolist() == [0.5] * 3 and int(state.count) == 0


def test_mixed_configurations_are_refused():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "fused": True}])
    with raises(TypeError, "torch.optim.adamw.AdamW in this configuration",
                "funcopt.adamw_torch_fused"):
        funcopt.torch.state_from_torch(opt, [np.ones(2, np.float32)] * 2)


def test_optax_adamw_state_still_writes_into_torch_adamw():
    """``state_to_torch`` keeps taking ``optax.adamw``'s state for ``torch.optim.AdamW``."""
    import jax.numpy as jnp
    import optax
    w = torch.nn.Parameter(torch.ones(2))
    params = [jnp.ones(2)]
    tx = optax.adamw(1e-3)
    _, state = tx.update([jnp.ones(2)], tx.init(params), params)
    opt = torch.optim.AdamW([w])
    funcopt.torch.state_to_torch(state, opt)
    assert opt.state[w]["step"].item() == 1.0
    np.testing.assert_array_equal(opt.state[w]["exp_avg"].numpy(), np.asarray(state[0].mu[0]))
