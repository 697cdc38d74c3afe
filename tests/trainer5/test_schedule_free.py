"""funcopt's schedule-free AdamW/SGD/RAdam against schedulefree 1.4.1's AdamWScheduleFree,
SGDScheduleFree and RAdamScheduleFree (the classes the 5.23 Trainer builds for
``schedule_free_adamw``/``_sgd``/``_radam``), run side by side.

Bitwise where it can be:
* the group-level scalars every kernel sees (the learning rate, ``ckp1``, the y coefficient,
  the bias correction), which the reference computes in Python float64, over thousands of
  steps (:func:`test_group_scalars_bitwise_long_run`); for averaging powers outside
  {0, 0.5, 1, 2, 3, 4} funcopt takes a float32 power, within 1e-6;
* ``exp_avg_sq`` always, and ``z`` without weight decay (it never sees y then);
* from the reference's own state, every step: z, exp_avg_sq, the eval/train weights, and y
  wherever an additive update can express it (``p + (new - p)`` rounds back to ``new``;
  it cannot always when a step lands near zero from afar).
Free-running over 25 float32 steps the rest stays within 1e-6 relative, printed beside the
reference's own float32-vs-float64 noise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import reference
from menu_parity import bitwise, problem, report, run_funcopt, run_reference, worst
from parity import SHAPES, as_np, bf16_close

import funcopt
from funcopt import _core
from funcopt import _double_float as df

torch = reference("torch")
schedulefree = reference("schedulefree")

STEPS = 25
KINDS = ("adamw", "sgd", "radam")
CLASSES = {"adamw": "AdamWScheduleFree", "sgd": "SGDScheduleFree", "radam": "RAdamScheduleFree"}


def random_config(kind, seed):
    """Reference keyword arguments and a decay mask (the Trainer's two groups)."""
    rng = np.random.default_rng(seed)
    pick = lambda *xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    cfg = dict(weight_decay=pick(0.0, 0.01, 0.3), r=pick(0.0, 0.0, 1.0, 0.75),
               weight_lr_power=pick(2.0, 2.0, 0.0, 1.0, 2.5))
    if kind == "sgd":
        cfg.update(lr=pick(0.1, 0.5, 1.0), momentum=pick(0.9, 0.5, 0.99),
                   warmup_steps=pick(0, 5, 10, 2.5))
    else:
        cfg.update(lr=pick(2.5e-3, 1e-2, 0.05),
                   betas=(pick(0.9, 0.95, 0.5), pick(0.999, 0.99, 0.9)),
                   eps=pick(1e-8, 1e-6, 0.0))
    if kind == "adamw":
        cfg["warmup_steps"] = pick(0, 5, 10, 2.5, 40)
    if kind == "radam":
        cfg["silent_sgd_phase"] = pick(True, False)
    return cfg, [bool(x) for x in rng.integers(0, 2, len(SHAPES))]


CASES = [(kind, seed) for kind in KINDS for seed in range(4)]


def ours(kind, cfg, mask=None):
    kw = dict(learning_rate=cfg["lr"], weight_decay=cfg["weight_decay"], r=cfg["r"],
              weight_lr_power=cfg["weight_lr_power"], mask=mask)
    if kind == "sgd":
        return funcopt.schedule_free_sgd(momentum=cfg["momentum"],
                                         warmup_steps=cfg["warmup_steps"], **kw)
    kw.update(b1=cfg["betas"][0], b2=cfg["betas"][1], eps=cfg["eps"])
    if kind == "adamw":
        return funcopt.schedule_free_adamw(warmup_steps=cfg["warmup_steps"], **kw)
    return funcopt.schedule_free_radam(silent_sgd_phase=cfg["silent_sgd_phase"], **kw)


def maker(kind, cfg, mask):
    """The Trainer's setup: a decaying group and one with weight_decay 0; in train mode."""

    def make(params):
        groups = [{"params": [p for p, m in zip(params, mask, strict=True) if m]},
                  {"params": [p for p, m in zip(params, mask, strict=True) if not m],
                   "weight_decay": 0.0}]
        opt = getattr(schedulefree, CLASSES[kind])([g for g in groups if g["params"]], **cfg)
        opt.train()
        return opt

    return make


def is_exact(r, p) -> bool:
    return r in (0, 0.5, 1, 2, 3, 4) and p in (0, 0.5, 1, 2, 3, 4)


def state_pairs(kind, state, tparams, opt):
    pairs = [(state.z[i], opt.state[tp]["z"]) for i, tp in enumerate(tparams)]
    if kind != "sgd":
        pairs += [(state.exp_avg_sq[i], opt.state[tp]["exp_avg_sq"])
                  for i, tp in enumerate(tparams)]
    return pairs


@pytest.mark.parametrize("kind, seed", CASES, ids=[f"{k}-{s}" for k, s in CASES])
def test_float32_parity(kind, seed):
    cfg, mask = random_config(kind, seed)
    init, grads = problem(SHAPES, STEPS, seed)
    opt, tparams = run_reference(torch, maker(kind, cfg, mask), init, grads)
    opt64, tparams64 = run_reference(torch, maker(kind, cfg, mask), init, grads, "float64")
    state, params = run_funcopt(ours(kind, cfg, mask), init, grads)

    y_pairs = list(zip(params, tparams, strict=True))
    s_pairs = state_pairs(kind, state, tparams, opt)
    noise = worst(list(zip(tparams, tparams64, strict=True))
                  + [(a, b) for (_, a), (_, b) in zip(s_pairs, state_pairs(
                      kind, state, tparams64, opt64), strict=True)])
    dev, exact = worst(y_pairs + s_pairs), bitwise(y_pairs + s_pairs)
    report(f"{kind} {cfg} y, z, v", dev, noise, exact)
    x_ours = funcopt.schedule_free_eval_params(state, params)
    opt.eval()  # the reference's params now hold x
    opt64.eval()
    x_pairs = list(zip(x_ours, tparams, strict=True))
    x_noise = worst(list(zip(tparams, tparams64, strict=True)))
    report(f"{kind} eval weights x", worst(x_pairs), x_noise, bitwise(x_pairs))
    assert dev <= 1e-6 and worst(x_pairs) <= 1e-6
    group = opt.param_groups[0]
    assert int(state.k) == int(state.count) == group["k"] == STEPS
    assert abs(df.to_float(state.weight_sum) - group["weight_sum"]) <= 1e-12 * group["weight_sum"]
    assert abs(df.to_float(state.lr_max) - group["lr_max"]) <= 1e-14 * abs(group["lr_max"])
    assert bitwise(s_pairs[len(tparams):])  # the second moment never sees y
    if cfg["weight_decay"] == 0 or not any(mask):
        assert bitwise(s_pairs)  # nor does z without decay


def state_from(kind, opt, tparams):
    """The reference's current state as a ScheduleFreeState (group values as [hi, lo])."""
    group = opt.param_groups[0]
    b1 = group["momentum"] if kind == "sgd" else group["betas"][0]
    z = [jnp.asarray(opt.state[p]["z"].numpy()) for p in tparams]
    v = None if kind == "sgd" else [jnp.asarray(opt.state[p]["exp_avg_sq"].numpy())
                                    for p in tparams]
    return funcopt.ScheduleFreeState(
        jnp.int32(group["k"]), jnp.int32(group["k"]), df.pair_from_float(group["weight_sum"]),
        df.pair_from_float(group["lr_max"]), jnp.bool_(group["train_mode"]),
        df.pair_from_float(b1), z, v)


def assert_y(old, ours, ref):
    """Bitwise where ``old + fl(ref - old)`` rounds back to ``ref``; elsewhere within what
    ``old + u`` can miss by: half an ulp of the step plus half an ulp of the result."""
    expressible = (old + (ref - old)) == ref
    assert np.array_equal(ours[expressible], ref[expressible])
    bound = (np.spacing(np.abs(ref - old)) + np.spacing(np.abs(ref))) / 2
    assert np.all(np.abs(ours - ref) <= bound)
    return int(np.sum(~expressible))


@pytest.mark.parametrize("kind, seed", CASES[::2], ids=[f"{k}-{s}" for k, s in CASES[::2]])
def test_each_step_bitwise(kind, seed):
    """Every step from the reference's own state (its y, z, exp_avg_sq and group floats)."""
    cfg, mask = random_config(kind, seed)
    init, grads = problem(SHAPES, STEPS, seed + 100)
    tparams = [torch.nn.Parameter(torch.tensor(x)) for x in init]
    opt = maker(kind, cfg, mask)(tparams)
    tx = ours(kind, cfg, mask)
    step = jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]))
    update = jax.jit(lambda g, s, p: tx.update(g, s, p)[1])
    eval_params = jax.jit(funcopt.schedule_free_eval_params)
    train_params = jax.jit(funcopt.schedule_free_train_params)
    state = tx.init([jnp.asarray(x) for x in init])
    inexpressible = 0
    for gs in grads:
        old = [p.detach().numpy().copy() for p in tparams]
        for p, g in zip(tparams, gs, strict=True):
            p.grad = torch.tensor(g)
        opt.step()
        g_j = [jnp.asarray(g) for g in gs]
        params = step(g_j, state, [jnp.asarray(x) for x in old])
        new_state = update(g_j, state, [jnp.asarray(x) for x in old])
        exact = is_exact(cfg["r"], cfg["weight_lr_power"])
        for o, ours_p, tp in zip(old, params, tparams, strict=True):
            if exact:
                inexpressible += assert_y(o, np.asarray(ours_p), tp.detach().numpy())
            else:
                np.testing.assert_allclose(np.asarray(ours_p), tp.detach().numpy(), rtol=1e-6,
                                           atol=1e-7)
        assert bitwise(state_pairs(kind, new_state, tparams, opt))
        state = state_from(kind, opt, tparams)
        y = [jnp.asarray(p.detach().numpy()) for p in tparams]
        x = eval_params(state, y)
        opt.eval()
        assert bitwise(list(zip(x, tparams, strict=True)))
        y_back = train_params(state, [jnp.asarray(p.detach().numpy()) for p in tparams])
        opt.train()
        assert bitwise(list(zip(y_back, tparams, strict=True)))
    print(f"{kind} {cfg}: {inexpressible} y elements an additive update could not express")


