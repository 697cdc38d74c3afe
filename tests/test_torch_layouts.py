"""Registering an optimizer with funcopt.torch (funcopt/torch/_layouts.py's recipe), end to end.

A toy optimizer with per-parameter state (``step``, a momentum buffer under another name) and
group-level state (``k``, counted in the param group as schedule-free does) is written twice:
as a funcopt rule and as a torch reference class. Registered with a few lines, it runs in
``funcopt.torch.Optimizer`` and converts both ways; shapes, dtypes and keys come from the rule.
"""

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from torch_model import raises, torch  # noqa: F401

import funcopt.torch
from funcopt import _core
from funcopt._numerics import f32, learning_rate_at
from funcopt.torch import _registry
from funcopt.torch._layouts import Layout, Reference


class ToyState(NamedTuple):
    count: jax.Array
    k: jax.Array  # group-level
    step: Any
    exp_avg: Any


@dataclasses.dataclass(frozen=True)
class Toy(_core.Rule):
    State: ClassVar[type] = ToyState
    group_fields: ClassVar[tuple] = ("k",)
    learning_rate: Any
    momentum: Any

    def init_group(self):
        return (jnp.zeros([], jnp.int32),)

    def group_step(self, count, group):
        k = group[0] + 1
        return learning_rate_at(self.learning_rate, count) / k.astype(f32), (k,)

    def init_leaf(self, p):
        return jnp.zeros([], jnp.int32), jnp.zeros_like(p)

    def update_leaf(self, scale, g, p, fields, decays):
        step, m = fields
        m = m * f32(self.momentum) + g
        return -scale * m, (step + 1, m)


def toy(learning_rate=0.1, momentum=0.5):
    return _core.transformation(Toy(learning_rate, momentum))


class ToyTorch(torch.optim.Optimizer):
    """The reference: ``buf = momentum * buf + g; p -= lr / k * buf``, k counted per group."""

    def __init__(self, params, lr=0.1, momentum=0.5):
        super().__init__(params, {"lr": lr, "momentum": momentum, "k": 0})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            group["k"] += 1
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["momentum_buffer"] = torch.zeros_like(p)
                state["step"] += 1
                state["momentum_buffer"].mul_(group["momentum"]).add_(p.grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"] / group["k"])


# The registration: a few lines.
TOY = _registry.register(Layout(
    toy, ToyState, keys={"momentum_buffer": "exp_avg"}, group_keys={"k": "k"},
    references=(Reference(__name__, "ToyTorch", lambda group: {
        "learning_rate": group["lr"], "momentum": group["momentum"]}),),
))


def params_pair():
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (4,), ()]]
    return [torch.nn.Parameter(torch.tensor(v)) for v in values]


def run(opt, params, steps, start=0):
    for i in range(start, start + steps):
        for j, p in enumerate(params):
            p.grad = torch.full(p.shape, 0.1 * (i + 1) * (j - 1), dtype=torch.float32)
        opt.step()


def close(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(np.asarray(x.detach()), np.asarray(y.detach()), rtol=1e-6,
                                   atol=1e-7)


def test_registered_optimizer_runs_in_the_bridge_with_group_state():
    ref_params, params = params_pair(), params_pair()
    ref, opt = ToyTorch(ref_params, lr=0.1), funcopt.torch.Optimizer(params, toy, lr=0.1)
    assert opt.param_groups[0]["k"] == 0  # the rule's initial group value, as torch keeps it
    run(ref, ref_params, 3)
    run(opt, params, 3)
    close(ref_params, params)
    assert opt.param_groups[0]["k"] == 3 == ref.param_groups[0]["k"]
    assert [opt.state[p]["step"] for p in params] == [3, 3, 3]
    assert list(opt.state[params[0]]) == ["step", "momentum_buffer"]
    close([ref.state[p]["momentum_buffer"] for p in ref_params],
          [opt.state[p]["momentum_buffer"] for p in params])

    # Its state dict loads into the reference and back (group state included).
    again = ToyTorch(params_pair())
    again.load_state_dict(opt.state_dict())
    assert again.param_groups[0]["k"] == 3


def test_registered_optimizer_converts_both_ways():
    ref_params = params_pair()
    ref = ToyTorch(ref_params, lr=0.1)
    run(ref, ref_params, 2)
    jax_params = [jnp.asarray(p.detach().numpy()) for p in ref_params]
    state = funcopt.torch.state_from_torch(ref, jax_params)
    assert isinstance(state, ToyState) and int(state.k) == 2 and int(state.count) == 2
    assert jax.tree.map(jnp.shape, state.exp_avg) == [(3, 4), (4,), ()]

    fresh_params = params_pair()
    with torch.no_grad():
        for p, q in zip(fresh_params, ref_params, strict=True):
            p.copy_(q)
    for target in (ToyTorch(fresh_params), funcopt.torch.Optimizer(fresh_params, toy)):
        funcopt.torch.state_to_torch(state, target)
        assert target.param_groups[0]["k"] == 2
        assert [target.state[p]["step"] for p in fresh_params] == [2, 2, 2]
    run(ref, ref_params, 2, start=2)
    run(target, fresh_params, 2, start=2)  # the funcopt.torch.Optimizer continues the run
    close(ref_params, fresh_params)


def test_reference_step_formats():
    """transformers/bitsandbytes keep ``step`` as a Python int, torch.optim as a float32
    0-d tensor: what state_to_torch writes into a reference."""
    assert TOY.references[0].step_value(3, "cpu") == 3
    step = Reference("torch.optim.adam", "Adam", dict, tensor_step=True).step_value(3, "cpu")
    assert step.dtype == torch.float32 and step.shape == () and step.item() == 3.0


def test_group_state_must_agree_across_param_groups():
    a, b = params_pair()[:2]
    ref = ToyTorch([{"params": [a]}, {"params": [b]}])
    ref.param_groups[1]["k"] = 5
    with raises(ValueError, "different 'k' values", "keeps one"):
        funcopt.torch.state_from_torch(ref, [jnp.zeros((3, 4)), jnp.zeros(4)])
