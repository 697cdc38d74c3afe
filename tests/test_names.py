"""param_names / name_mask: the names AdamWeightDecay's include/exclude regexes see."""

import jax.numpy as jnp
import optax
import pytest

import funcopt


def test_param_names_join_key_paths():
    params = {"encoder": {"LayerNorm": {"bias": jnp.zeros(2)}}, "layers": [jnp.ones(1)],
              "head": (jnp.ones(1), jnp.ones(1))}
    assert funcopt.param_names(params) == {
        "encoder": {"LayerNorm": {"bias": "encoder/LayerNorm/bias"}},
        "head": ("head/0", "head/1"), "layers": ["layers/0"]}


def test_param_names_of_namedtuple_state_like_objects():
    state = optax.ScaleByAdamState(count=jnp.zeros([]), mu={"w": jnp.ones(1)},
                                   nu={"w": jnp.ones(1)})
    assert funcopt.param_names(state).mu == {"w": "mu/w"}


def test_golden_weight_decay_decisions(golden_tf):
    """AdamWeightDecay._do_use_weight_decay with create_optimizer's exclusions."""
    decisions = golden_tf["do_use_wd"]
    params = {name: jnp.zeros(1) for name in decisions}
    mask = funcopt.name_mask(params, exclude=["LayerNorm", "layer_norm", "bias"])
    # Flat dict keys containing '/' are names themselves.
    assert mask == decisions


def test_include_wins_over_exclude():
    params = {"dense": {"bias": jnp.zeros(1), "kernel": jnp.zeros(1)}, "ln": jnp.zeros(1)}
    mask = funcopt.name_mask(params, include=["dense/bias"], exclude=["bias", "ln"])
    assert mask == {"dense": {"bias": True, "kernel": True}, "ln": False}
    assert funcopt.name_mask(params, include="ln", exclude="ln")["ln"] is True


def test_regex_search_semantics():
    params = {"mybiasx": jnp.zeros(1), "BIAS": jnp.zeros(1), "a": {"b1as": jnp.zeros(1)}}
    mask = funcopt.name_mask(params, exclude=["bias", r"b\das$"])
    assert mask == {"mybiasx": False, "BIAS": True, "a": {"b1as": False}}


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(exclude=["("]), ValueError, r"exclude contains an invalid regex '\('"),
    (dict(include=3), TypeError, "include must be a regex string"),
    (dict(include=[3]), TypeError, "include must contain regex strings"),
])
def test_bad_patterns(kwargs, error, match):
    with pytest.raises(error, match=match):
        funcopt.name_mask({"w": jnp.zeros(1)}, **kwargs)
