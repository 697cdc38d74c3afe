"""funcopt.torch state: state dicts shared with the reference classes, and state_from_torch /
state_to_torch continuing a torch run in JAX and back.

Every resumed run ends where the uninterrupted reference run ends, to float32 round-off
(measured ~1e-7 of the largest weight; TOL leaves a 10x margin).
"""

import functools
import io

import jax
import jax.numpy as jnp
import optax
import pytest
from torch_model import (  # noqa: F401  (one_torch_thread: an autouse fixture)
    batch,
    hf_adamw,
    make_model,
    one_torch_thread,
    raises,
    rel_diff,
    torch,
    transformers,
    weights,
)

import funcopt
import funcopt.torch

TOL = 1e-6  # max |difference| / max |weight|
HALF = 5


def loss(model):
    x, y = batch(next(model.parameters()).dtype)
    return torch.nn.functional.mse_loss(model(x).float(), y.float())


def train(model, opt, steps, scheduler=None):
    for _ in range(steps):
        opt.zero_grad()
        loss(model).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def saved(obj):
    """``obj`` after torch.save / torch.load (no tensor shared with the original)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def groups(model):
    named = list(model.named_parameters())
    return [{"params": [p for _, p in named if p.ndim >= 2]},
            {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0, "lr": 3e-3}]


PAIRS = {  # name: (reference class, drop-in, hyperparameters, with a schedule)
    "adamw": (hf_adamw, funcopt.torch.AdamW, dict(lr=1e-2, weight_decay=0.1), True),
    "adafactor": (transformers.Adafactor, funcopt.torch.Adafactor,
                  dict(lr=1e-2, relative_step=False, beta1=0.9, weight_decay=0.01), True),
    "adafactor-relative": (transformers.Adafactor, funcopt.torch.Adafactor, {}, False),
}


def start(make, kw, schedule, model=None):
    model = model or make_model()
    opt = make(groups(model) if "lr" in kw else model.parameters(), **kw)
    scheduler = None
    if schedule:
        scheduler = transformers.get_scheduler("linear", opt, num_warmup_steps=2,
                                               num_training_steps=2 * HALF)
    return model, opt, scheduler


@pytest.mark.parametrize("direction", ["reference-to-dropin", "dropin-to-reference"])
@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_state_dicts_cross_load_mid_run(pair, direction):
    """Train half with one class, save (torch.save), resume with the other in the documented
    order (scheduler built, then optimizer and scheduler states loaded): the end weights are
    those of the uninterrupted reference run."""
    reference_cls, dropin, kw, schedule = PAIRS[pair]
    first, second = (reference_cls, dropin) if direction == "reference-to-dropin" else (
        dropin, reference_cls)
    model, opt, scheduler = start(reference_cls, kw, schedule)
    train(model, opt, 2 * HALF, scheduler)
    expected = weights(model)

    model, opt, scheduler = start(first, kw, schedule)
    train(model, opt, HALF, scheduler)
    checkpoint = saved({"model": model.state_dict(), "opt": opt.state_dict(),
                        "scheduler": scheduler and scheduler.state_dict()})
    model = make_model()
    model.load_state_dict(checkpoint["model"])
    model, opt, scheduler = start(second, kw, schedule, model)
    opt.load_state_dict(checkpoint["opt"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    train(model, opt, HALF, scheduler)
    assert rel_diff(expected, weights(model)) < TOL


def test_state_dict_layout_is_the_references():
    model, opt, _ = start(funcopt.torch.Adafactor, {}, False)
    train(model, opt, 2)
    ref_model, ref_opt, _ = start(transformers.Adafactor, {}, False)
    train(ref_model, ref_opt, 2)
    ours, theirs = saved(opt.state_dict()), saved(ref_opt.state_dict())
    assert ours["param_groups"] == theirs["param_groups"]
    for i, entry in theirs["state"].items():
        assert list(ours["state"][i]) == list(entry)
        assert type(ours["state"][i]["step"]) is int
        assert ours["state"][i]["RMS"].shape == () == entry["RMS"].shape
    opt = funcopt.torch.AdamW(make_model().parameters(), lr=1e-2)
    train(make_model(), opt, 0)
    assert opt.state_dict()["param_groups"][0].keys() == hf_adamw(
        make_model().parameters()).state_dict()["param_groups"][0].keys()


def test_state_dict_is_a_copy():
    """Loading our state dict into another optimizer in-process does not alias our state."""
    model, opt, _ = start(funcopt.torch.AdamW, dict(lr=1e-2), False)
    train(model, opt, 2)
    w = model[0].weight
    before = opt.state[w]["exp_avg"].clone()
    other_model = make_model()
    other = hf_adamw(groups(other_model), lr=1e-2)
    other.load_state_dict(opt.state_dict())
    train(other_model, other, 2)
    assert torch.equal(opt.state[w]["exp_avg"], before)


def test_bfloat16_adafactor_state_stays_float32_on_load():
    """torch's loader rounds floating state to the parameter's dtype; ours keeps float32."""
    model, ref_opt, _ = start(transformers.Adafactor, {}, False, make_model(torch.bfloat16))
    train(model, ref_opt, 2)
    sd = saved(ref_opt.state_dict())
    opt = funcopt.torch.Adafactor(model.parameters())
    opt.load_state_dict(sd)
    w = model[0].weight
    assert opt.state[w]["exp_avg_sq_row"].dtype == torch.float32
    assert torch.equal(opt.state[w]["exp_avg_sq_row"], sd["state"][0]["exp_avg_sq_row"])


# -- state_from_torch / state_to_torch -----------------------------------------------------


def jax_params(model):
    return [jnp.asarray(p.detach().float().numpy()).astype(jnp.bfloat16)
            if p.dtype == torch.bfloat16 else jnp.asarray(p.detach().numpy())
            for p in model.parameters()]


def torch_grads(params):
    """The loss gradients at the JAX ``params`` (a list like model.parameters())."""
    model = make_model()
    with torch.no_grad():
        for p, value in zip(model.parameters(), params, strict=True):
            p.copy_(torch.from_dlpack(value))
    loss(model).backward()
    return [jnp.asarray(p.grad.numpy()) for p in model.parameters()]


def lr_factor(step):
    """A warmup-then-decay multiplier, as LambdaLR applies it (step = updates made)."""
    return jnp.minimum((step + 1) / 3, 1.0) * (1.0 - step / 20)


def jax_adamw(lr):
    return funcopt.adamw(lr, weight_decay=0.1)


CONTINUATIONS = {  # torch optimizer factory, JAX transformation factory, base lr
    "transformers.AdamW": (lambda ps, lr: hf_adamw(ps, lr=lr, weight_decay=0.1), jax_adamw,
                           1e-2),
    "funcopt.torch.AdamW": (lambda ps, lr: funcopt.torch.AdamW(ps, lr=lr, weight_decay=0.1),
                            jax_adamw, 1e-2),
    "transformers.Adafactor": (
        lambda ps, lr: transformers.Adafactor(ps, lr=lr, relative_step=False, beta1=0.9),
        lambda lr: funcopt.adafactor(lr, relative_step=False, beta1=0.9), 1e-2),
    "funcopt.torch.Adafactor": (lambda ps, lr: funcopt.torch.Adafactor(ps),
                                lambda lr: funcopt.adafactor(), None),
    "torch.optim.AdamW": (lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0.1),
                          lambda lr: funcopt.adamw_torch(lr, weight_decay=0.1), 1e-2),
}


@functools.cache
def jitted_update(make_tx, base_lr):
    """One compiled update per transformation (shared by the tests that use it)."""
    schedule = None if base_lr is None else (lambda count: base_lr * lr_factor(count))
    return jax.jit(make_tx(schedule).update)


def torch_steps(model, opt, base_lr, steps, done):
    for step in range(done, done + steps):
        if base_lr is not None:
            for group in opt.param_groups:
                group["lr"] = base_lr * float(lr_factor(step))
        train(model, opt, 1)


@pytest.mark.parametrize("name", sorted(CONTINUATIONS))
def test_continue_in_jax_and_back(name):
    """torch for HALF steps -> state_from_torch -> JAX for HALF steps -> state_to_torch into a
    fresh optimizer -> torch for HALF steps: the uninterrupted torch run's weights. The JAX
    schedule reads the converted count."""
    make_opt, make_tx, base_lr = CONTINUATIONS[name]
    model = make_model()
    torch_steps(model, make_opt(model.parameters(), base_lr), base_lr, 3 * HALF, 0)
    expected = weights(model)

    model = make_model()
    opt = make_opt(model.parameters(), base_lr)
    torch_steps(model, opt, base_lr, HALF, 0)
    params = jax_params(model)
    state = funcopt.torch.state_from_torch(opt, params)
    update = jitted_update(make_tx, base_lr)
    for _ in range(HALF):
        updates, state = update(torch_grads(params), state, params)
        params = optax.apply_updates(params, updates)

    model = make_model()
    with torch.no_grad():
        for p, value in zip(model.parameters(), params, strict=True):
            p.copy_(torch.from_dlpack(value))
    opt = make_opt(model.parameters(), base_lr)
    funcopt.torch.state_to_torch(state, opt)
    torch_steps(model, opt, base_lr, HALF, 2 * HALF)
    assert rel_diff(expected, weights(model)) < TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_converted_state_has_the_init_structure(dtype):
    model = make_model(dtype)
    params = {"a_weight": jax_params(model)[0], "b_bias": jax_params(model)[1]}
    w, b = model[0].weight, model[0].bias
    cases = [
        (hf_adamw([w, b]), funcopt.adamw()),
        (transformers.Adafactor([w, b], beta1=0.9), funcopt.adafactor(beta1=0.9)),
        (funcopt.torch.Adafactor([w, b]), funcopt.adafactor()),
        (torch.optim.AdamW([w, b]), funcopt.adamw_torch()),
    ]
    for opt, tx in cases:
        state = funcopt.torch.state_from_torch(opt, params)  # not stepped yet: init
        expected = tx.init(params)
        assert jax.tree.structure(state) == jax.tree.structure(expected)
        for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            assert jnp.array_equal(got, want)


def test_adafactor_step_sizes_from_torch_are_the_references():
    """state_from_torch fills funcopt.adafactor's ``lr`` (which torch does not keep) with the
    optimizer's own step_size, per leaf and per param group: what transformers'
    AdafactorSchedule reads off the reference run (each group's first parameter)."""
    reference, converted = None, []
    for make in (transformers.Adafactor, funcopt.torch.Adafactor):
        model = make_model()
        named = list(model.named_parameters())
        opt = make([{"params": [p for _, p in named if p.ndim >= 2]},
                    {"params": [p for _, p in named if p.ndim < 2], "warmup_init": True,
                     "scale_parameter": False}])
        train(model, opt, 3)
        if reference is None:
            schedule = transformers.optimization.AdafactorSchedule(opt)
            reference = [float(x) for x in schedule.get_lr()]
        params = [jnp.asarray(p.detach().numpy()) for g in opt.param_groups for p in g["params"]]
        lrs = funcopt.adafactor_learning_rates(funcopt.torch.state_from_torch(opt, params))
        converted.append([float(lrs[0]), float(lrs[len(opt.param_groups[0]["params"])])])
    assert reference[1] == pytest.approx(3e-6, rel=1e-6)  # warmup_init: 1e-6 * t
    for lrs in converted:  # from transformers.Adafactor, from funcopt.torch.Adafactor
        assert lrs == pytest.approx(reference, rel=1e-6)


def test_skipped_parameters_convert_per_leaf():
    model = make_model()
    opt = funcopt.torch.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    train(model, opt, 2)
    model[0].bias.grad = None
    opt.step()
    state = funcopt.torch.state_from_torch(opt, jax_params(model))
    assert [int(s) for s in state.step] == [3, 2, 3, 3, 3, 3] and int(state.count) == 3
    fresh = funcopt.torch.AdamW(make_model().parameters())
    funcopt.torch.state_to_torch(state, fresh)
    assert [fresh.state[p]["step"] for p in fresh.param_groups[0]["params"]] == [3, 2, 3, 3, 3, 3]
    _, new = funcopt.adamw().update([jnp.zeros(1)], funcopt.adamw().init([jnp.zeros(1)]),
                                    [jnp.zeros(1)])
    lone = torch.nn.Parameter(torch.zeros(1))
    opt = hf_adamw([lone])
    funcopt.torch.state_to_torch(new._replace(step=[jnp.int32(0)]), opt)
    assert lone not in opt.state  # step 0: no state, as before torch's first step


# -- errors --------------------------------------------------------------------------------


def test_conversion_errors():
    model = make_model()
    params = jax_params(model)
    opt = funcopt.torch.AdamW(model.parameters())
    with raises(ValueError, "params has 5 leaves", "6 parameters", "jax.tree.leaves"):
        funcopt.torch.state_from_torch(opt, params[:5])
    named = {"weight": params[0], "bias": params[1]}  # sorted keys: bias first
    with raises(ValueError, "params leaf 0 (['bias'])", "parameter 0 (param group 0, parameter "
                "0) is float32[16, 8]"):
        funcopt.torch.state_from_torch(funcopt.torch.AdamW([model[0].weight, model[0].bias]),
                                       named)
    with raises(ValueError, "bfloat16[16, 8]"):
        funcopt.torch.state_from_torch(opt, [params[0].astype(jnp.bfloat16)] + params[1:])
    with raises(TypeError, "torch.optim.adadelta.Adadelta",
                "torch.optim.AdamW <-> funcopt.adamw_torch", "funcopt.torch.Optimizer"):
        funcopt.torch.state_from_torch(torch.optim.Adadelta(model.parameters()), params)
    with raises(TypeError, "state_to_torch", "SGD"):
        funcopt.torch.state_to_torch(funcopt.adamw().init(params),
                                     torch.optim.SGD(model.parameters(), lr=0.1))
    with raises(TypeError, "funcopt.adamw (AdamWState)", "AdafactorState"):
        funcopt.torch.state_to_torch(funcopt.adafactor().init(params), opt)
    with raises(TypeError, "funcopt.adamw_torch (AdamTorchState)", "AdamWState"):
        funcopt.torch.state_to_torch(funcopt.adamw().init(params),
                                     torch.optim.AdamW(model.parameters()))
    with raises(TypeError, "funcopt.adafactor"):
        funcopt.torch.state_to_torch(optax.adamw(1e-3).init(params),
                                     transformers.Adafactor(model.parameters()))
    with raises(ValueError, "5 leaves", "6 parameters"):
        funcopt.torch.state_to_torch(funcopt.adamw().init(params[:5]), opt)
    with raises(ValueError, "'exp_avg'", "param group 0, parameter 1", "(8,)"):
        funcopt.torch.state_to_torch(funcopt.adamw().init(params[:1] + [jnp.zeros(8)] +
                                                          params[2:]), opt)
    with raises(ValueError, "'exp_avg'", "beta1"):
        funcopt.torch.state_to_torch(funcopt.adafactor().init(params),
                                     transformers.Adafactor(model.parameters(), beta1=0.9))
    with raises(ValueError, "mu", "(8,)"):
        funcopt.torch.state_to_torch(optax.adamw(1e-3).init(params[:1] + [jnp.zeros(8)] +
                                                            params[2:]),
                                     torch.optim.AdamW(model.parameters()))
    with raises(TypeError, "arrays (with a shape and dtype)", "1.0"):
        funcopt.torch.state_from_torch(opt, [1.0] + params[1:])
    assert not opt.state  # nothing was written by the failed calls
    hf = hf_adamw(model.parameters())
    train(model, hf, 1)
    del hf.state[model[0].weight]["exp_avg_sq"]
    with raises(ValueError, "param group 0, parameter 0 has no 'exp_avg_sq'"):
        funcopt.torch.state_from_torch(hf, params)


def test_torch_adamw_states_convert_to_adamw_torch():
    """torch.optim.AdamW pairs with funcopt.adamw_torch (optax.adamw rounds otherwise): its
    amsgrad/maximize states and parameters at different steps convert."""
    model = make_model()
    params = jax_params(model)
    opt = torch.optim.AdamW(model.parameters(), amsgrad=True, maximize=True)
    train(model, opt, 1)
    model[0].bias.grad = None
    opt.step()
    state = funcopt.torch.state_from_torch(opt, params)
    assert isinstance(state, funcopt.AdamTorchState) and state.max_exp_avg_sq is not None
    assert [float(s) for s in state.step[:2]] == [2.0, 1.0] and int(state.count) == 2