def reference_scalars(kind, cfg, steps):
    """The reference's own group floats over ``steps`` steps (a 0-D parameter, zero
    gradients), and the coefficients its step computes from them, by its own expressions."""
    p = torch.nn.Parameter(torch.zeros(()))
    opt = getattr(schedulefree, CLASSES[kind])([p], **cfg)
    opt.train()
    rows = []
    for _ in range(steps):
        k = opt.param_groups[0]["k"]
        p.grad = torch.zeros(())
        opt.step()
        g = opt.param_groups[0]
        b1 = g["momentum"] if kind == "sgd" else g["betas"][0]
        weight = ((k + 1) ** g["r"]) * (g["lr_max"] ** g["weight_lr_power"])
        try:
            ckp1 = weight / g["weight_sum"]
        except ZeroDivisionError:
            ckp1 = 0
        lr = g["scheduled_lr"]
        bc2 = 1.0 if kind == "sgd" else 1 - g["betas"][1] ** (k + 1)
        rows.append((lr, ckp1, lr * (b1 * (1 - ckp1) - 1), bc2))
    return np.array(rows, np.float32), opt.param_groups[0]


def our_scalars(tx, steps):
    rule = _core.rule_of(tx)
    group = tuple(tx.init(jnp.zeros(()))[1:6])

    def body(carry, count):
        scalars, group = rule.group_step(count, carry)
        bc2 = jnp.float32(1) if scalars.bias_correction2 is None else scalars.bias_correction2
        return group, jnp.stack([scalars.lr, scalars.ckp1, scalars.alpha, bc2])

    group, rows = jax.jit(lambda g: jax.lax.scan(body, g, jnp.arange(steps)))(group)
    return np.asarray(rows), group


