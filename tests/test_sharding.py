"""funcopt's optimizers with parameters sharded over a ("data", "model") mesh of 8 CPU devices.

The checks run in a subprocess (``_sharding_check.py``): simulated devices need
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts, and other modules
of this pytest worker have started JAX already. The script reports facts as JSON; the tests
assert on them: the state is sharded like the parameters (Adafactor's factors along the
matching mesh axes), the compiled update gathers nothing, and the numbers equal the
single-device ones.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).with_name("_sharding_check.py")
OPTIMIZERS = ["adamw", "adafactor", "adafactor_beta1_wd", "adam_weight_decay"]
CASES = [f"{flavour}/{name}" for flavour in ("explicit", "auto") for name in OPTIMIZERS]
ELEMENTWISE = ("adamw", "adam_weight_decay")  # no cross-element math: bitwise, no collective


@pytest.fixture(scope="module")
def facts():
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUMPY_RANK_PROMOTION="raise")
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         env=env, cwd=SCRIPT.parent.parent, timeout=600)
    assert run.returncode == 0, f"{SCRIPT.name} failed:\n{run.stderr[-4000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


def _mismatches(actual, expected):
    return {path: (spec, expected[path]) for path, spec in actual.items()
            if spec != expected[path]}


@pytest.mark.parametrize("case", CASES)
def test_state_is_sharded_like_the_params(facts, case):
    f = facts[case]
    # jit(opt.init, out_shardings=state_shardings(opt, params)): moments like the params;
    # Adafactor's row factor (m,) of a P("data", "model") parameter on "data", column (n,)
    # on "model".
    assert _mismatches(f["helper"], f["expected"]) == {}
    # ... and every donated step keeps them (one executable ran all three steps).
    assert _mismatches(f["after"], f["expected"]) == {}
    assert _mismatches(f["params_after"], f["params_expected"]) == {}


@pytest.mark.parametrize("case", CASES)
def test_update_gathers_nothing(facts, case):
    collectives = facts[case]["collectives"]
    for op in ("all-gather", "all-to-all", "collective-permute", "reduce-scatter"):
        assert collectives[op] == 0, (op, collectives)
    if case.endswith(ELEMENTWISE):
        assert collectives["all-reduce"] == 0, collectives
    else:
        # Adafactor's row/column means, RMS(param) and RMS(update) are legitimate reductions.
        assert collectives["all-reduce"] > 0, collectives


@pytest.mark.parametrize("case", CASES)
def test_numbers_equal_the_unsharded_ones(facts, case):
    f = facts[case]
    if case.endswith(ELEMENTWISE):
        assert f["bitwise_equal"], f["max_abs_diff"]
    else:
        # Sharded reductions add their partial sums in another order: round-off only.
        assert f["max_abs_diff"] <= 1e-6, f["max_abs_diff"]


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_jitted_init_alone_shards_adam_moments_on_an_explicit_mesh(facts, name):
    # With explicit mesh axes (jax.make_mesh's default), zeros_like keeps the sharding.
    f = facts[f"explicit/{name}"]
    assert _mismatches(f["init"], f["expected"]) == {}


@pytest.mark.parametrize("name", ["adafactor", "adafactor_beta1_wd"])
def test_jitted_init_alone_shards_adafactor_on_an_explicit_mesh(facts, name):
    f = facts[f"explicit/{name}"]
    assert _mismatches(f["init"], f["expected"]) == {}
