"""The JAX half: a hand-written MLP in ``jax.numpy`` trained with ``funcopt.adamw``."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import funcopt
from funcopt_demo.config import NO_DECAY, Config
from funcopt_demo.data import Dataset
from funcopt_demo.results import RunResult

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default


def forward(params, x):
    """Logits of ``Linear -> LayerNorm -> GELU -> Linear``, with torch's ``(out, in)`` weights.

    Broadcasts are spelled out (``[None]``) so the model also runs under
    ``jax_numpy_rank_promotion="raise"``.
    """
    dense, norm, head = params["dense"], params["LayerNorm"], params["classifier"]
    h = x @ dense["weight"].T + dense["bias"][None]
    mean = h.mean(axis=-1, keepdims=True)
    var = jnp.square(h - mean).mean(axis=-1, keepdims=True)
    h = (h - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS)
    h = h * norm["weight"][None] + norm["bias"][None]
    h = jax.nn.gelu(h, approximate=False)
    return h @ head["weight"].T + head["bias"][None]


def cross_entropy(params, x, y):
    """Mean cross-entropy of the logits against integer labels (``F.cross_entropy``)."""
    log_probs = jax.nn.log_softmax(forward(params, x))
    return -jnp.take_along_axis(log_probs, y[:, None], axis=-1).mean()


def schedule_for(config: Config):
    """funcopt's version of the HF schedule named by ``config.schedule``."""
    make = {
        "linear": funcopt.get_linear_schedule_with_warmup,
        "cosine": funcopt.get_cosine_schedule_with_warmup,
    }[config.schedule]
    return make(config.learning_rate, config.warmup_steps, config.steps)


def optimizer_for(config: Config, schedule) -> optax.GradientTransformation:
    """``funcopt.adamw`` with decay on every parameter whose name has no "bias"/"LayerNorm"."""
    return funcopt.adamw(
        learning_rate=schedule,
        b1=config.betas[0],
        b2=config.betas[1],
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=lambda params: funcopt.name_mask(params, exclude=list(NO_DECAY)),
    )


def train(config: Config, data: Dataset, init: dict, batches: np.ndarray,
          progress: bool = True) -> RunResult:
    """Trains from the NumPy weights ``init`` on the minibatches ``batches`` (indices)."""
    schedule = schedule_for(config)
    optimizer = optimizer_for(config, schedule)

    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train.astype(np.int32))

    @jax.jit
    def step(params, opt_state, idx):
        x, y = x_train[idx], y_train[idx]  # gathering inside jit: one dispatch per step
        loss, grads = jax.value_and_grad(cross_entropy)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = jax.tree.map(jnp.asarray, init)
    opt_state = optimizer.init(params)
    losses = []
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="JAX   funcopt.adamw", disable=not progress,
               leave=False)
    for i in bar:
        params, opt_state, loss = step(params, opt_state, batches[i])
        losses.append(loss)
        if progress and i % 50 == 0:
            bar.set_postfix(loss=f"{float(loss):.4f}")
    losses = np.asarray(jax.device_get(losses), np.float32)
    seconds = time.perf_counter() - start
    bar.close()

    predictions = jnp.argmax(forward(params, jnp.asarray(data.x_test)), axis=-1)
    accuracy = float((np.asarray(predictions) == data.y_test).mean())
    learning_rates = np.asarray(schedule(jnp.arange(config.steps)), np.float32)
    names = funcopt.param_names(params)
    final = {n: np.asarray(p) for n, p in zip(jax.tree.leaves(names), jax.tree.leaves(params),
                                               strict=True)}
    return RunResult("JAX + funcopt.adamw", losses, learning_rates, accuracy, seconds, final)