LONG = [
    ("adamw", dict(lr=2.5e-3), 30000),
    ("adamw", dict(lr=1e-2, betas=(0.9, 0.9999), warmup_steps=1000, weight_decay=0.1), 4000),
    ("adamw", dict(lr=3e-4, warmup_steps=0.1), 2000),  # a ratio passed as steps (the Trainer)
    ("adamw", dict(lr=1e-3, r=1.0, weight_lr_power=4.0, warmup_steps=50), 2000),
    ("adamw", dict(lr=1e-3, r=0.5, weight_lr_power=2.5, warmup_steps=50), 2000),
    ("sgd", dict(lr=1.0, warmup_steps=100), 4000),
    ("sgd", dict(lr=0.3, momentum=0.5, weight_lr_power=0.0), 2000),
    ("radam", dict(lr=2.5e-3), 4000),
    ("radam", dict(lr=1e-2, betas=(0.9, 0.99), silent_sgd_phase=False), 2000),
    ("radam", dict(lr=1e-2, betas=(0.9, 0.9999), r=2.0), 3000),
]


@pytest.mark.parametrize("kind, cfg, steps", LONG, ids=[f"{k}-{i}" for i, (k, _, _) in
                                                         enumerate(LONG)])
def test_group_scalars_bitwise_long_run(kind, cfg, steps):
    ref, group = reference_scalars(kind, cfg, steps)
    keys = dict(lr="learning_rate", betas=None, momentum="momentum")
    kw = {keys.get(k, k): v for k, v in cfg.items() if k != "betas"}
    if "betas" in cfg:
        kw.update(b1=cfg["betas"][0], b2=cfg["betas"][1])
    tx = getattr(funcopt, f"schedule_free_{kind}")(**kw)
    mine, our_group = our_scalars(tx, steps)
    differ = np.sum(mine != ref, axis=0)
    rel = np.max(np.abs(mine - ref) / np.maximum(np.abs(ref), 1e-30), axis=0)
    print(f"{kind} {cfg}: {steps} steps, [lr, ckp1, alpha, bc2] differ on {differ.tolist()} "
          f"steps, worst relative {rel.tolist()}")
    assert differ[0] == differ[3] == 0  # the learning rate and bias correction never
    weight_sum = df.to_float(our_group[1])
    if is_exact(cfg.get("r", 0.0), cfg.get("weight_lr_power", 2.0)):
        assert np.array_equal(mine, ref)
        # float64's own rounding: at most half an ulp per addition
        assert abs(weight_sum - group["weight_sum"]) <= steps * 2.0**-52 * group["weight_sum"]
    else:
        assert np.all(rel <= 1e-6)
        assert weight_sum == pytest.approx(group["weight_sum"], rel=1e-6)
    assert df.to_float(our_group[2]) == pytest.approx(group["lr_max"], rel=1e-14)


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_scan_equals_jit(kind):
    cfg, mask = random_config(kind, 1)
    init, grads = problem(SHAPES, 12, 1)
    tx = ours(kind, cfg, mask)
    assert leaves_equal(run_funcopt(tx, init, grads), run_funcopt(tx, init, grads, scan=True))


