"""The demo's hyperparameters, shared verbatim by the JAX and the torch run."""

from __future__ import annotations

import dataclasses

SCHEDULES = ("linear", "cosine")

# Parameters that get no weight decay, matched in their names as in Hugging Face scripts.
NO_DECAY = ("bias", "LayerNorm")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run; both frameworks read the same instance.

    Attributes:
      steps: number of optimizer updates.
      batch_size: examples per minibatch.
      hidden: width of the hidden layer.
      learning_rate: peak learning rate, reached at the end of warmup.
      warmup_fraction: fraction of ``steps`` spent warming up linearly from 0.
      weight_decay: AdamW's decoupled weight decay (not applied to biases and LayerNorm).
      schedule: ``"linear"`` or ``"cosine"`` decay after warmup (HF's
        ``get_linear_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup``).
      seed: seeds the initial weights, the train/test split and the minibatch order.
      betas, eps: AdamW's moment decay rates and epsilon (HF AdamW's defaults for eps).
    """

    steps: int = 600
    batch_size: int = 64
    hidden: int = 128
    learning_rate: float = 3e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    schedule: str = "linear"
    seed: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {self.warmup_fraction}.")

    @property
    def warmup_steps(self) -> int:
        """Number of warmup steps: ``round(warmup_fraction * steps)``."""
        return round(self.warmup_fraction * self.steps)
