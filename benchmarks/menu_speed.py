"""Update-step speed of the Trainer menu's bitsandbytes optimizers against optax's equivalents.

``python -m benchmarks.menu_speed [--params 10_000_000] [--rounds 30]``

Each optimizer runs ``update`` + ``optax.apply_updates`` as one ``jit`` with the parameters and
the state donated, on its own copy of a float32 pytree (~10M parameters in a few leaves, plus
a bias-like small one) with fixed gradients. Rounds step every optimizer once in a shuffled
order so that both sides of a pair see the same machine load; the ratio printed is the median
of the per-round ratios funcopt / optax (below 1: funcopt is faster). The pairs compute
different numbers (decay order, bias-correction placement), the same amount of work.
"""

from __future__ import annotations

import argparse
import random
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcopt

PAIRS = {
    # name: (funcopt, optax), same hyperparameters
    "lion": (lambda: funcopt.lion(1e-4, weight_decay=0.01),
             lambda: optax.lion(1e-4, weight_decay=0.01)),
    "ademamix": (lambda: funcopt.ademamix(1e-3, weight_decay=0.01),
                 lambda: optax.contrib.ademamix(1e-3, weight_decay=0.01)),
    "ademamix (warmups)": (lambda: funcopt.ademamix(1e-3, t_alpha=1000, t_beta3=1000),
                           lambda: optax.contrib.ademamix(
                               1e-3, weight_decay=0.01,
                               alpha=optax.linear_schedule(0.0, 5.0, 1000),
                               b3=optax.linear_schedule(0.9, 0.9999, 1000))),
    "rmsprop_bnb": (lambda: funcopt.rmsprop_bnb(1e-2), lambda: optax.rmsprop(1e-2, 0.99, 1e-8)),
}


def make_tree(n_params: int, seed: int = 0) -> dict:
    """Four equal (rows, 1024) matrices totalling about ``n_params``, and a 1024 vector."""
    rows = max(1, n_params // (4 * 1024))
    rng = np.random.default_rng(seed)
    tree = {f"w{i}": rng.standard_normal((rows, 1024), np.float32) for i in range(4)}
    tree["b"] = rng.standard_normal(1024, np.float32)
    return tree


class Runner:
    """A donated, compiled step of one transformation on its own params and state."""

    def __init__(self, tx, params_np, grads):
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        self.params = jax.tree.map(jnp.array, params_np)
        self.state = tx.init(self.params)
        self.grads = grads
        self.step = jax.jit(step, donate_argnums=(0, 1))
        self()  # compile and warm up

    def __call__(self) -> float:
        start = time.perf_counter()
        self.params, self.state = self.step(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        return time.perf_counter() - start


def main(argv=None) -> dict:
    """Prints and returns ``{name: (funcopt_ms, optax_ms, ratio)}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    params = make_tree(args.params)
    grads = jax.tree.map(jnp.asarray, make_tree(args.params, seed=1))
    n = sum(x.size for x in params.values())
    runners = {(name, side): Runner(make(), params, grads)
               for name, pair in PAIRS.items() for side, make in zip(("funcopt", "optax"), pair,
                                                                       strict=True)}
    times = {key: [] for key in runners}
    order = list(runners)
    for _ in range(args.rounds):
        random.shuffle(order)
        for key in order:
            times[key].append(runners[key]())
    print(f"update + apply_updates under jit, donated, {n / 1e6:.1f}M float32 parameters, "
          f"{args.rounds} rounds, {jax.devices()[0].platform}")
    results = {}
    for name in PAIRS:
        ours, theirs = np.array(times[name, "funcopt"]), np.array(times[name, "optax"])
        ratio = float(np.median(ours / theirs))
        results[name] = (1e3 * np.median(ours), 1e3 * np.median(theirs), ratio)
        print(f"  {name:20s} funcopt {results[name][0]:7.2f} ms   optax {results[name][1]:7.2f} "
              f"ms   ratio {ratio:.2f}")
    return results


if __name__ == "__main__":
    main()


SCHEDULE_FREE_PAIRS = {
    # name: (funcopt, optax.contrib), same hyperparameters (schedulefree's defaults otherwise)
    "schedule_free_adamw": (lambda: funcopt.schedule_free_adamw(2.5e-3),
                            lambda: optax.contrib.schedule_free_adamw(2.5e-3)),
    "schedule_free_adamw (warmup, decay)": (
        lambda: funcopt.schedule_free_adamw(2.5e-3, warmup_steps=1000, weight_decay=0.01),
        lambda: optax.contrib.schedule_free_adamw(2.5e-3, warmup_steps=1000, weight_decay=0.01)),
    "schedule_free_sgd": (lambda: funcopt.schedule_free_sgd(1.0, warmup_steps=1000),
                          lambda: optax.contrib.schedule_free_sgd(1.0, warmup_steps=1000)),
}


def schedule_free(argv=None) -> dict:
    """funcopt's schedule-free AdamW/SGD against ``optax.contrib``'s, as :func:`main` measures
    (``python -c "from benchmarks.menu_speed import schedule_free; schedule_free()"``)."""
    parser = argparse.ArgumentParser(description="schedule-free update-step speed")
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    params = make_tree(args.params)
    grads = jax.tree.map(jnp.asarray, make_tree(args.params, seed=1))
    runners = {(name, side): Runner(make(), params, grads)
               for name, pair in SCHEDULE_FREE_PAIRS.items()
               for side, make in zip(("funcopt", "optax"), pair, strict=True)}
    times = {key: [] for key in runners}
    order = list(runners)
    for _ in range(args.rounds):
        random.shuffle(order)
        for key in order:
            times[key].append(runners[key]())
    n = sum(x.size for x in params.values())
    print(f"schedule-free update + apply_updates under jit, donated, {n / 1e6:.1f}M float32 "
          f"parameters, {args.rounds} rounds, {jax.devices()[0].platform}")
    results = {}
    for name in SCHEDULE_FREE_PAIRS:
        ours, theirs = np.array(times[name, "funcopt"]), np.array(times[name, "optax"])
        ratio = float(np.median(ours / theirs))
        results[name] = (1e3 * np.median(ours), 1e3 * np.median(theirs), ratio)
        print(f"  {name:36s} funcopt {results[name][0]:7.2f} ms   optax "
              f"{results[name][1]:7.2f} ms   ratio {ratio:.2f}")
    return results
