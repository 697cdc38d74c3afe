"""funcopt's 8-bit optimizers on 8 simulated CPU devices, facts printed as one JSON object.

Run by ``tests/test_bnb8bit_jax.py`` in a subprocess (``--xla_force_host_platform_device_count``
must be set before JAX starts). For each mesh flavour (explicit and auto axes), optimizer and
parameter set it records the state shardings that ``funcopt.state_shardings`` gives and those
after 3 donated steps of one compiled executable, the expected ones (codes sharded as their
parameter, absmax on the same mesh axes), the collectives in the compiled update's HLO, and
whether the sharded numbers equal the single-device ones bit for bit.

Two parameter sets: ``aligned`` (every last axis a multiple of 256, its shards too: blocks lie
within shards) and ``straddling`` (a 200-wide last axis: flat blocks cross rows and shards).
"""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _sharding_check import COLLECTIVES, compare, spec_of, step_fn  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import funcopt  # noqa: E402

PARAMS = {
    "aligned": {"w": ((16, 1024), P("data", "model")), "emb": ((512, 256), P("model", None)),
                "w3": ((4, 16, 1024), P(None, "data", "model")), "b": ((1024,), P("model")),
                "ln": ((24,), P())},
    "straddling": {"odd": ((32, 200), P("data", None)), "b": ((1024,), P("model"))},
}
OPTIMIZERS = {
    "adamw_8bit": lambda: funcopt.adamw_8bit(1e-2, weight_decay=0.1),
    "ademamix_8bit": lambda: funcopt.ademamix_8bit(1e-2, t_alpha=5),
    "lion_8bit": lambda: funcopt.lion_8bit(1e-3, weight_decay=0.1),
}


def expected(path, ndim, specs):
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    name = next((k for k in keys if k in specs), None)
    if name is None or ndim == 0:
        return [None] * ndim
    shape, spec = specs[name]
    spec = [tuple(a) if isinstance(a, list | tuple) else a for a in spec]
    spec = spec + [None] * (len(shape) - len(spec))
    return [None] * (ndim - len(spec)) + spec  # AdEMAMix's stacked EMAs: a leading 2


def describe(tree, specs=None):
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        spec = spec_of(x, x.ndim) if specs is None else expected(path, x.ndim, specs)
        out[jax.tree_util.keystr(path)] = [str(a) for a in spec]
    return out


def numbers(specs):
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in specs.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in specs.items()}
             for _ in range(3)]
    return params, grads


def unsharded(opt, specs):
    params, grads = numbers(specs)
    put = lambda t: jax.device_put(t, jax.devices()[0])  # noqa: E731
    params, state = put(params), jax.jit(opt.init)(put(params))
    step = jax.jit(step_fn(opt))
    for g in grads:
        params, state = step(params, state, put(g))
    return jax.device_get((params, state))


def sharded(opt, mesh, specs):
    params, grads = numbers(specs)
    shard = lambda t: {k: jax.device_put(v, NamedSharding(mesh, specs[k][1]))  # noqa: E731
                       for k, v in t.items()}
    params = shard(params)
    state_sh = funcopt.state_shardings(opt, params)
    state = jax.jit(opt.init, out_shardings=state_sh)(params)
    facts = {"helper": describe(state), "expected": describe(state, specs)}
    params_sh = jax.tree.map(lambda x: x.sharding, params)
    step = jax.jit(step_fn(opt), donate_argnums=(0, 1), out_shardings=(params_sh, state_sh))
    compiled = step.lower(params, state, shard(grads[0])).compile()
    hlo = compiled.as_text()
    facts["collectives"] = {c: hlo.count(f" {c}(") + hlo.count(f" {c}-start(")
                            for c in COLLECTIVES}
    for g in grads:
        params, state = compiled(params, state, shard(g))
    facts["after"] = describe(state)
    facts["dtypes"] = sorted({str(x.dtype) for x in jax.tree.leaves(state)})
    return facts, jax.device_get((params, state))


def main():
    assert jax.device_count() == 8, jax.devices()
    results = {}
    for set_name, specs in PARAMS.items():
        for name, make in OPTIMIZERS.items():
            if set_name == "straddling" and name != "adamw_8bit":
                continue
            reference = unsharded(make(), specs)
            for flavour, axis_type in (("explicit", AxisType.Explicit), ("auto", AxisType.Auto)):
                mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
                with jax.set_mesh(mesh):
                    facts, result = sharded(make(), mesh, specs)
                facts["max_abs_diff"], facts["bitwise_equal"] = compare(result, reference)
                results[f"{set_name}/{flavour}/{name}"] = facts
    json.dump(results, sys.stdout)
    print()


if __name__ == "__main__":
    main()
