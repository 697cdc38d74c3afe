"""Facts about funcopt's optimizers on 8 simulated CPU devices, printed as one JSON object.

Run by ``tests/test_sharding.py`` in a subprocess: ``--xla_force_host_platform_device_count``
must be set before JAX starts, and other test modules start JAX in the same pytest worker.
For each mesh flavour (explicit axes, JAX's default for ``jax.make_mesh``; auto axes) and each
optimizer it records:

- ``init``: the state shardings ``jax.jit(opt.init)`` produces on its own;
- ``helper``: those from ``jax.jit(opt.init, out_shardings=funcopt.state_shardings(opt, params))``,
  where :func:`state_shardings` reads what XLA propagates through one update;
- ``expected``: the state sharded like the parameters (moments as the parameter; Adafactor's
  row factor as the parameter without its last axis, the column factor without its
  second-to-last; scalars replicated);
- ``after``: the shardings after 3 donated steps of one compiled executable;
- ``collectives``: collective ops in the compiled update's HLO;
- ``max_abs_diff`` / ``bitwise_equal``: 3 steps sharded vs on one device, params and state.
"""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import funcopt  # noqa: E402

SPECS = {  # parameter name -> (shape, PartitionSpec over the ("data", "model") mesh)
    "w": ((16, 32), P("data", "model")),
    "emb": ((64, 8), P("model", None)),
    "w3": ((4, 16, 32), P(None, "data", "model")),
    "b": ((32,), P("model")),
    "ln": ((24,), P()),
}
OPTIMIZERS = {
    "adamw": lambda: funcopt.adamw(1e-2, weight_decay=0.1),
    "adafactor": lambda: funcopt.adafactor(),
    "adafactor_beta1_wd": lambda: funcopt.adafactor(
        learning_rate=1e-2, relative_step=False, beta1=0.9, weight_decay=0.1),
    "adam_weight_decay": lambda: funcopt.adam_weight_decay(
        1e-2, weight_decay_rate=0.1, exclude_from_weight_decay=["ln"]),
}
COLLECTIVES = ["all-gather", "all-reduce", "reduce-scatter", "all-to-all",
               "collective-permute"]


def spec_of(x, ndim):
    """A sharding's PartitionSpec as a list of length ndim (None where not sharded)."""
    spec = list(getattr(x.sharding, "spec", P()))
    spec = spec + [None] * (ndim - len(spec))
    return [tuple(a) if isinstance(a, list | tuple) else a for a in spec]


def expected_spec(path, ndim):
    """The spec of a state leaf at ``path`` if the state is sharded like the parameters."""
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    name = next((k for k in keys if k in SPECS), None)
    if name is None or ndim == 0:
        return [None] * ndim
    shape, spec = SPECS[name]
    spec = list(spec) + [None] * (len(shape) - len(spec))
    if "exp_avg_sq_row" in keys:
        return spec[:-1]
    if "exp_avg_sq_col" in keys:
        return spec[:-2] + spec[-1:]
    return spec


def describe(tree, expected=False):
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        spec = expected_spec(path, x.ndim) if expected else spec_of(x, x.ndim)
        out[jax.tree_util.keystr(path)] = [str(a) for a in spec]
    return out


def step_fn(opt):
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state
    return step


def numbers():
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in SPECS.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in SPECS.items()}
             for _ in range(3)]
    return params, grads


def unsharded(opt):
    params, grads = numbers()
    one = jax.devices()[0]
    put = lambda t: jax.device_put(t, one)
    params = put(params)
    state = jax.jit(opt.init)(params)
    step = jax.jit(step_fn(opt))
    for g in grads:
        params, state = step(params, state, put(g))
    return jax.device_get((params, state))


def sharded(opt, mesh):
    params, grads = numbers()
    shard = lambda t: {k: jax.device_put(v, NamedSharding(mesh, SPECS[k][1]))
                       for k, v in t.items()}
    params = shard(params)
    facts = {}
    facts["init"] = describe(jax.jit(opt.init)(params))
    state_sh = funcopt.state_shardings(opt, params)
    state = jax.jit(opt.init, out_shardings=state_sh)(params)
    facts["helper"] = describe(state)
    facts["expected"] = describe(state, expected=True)
    params_sh = jax.tree.map(lambda x: x.sharding, params)
    step = jax.jit(step_fn(opt), donate_argnums=(0, 1),
                   out_shardings=(params_sh, state_sh))
    compiled = step.lower(params, state, shard(grads[0])).compile()
    hlo = compiled.as_text()
    facts["collectives"] = {c: hlo.count(f" {c}(") + hlo.count(f" {c}-start(")
                            for c in COLLECTIVES}
    # One executable for every step: it rejects inputs whose shardings have drifted.
    for g in grads:
        params, state = compiled(params, state, shard(g))
    facts["after"] = describe(state)
    facts["params_after"] = describe(params)
    facts["params_expected"] = describe(params, expected=True)
    return facts, jax.device_get((params, state))


def compare(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    diffs = [float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)),
                       initial=0.0)) for x, y in zip(la, lb, strict=True)]
    equal = all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))
    return max(diffs), equal


def main():
    assert jax.device_count() == 8, jax.devices()
    results = {}
    references = {name: unsharded(make()) for name, make in OPTIMIZERS.items()}
    for flavour, axis_type in (("explicit", AxisType.Explicit), ("auto", AxisType.Auto)):
        mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
        for name, make in OPTIMIZERS.items():
            reference = references[name]
            with jax.set_mesh(mesh):
                facts, result = sharded(make(), mesh)
            facts["max_abs_diff"], facts["bitwise_equal"] = compare(result, reference)
            results[f"{flavour}/{name}"] = facts
    json.dump(results, sys.stdout)
    print()


if __name__ == "__main__":
    main()