def run_with(tx, opt, tparams, init, grads, before_step):
    """funcopt under jit beside the reference; ``before_step(t, state, opt) -> state``."""
    params = [jnp.asarray(x) for x in init]
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)))
    for t, gs in enumerate(grads):
        state = before_step(t, state, opt)
        for p, g in zip(tparams, gs, strict=True):
            p.grad = torch.tensor(g)
        opt.step()
        params, state = step([jnp.asarray(g) for g in gs], state, params)
    return state, params


@pytest.mark.parametrize("kind", ["adamw", "radam"])
def test_inject_hyperparams_learning_rate_change(kind):
    """Injected hyperparameters (float32 values) and a learning rate lowered mid-run, as a user
    setting ``group['lr']`` does: lr_max keeps the larger one. The betas stay static: injected,
    they arrive rounded to float32 (0.99 -> 0.99000001), which moves ``1 - b2**t`` by ~1e-6."""
    kw = dict(learning_rate=0.02, b1=0.9, b2=0.99, weight_decay=0.1)
    ref_kw = dict(lr=0.02, betas=(0.9, 0.99), weight_decay=0.1)
    if kind == "adamw":
        kw["warmup_steps"], ref_kw["warmup_steps"] = 3, 3
    tx = optax.inject_hyperparams(getattr(funcopt, f"schedule_free_{kind}"),
                                  static_args=("b1", "b2"))(**kw)
    init, grads = problem(SHAPES, STEPS, 5)
    tparams = [torch.nn.Parameter(torch.tensor(x)) for x in init]
    opt = maker(kind, ref_kw, [True] * len(SHAPES))(tparams)

    def lower_at_10(t, state, opt):
        if t == 10:
            opt.param_groups[0]["lr"] = 0.005
            state.hyperparams["learning_rate"] = jnp.asarray(0.005, jnp.float32)
        return state

    state, params = run_with(tx, opt, tparams, init, grads, lower_at_10)
    sf = state.inner_state
    pairs = list(zip(params, tparams, strict=True)) + state_pairs(kind, sf, tparams, opt)
    report(f"{kind} inject_hyperparams, lr 0.02 -> 0.005 at step 10", worst(pairs))
    assert worst(pairs) <= 1e-6
    assert df.to_float(sf.lr_max) == pytest.approx(opt.param_groups[0]["lr_max"], rel=1e-7)


