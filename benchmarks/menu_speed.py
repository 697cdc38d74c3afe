"""Update-step speed of the Trainer menu's bitsandbytes and schedule-free optimizers vs optax's.

``python -m benchmarks.menu_speed [--params 10_000_000] [--rounds 60] [--noise]``: the
bitsandbytes pairs (:func:`main`), then the schedule-free pairs (:func:`schedule_free`).

Each optimizer runs ``update`` + ``optax.apply_updates`` as one ``jit`` with the parameters and
the state donated, on its own copy of a float32 pytree (~10M parameters in a few leaves, plus
a bias-like small one) with fixed gradients. Rounds step every optimizer once in a shuffled
order so that both sides of a pair see the same machine load; the ratio printed is the median
of the per-round ratios funcopt / optax (below 1: funcopt is faster), with the ratio of the
minima beside it. Every :data:`BLOCK` rounds, each runner moves its arrays to fresh buffers
(a placement's luck otherwise sticks to one side for the whole run). ``--noise`` adds a pair
of two identical optax runners (the spread of a ratio that should be 1). The pairs compute
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

#: Rounds between two reallocations of every runner's buffers (:meth:`Runner.reallocate`).
BLOCK = 5


def _optax_ademamix_warmups() -> optax.GradientTransformation:
    """optax's AdEMAMix with alpha and b3 warmed up over 1000 steps (the warmups' pairs)."""
    return optax.contrib.ademamix(1e-3, weight_decay=0.01,
                                  alpha=optax.linear_schedule(0.0, 5.0, 1000),
                                  b3=optax.linear_schedule(0.9, 0.9999, 1000))


PAIRS = {
    # name: (funcopt, optax), same hyperparameters
    "lion": (lambda: funcopt.lion(1e-4, weight_decay=0.01),
             lambda: optax.lion(1e-4, weight_decay=0.01)),
    "ademamix": (lambda: funcopt.ademamix(1e-3, weight_decay=0.01),
                 lambda: optax.contrib.ademamix(1e-3, weight_decay=0.01)),
    "ademamix (warmups)": (lambda: funcopt.ademamix(1e-3, t_alpha=1000, t_beta3=1000),
                           _optax_ademamix_warmups),
    "fused_ademamix": (lambda: funcopt.fused_ademamix(1e-3, weight_decay=0.01),
                       lambda: optax.contrib.ademamix(1e-3, weight_decay=0.01)),
    "fused_ademamix (warmups)": (
        lambda: funcopt.fused_ademamix(1e-3, t_alpha=1000, t_beta3=1000),
        _optax_ademamix_warmups),
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
    """A donated, compiled step of one transformation (or a ``funcopt.FusedOptimizer``'s
    ``step``) on its own params and state."""

    def __init__(self, tx, params_np, grads):
        def step(params, state, grads):
            if isinstance(tx, funcopt.FusedOptimizer):
                return tx.step(grads, state, params)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        self.params = jax.tree.map(jnp.array, params_np)
        self.state = tx.init(self.params)
        self.grads = grads
        self.step = jax.jit(step, donate_argnums=(0, 1))
        self()  # compile and warm up

    def reallocate(self) -> None:
        """Moves the params and the state to fresh buffers: how the arrays happen to lie in
        memory (their alignment to each other, the host's pages behind them) makes one copy of
        a step persistently faster or slower by up to a third on a virtual machine."""
        self.params, self.state = jax.tree.map(lambda x: jnp.array(x, copy=True),
                                               (self.params, self.state))
        jax.block_until_ready((self.params, self.state))

    def __call__(self) -> float:
        start = time.perf_counter()
        self.params, self.state = self.step(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        return time.perf_counter() - start


def compare(pairs: dict, argv, title: str) -> dict:
    """Times every pair of ``pairs`` (``name: (make_funcopt, make_optax)``) as the module
    says; prints and returns ``{name: (funcopt_ms, optax_ms, ratio, ratio_of_minima)}``
    (medians, the median of the per-round ratios and the ratio of the fastest rounds)."""
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--noise", action="store_true",
                        help="also time the first pair's optax side against itself")
    args = parser.parse_args(argv)
    pairs = dict(pairs)
    if args.noise:
        first = next(iter(pairs.values()))[1]
        pairs["optax vs optax (noise)"] = (first, first)
    params = make_tree(args.params)
    grads = jax.tree.map(jnp.asarray, make_tree(args.params, seed=1))
    runners = {(name, side): Runner(make(), params, grads)
               for name, pair in pairs.items()
               for side, make in zip(("funcopt", "optax"), pair, strict=True)}
    times = {key: [] for key in runners}
    order = list(runners)
    for i in range(args.rounds):
        if i % BLOCK == 0 and i:
            for runner in runners.values():
                runner.reallocate()
        random.shuffle(order)
        for key in order:
            times[key].append(runners[key]())
    n = sum(x.size for x in params.values())
    print(f"{title}: update + apply_updates under jit, donated, {n / 1e6:.1f}M float32 "
          f"parameters, {args.rounds} rounds, {jax.devices()[0].platform}")
    results = {}
    width = max(len(name) for name in pairs)
    for name in pairs:
        ours, theirs = np.array(times[name, "funcopt"]), np.array(times[name, "optax"])
        ratio, of_minima = float(np.median(ours / theirs)), float(ours.min() / theirs.min())
        results[name] = (1e3 * np.median(ours), 1e3 * np.median(theirs), ratio, of_minima)
        print(f"  {name:{width}s} funcopt {results[name][0]:7.2f} ms   optax "
              f"{results[name][1]:7.2f} ms   ratio {ratio:.2f} (of minima {of_minima:.2f})")
    return results


#: optax's counterpart where it is not ``optax.contrib.<name>`` (fused_ prefix removed).
PEERS = {"lion": "optax.lion", "rmsprop_bnb": "optax.rmsprop"}


def goal_rows(results: dict) -> list[dict]:
    """``results`` of :func:`compare` as rows of ``python -m benchmarks``' goal table: each
    funcopt step no slower than optax's (goal 1; met when both the median of the per-round
    ratios and the ratio of the minima are within it). The noise pair is left out."""
    rows = []
    for name, (_, _, median, of_minima) in results.items():
        if "noise" in name:
            continue
        base, config = name.split(" (")[0], name[len(name.split(" (")[0]):]
        plain = base.removeprefix("fused_")
        ok = (median <= 1, of_minima <= 1)
        rows.append({"ours": f"funcopt.{name}",
                     "peer": PEERS.get(plain, f"optax.contrib.{plain}") + config,
                     "median": median, "of_minima": of_minima, "goal": 1,
                     "met": "yes" if all(ok) else ("no" if not any(ok) else "unclear")})
    return rows


def main(argv=None) -> dict:
    """The bitsandbytes pairs (:data:`PAIRS`): prints and returns ``{name: (funcopt_ms,
    optax_ms, ratio)}``."""
    return compare(PAIRS, argv, "Trainer menu (bitsandbytes) against optax")


SCHEDULE_FREE_PAIRS = {
    # name: (funcopt, optax.contrib), same hyperparameters (schedulefree's defaults otherwise)
    "schedule_free_adamw": (lambda: funcopt.schedule_free_adamw(2.5e-3),
                            lambda: optax.contrib.schedule_free_adamw(2.5e-3)),
    "fused_schedule_free_adamw": (lambda: funcopt.fused_schedule_free_adamw(2.5e-3),
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
    return compare(SCHEDULE_FREE_PAIRS, argv, "schedule-free against optax.contrib")


def _inexact(tx, contract: bool) -> optax.GradientTransformation:
    """``tx`` (a ``funcopt.ademamix``) with its true divisions by the bias corrections traced
    as XLA makes optax's, multiplications by the reciprocal (an ulp off bitsandbytes now and
    then), and if ``contract`` its products left for XLA to contract into fused multiply-adds
    (``_numerics.unfused`` off). Not shipped; for :func:`exactness_cost`."""
    from unittest import mock

    from funcopt import _ademamix

    patches = {"divide": lambda x, d: x * (1 / d)} | (
        {"unfused": lambda x: x} if contract else {})

    def update(grads, state, params=None):
        with mock.patch.multiple(_ademamix, **patches):
            return tx.update(grads, state, params)

    return optax.GradientTransformation(tx.init, update)


def exactness_cost(argv=None) -> dict:
    """What exactness costs ``funcopt.ademamix``'s XLA step: as shipped against optax's, then
    with its divisions by a per-step scalar made multiplications by the reciprocal, then also
    with XLA free to contract its products (``python -c "from benchmarks.menu_speed import
    exactness_cost; exactness_cost()"``)."""
    pairs = {}
    for name in ("ademamix", "ademamix (warmups)"):
        ours, theirs = PAIRS[name]
        pairs[name] = (ours, theirs)
        for label, contract in ((", reciprocal", False), (", reciprocal, contracted", True)):
            pairs[name + label] = (lambda ours=ours, contract=contract: _inexact(ours(), contract),
                                   theirs)
    return compare(pairs, argv, "ademamix's exactness")


if __name__ == "__main__":
    main()
    schedule_free()
