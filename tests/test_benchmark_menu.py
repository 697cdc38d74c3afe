"""benchmarks/menu_speed.py: its comparison runs end to end (tiny sizes) and its goal rows,
which ``python -m benchmarks`` (``make bench``) puts in the goal table, name the right peers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcopt
from benchmarks import menu_speed


def test_compare_runs_and_feeds_goal_rows(capsys):
    pairs = {"lion": menu_speed.PAIRS["lion"],
             "fused_ademamix (warmups)": menu_speed.PAIRS["fused_ademamix (warmups)"]}
    results = menu_speed.compare(pairs, ["--params", "8192", "--rounds", "6", "--noise"],
                                 "tiny")
    assert set(results) == {*pairs, "optax vs optax (noise)"}
    assert all(len(r) == 4 and min(r) > 0 for r in results.values())
    rows = menu_speed.goal_rows(results)
    assert [(r["ours"], r["peer"]) for r in rows] == [
        ("funcopt.lion", "optax.lion"),
        ("funcopt.fused_ademamix (warmups)", "optax.contrib.ademamix (warmups)")]
    assert "ratio" in capsys.readouterr().out


def test_goal_rows_peers_and_verdicts():
    results = {"rmsprop_bnb": (1.0, 1.0, 0.9, 0.95),
               "schedule_free_adamw (warmup, decay)": (1.0, 1.0, 1.1, 0.99),
               "fused_schedule_free_adamw": (1.0, 1.0, 1.2, 1.3),
               "optax vs optax (noise)": (1.0, 1.0, 1.0, 1.0)}
    rows = {r["ours"]: r for r in menu_speed.goal_rows(results)}
    assert list(rows) == ["funcopt.rmsprop_bnb", "funcopt.schedule_free_adamw (warmup, decay)",
                          "funcopt.fused_schedule_free_adamw"]
    assert rows["funcopt.rmsprop_bnb"]["peer"] == "optax.rmsprop"
    assert rows["funcopt.fused_schedule_free_adamw"]["peer"] == (
        "optax.contrib.schedule_free_adamw")
    assert [r["met"] for r in rows.values()] == ["yes", "unclear", "no"]
    assert all(r["goal"] == 1 for r in rows.values())


def test_every_peer_named_exists():
    """Each pair's peer name is a real optax function (the table would mislabel otherwise)."""
    names = {**menu_speed.PAIRS, **menu_speed.SCHEDULE_FREE_PAIRS}
    for row in menu_speed.goal_rows({n: (1.0, 1.0, 1.0, 1.0) for n in names}):
        module, _, fn = row["peer"].split(" (")[0].rpartition(".")
        target = optax.contrib if module == "optax.contrib" else optax
        assert callable(getattr(target, fn)), row
        assert callable(getattr(funcopt, row["ours"].split(" (")[0].removeprefix("funcopt.")))


def test_exactness_ablations_change_the_numbers():
    """exactness_cost's variants really are other arithmetic (else it would time nothing)."""
    params = menu_speed.make_tree(8192)
    grads = jax.tree.map(jnp.asarray, menu_speed.make_tree(8192, seed=1))
    make = menu_speed.PAIRS["ademamix (warmups)"][0]
    finals = []
    for tx in (make(), menu_speed._inexact(make(), False), menu_speed._inexact(make(), True)):
        runner = menu_speed.Runner(tx, params, grads)
        for _ in range(3):
            runner()
        finals.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(runner.params)]))
    assert not np.array_equal(finals[0], finals[1])
    assert not np.array_equal(finals[1], finals[2])
    np.testing.assert_allclose(finals[1], finals[0], rtol=1e-5)