def test_learning_rate_schedule():
    """A schedule as the learning rate (the Trainer steps its scheduler on schedule-free too):
    transformers' linear schedule on the reference, funcopt's on funcopt."""
    transformers = reference("transformers")
    init, grads = problem(SHAPES, STEPS, 6)
    tparams = [torch.nn.Parameter(torch.tensor(x)) for x in init]
    opt = maker("adamw", dict(lr=0.01, warmup_steps=4), [True] * len(SHAPES))(tparams)
    scheduler = transformers.get_linear_schedule_with_warmup(opt, 3, STEPS + 5)
    tx = funcopt.schedule_free_adamw(funcopt.get_linear_schedule_with_warmup(0.01, 3, STEPS + 5),
                                     warmup_steps=4)

    def step_scheduler(t, state, opt):
        if t:
            scheduler.step()
        return state

    state, params = run_with(tx, opt, tparams, init, grads, step_scheduler)
    pairs = list(zip(params, tparams, strict=True)) + state_pairs("adamw", state, tparams, opt)
    report("adamw with a linear schedule", worst(pairs))
    assert worst(pairs) <= 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_continues_from_eval_mode(kind):
    """A state taken from an optimizer in eval mode (params hold x, train_mode False): eval
    weights are the params; ``schedule_free_train_params`` is the reference's ``.train()``,
    and the update from there its ``step()``."""
    cfg, mask = random_config(kind, 2)
    init, grads = problem(SHAPES, 10, 2)
    tparams = [torch.nn.Parameter(torch.tensor(x)) for x in init]
    opt = maker(kind, cfg, mask)(tparams)
    for gs in grads[:-1]:
        for p, g in zip(tparams, gs, strict=True):
            p.grad = torch.tensor(g)
        opt.step()
    opt.eval()
    state = state_from(kind, opt, tparams)
    assert not bool(state.train_mode)
    x = [jnp.asarray(p.detach().numpy()) for p in tparams]
    assert leaves_equal(funcopt.schedule_free_eval_params(state, x), x)  # already x
    y = funcopt.schedule_free_train_params(state, x)
    opt.train()
    assert bitwise(list(zip(y, tparams, strict=True)))
    tx = ours(kind, cfg, mask)
    updates, new_state = jax.jit(tx.update)([jnp.asarray(g) for g in grads[-1]], state, y)
    for p, g in zip(tparams, grads[-1], strict=True):
        p.grad = torch.tensor(g)
    opt.step()
    assert bool(new_state.train_mode)
    assert bitwise(state_pairs(kind, new_state, tparams, opt))
    assert worst(list(zip(optax.apply_updates(y, updates), tparams, strict=True))) <= 1e-6


