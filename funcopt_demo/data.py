"""The dataset, the initial weights and the minibatch order, all in NumPy float32 so that both
frameworks receive bit-identical inputs."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from funcopt_demo.config import Config


class Dataset(NamedTuple):
    """Train and test split of scikit-learn's 8x8 digits (pixels scaled to [0, 1])."""

    x_train: np.ndarray  # (n_train, 64) float32
    y_train: np.ndarray  # (n_train,) int64
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def load_digits(seed: int, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled ``load_digits`` (1797 images, 10 classes), shuffled and split."""
    from sklearn.datasets import load_digits as sklearn_load_digits

    digits = sklearn_load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = round(test_fraction * len(x))
    test, train = order[:n_test], order[n_test:]
    return Dataset(x[train], y[train], x[test], y[test])


def init_params(config: Config, num_features: int, num_classes: int) -> dict:
    """Initial weights as nested dicts of float32 NumPy arrays, with Hugging Face names.

    ``dense`` (features -> hidden), ``LayerNorm``, ``classifier`` (hidden -> classes). Linear
    weights have torch's ``(out, in)`` layout and torch's default uniform initialization;
    LayerNorm starts at weight 1, bias 0.
    """
    rng = np.random.default_rng(config.seed + 1)

    def linear(n_in, n_out):
        bound = 1.0 / np.sqrt(n_in)
        return {
            "weight": rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32),
            "bias": rng.uniform(-bound, bound, (n_out,)).astype(np.float32),
        }

    return {
        "dense": linear(num_features, config.hidden),
        "LayerNorm": {
            "weight": np.ones(config.hidden, np.float32),
            "bias": np.zeros(config.hidden, np.float32),
        },
        "classifier": linear(config.hidden, num_classes),
    }


def batch_indices(config: Config, num_examples: int) -> np.ndarray:
    """The ``(steps, batch_size)`` example indices of every minibatch, epoch after epoch, each
    epoch a fresh permutation (an incomplete last batch of an epoch is dropped)."""
    rng = np.random.default_rng(config.seed + 2)
    per_epoch = num_examples // config.batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {num_examples} examples.")
    epochs = -(-config.steps // per_epoch)
    batches = [
        rng.permutation(num_examples)[: per_epoch * config.batch_size].reshape(per_epoch, -1)
        for _ in range(epochs)
    ]
    return np.concatenate(batches)[: config.steps]
