"""What a training run hands back to the report."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class RunResult(NamedTuple):
    """One framework's run.

    Attributes:
      name: label for tables and plots, e.g. ``"JAX + funcopt.adamw"``.
      losses: ``(steps,)`` float32 training loss of each minibatch, before its update.
      learning_rates: ``(steps,)`` the learning rate each update used.
      test_accuracy: accuracy on the held-out split after training.
      seconds: wall time of the training loop (compilation included for JAX).
      params: the trained parameters, ``{"dense/weight": array, ...}`` (names joined by "/").
    """

    name: str
    losses: np.ndarray
    learning_rates: np.ndarray
    test_accuracy: float
    seconds: float
    params: dict[str, np.ndarray]