def test_zero_learning_rate_and_nested_state():
    """lr 0: the reference's ZeroDivisionError branch (ckp1 = 0) leaves everything in place;
    the eval weights are found inside a chain."""
    tx = optax.chain(optax.clip_by_global_norm(1.0), funcopt.schedule_free_adamw(0.0))
    params = [jnp.asarray(x) for x in problem(SHAPES, 1, 3)[0]]
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(params, state, params)
    assert all(not np.any(np.asarray(u)) for u in updates)
    sf = state[1]
    assert int(sf.k) == 1 and df.to_float(sf.weight_sum) == 0.0 and df.to_float(sf.lr_max) == 0
    assert leaves_equal(funcopt.schedule_free_eval_params(state, params), params)
    with pytest.raises(ValueError, match="schedule-free"):
        funcopt.schedule_free_eval_params(optax.sgd(0.1).init(params), params)


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16(kind):
    """bf16 parameters: z and exp_avg_sq stay bf16 (the reference's clones), the group fields
    keep their types, and the values follow torch's bf16 kernels."""
    from parity import BF16_SHAPES

    cfg, mask = random_config(kind, 3)
    init, grads = problem(BF16_SHAPES, 10, 3, scale=0.1)
    opt, tparams = run_reference(torch, maker(kind, cfg, mask), init, grads, "bfloat16")
    tx = ours(kind, cfg, mask)
    state, params = run_funcopt(tx, init, grads, "bfloat16")
    first = tx.init([jnp.asarray(x).astype(jnp.bfloat16) for x in init])
    assert jax.tree.map(lambda a: (a.dtype, a.shape), first) == jax.tree.map(
        lambda a: (a.dtype, a.shape), state)
    assert {x.dtype for x in jax.tree.leaves(state.z)} == {jnp.dtype(jnp.bfloat16)}
    pairs = list(zip(params, tparams, strict=True)) + state_pairs(kind, state, tparams, opt)
    equal = np.mean(np.concatenate([as_np(a).ravel() == as_np(b).ravel() for a, b in pairs]))
    print(f"{kind} bf16: {equal:.2%} of y, z, v elements bit-equal to torch's bf16 kernels")
    assert equal >= 0.995
    bf16_close(params, tparams, min_equal=0.99)


def test_construction_errors():
    """What the reference checks (SGD: lr, weight_decay, momentum) fails at construction
    there and here; funcopt also rejects values the reference's step or eval() cannot use."""
    p = [torch.nn.Parameter(torch.zeros(2))]
    for bad in (dict(lr=-1.0), dict(weight_decay=-0.1), dict(momentum=0.0), dict(momentum=1.0)):
        with pytest.raises(ValueError):
            schedulefree.SGDScheduleFree(p, **bad)
    for fn, kw, name in [
        (funcopt.schedule_free_sgd, dict(learning_rate=-1.0), "learning_rate"),
        (funcopt.schedule_free_sgd, dict(weight_decay=-0.1), "weight_decay"),
        (funcopt.schedule_free_sgd, dict(momentum=0.0), "momentum"),
        (funcopt.schedule_free_sgd, dict(momentum=1.0), "momentum"),
        (funcopt.schedule_free_adamw, dict(b1=0.0), "b1"),
        (funcopt.schedule_free_adamw, dict(b2=1.0), "b2"),
        (funcopt.schedule_free_adamw, dict(eps=-1e-8), "eps"),
        (funcopt.schedule_free_adamw, dict(warmup_steps=-1), "warmup_steps"),
        (funcopt.schedule_free_adamw, dict(weight_lr_power=-1.0), "weight_lr_power"),
        (funcopt.schedule_free_radam, dict(r=float("inf")), "r"),
        (funcopt.schedule_free_radam, dict(b2=-0.1), "b2"),
    ]:
        with pytest.raises(ValueError, match=name):
            fn(**kw)
    with pytest.raises(TypeError, match="silent_sgd_phase"):
        funcopt.schedule_free_radam(silent_sgd_phase="yes")
    with pytest.raises(TypeError, match="learning_rate"):
        funcopt.schedule_free_adamw(learning_rate=None)
