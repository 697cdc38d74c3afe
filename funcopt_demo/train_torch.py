"""The torch half: the same MLP as an ``nn.Module``, trained with ``transformers.AdamW`` (or
``funcopt.torch.AdamW``) and HF's ``LambdaLR`` schedule.

Importing this module needs torch (and training needs transformers);
:func:`funcopt_demo.cli.missing_torch_packages` says which are absent, importing nothing.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from funcopt_demo.config import NO_DECAY, Config
from funcopt_demo.data import Dataset
from funcopt_demo.results import RunResult

OPTIMIZERS = ("transformers", "funcopt")


class MLP(nn.Module):
    """``Linear -> LayerNorm -> GELU -> Linear``, the module version of ``train_jax.forward``."""

    def __init__(self, num_features: int, hidden: int, num_classes: int):
        super().__init__()
        self.dense = nn.Linear(num_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden)  # HF's attribute name, eps=1e-5
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.classifier(F.gelu(self.LayerNorm(self.dense(x))))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """HF's two groups: decay everything except names containing "bias" or "LayerNorm"."""
    named = list(model.named_parameters())
    no_decay = lambda name: any(word in name for word in NO_DECAY)
    return [
        {"params": [p for n, p in named if not no_decay(n)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0},
    ]


def optimizer_for(config: Config, groups: list[dict], which: str) -> torch.optim.Optimizer:
    """``transformers.AdamW`` (the reference) or its drop-in ``funcopt.torch.AdamW``."""
    kwargs = dict(lr=config.learning_rate, betas=config.betas, eps=config.eps)
    if which == "transformers":
        from transformers import AdamW

        return AdamW(groups, no_deprecation_warning=True, **kwargs)
    if which == "funcopt":
        import funcopt.torch

        return funcopt.torch.AdamW(groups, **kwargs)
    raise ValueError(f"torch optimizer must be one of {OPTIMIZERS}, got {which!r}.")


def scheduler_for(config: Config, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """HF's ``LambdaLR`` schedule named by ``config.schedule``."""
    import transformers

    make = {
        "linear": transformers.get_linear_schedule_with_warmup,
        "cosine": transformers.get_cosine_schedule_with_warmup,
    }[config.schedule]
    return make(optimizer, config.warmup_steps, config.steps)


def train(config: Config, data: Dataset, init: dict, batches: np.ndarray,
          progress: bool = True, which: str = "transformers") -> RunResult:
    """Trains from the NumPy weights ``init`` on the minibatches ``batches`` (indices).

    Runs torch on one thread: for a model this small, that is several times faster than
    torch's default thread pool (and much faster on a busy machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(config, data, init, batches, progress, which)
    finally:
        torch.set_num_threads(threads)


def _train(config, data, init, batches, progress, which):
    model = MLP(data.num_features, config.hidden, data.num_classes)
    state = {
        f"{module}.{name}": torch.from_numpy(value.copy())
        for module, tensors in init.items()
        for name, value in tensors.items()
    }
    model.load_state_dict(state)
    optimizer = optimizer_for(config, param_groups(model, config.weight_decay), which)
    scheduler = scheduler_for(config, optimizer)

    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    losses = np.empty(config.steps, np.float32)
    learning_rates = np.empty(config.steps, np.float32)
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc=f"torch {which}.AdamW", disable=not progress,
               leave=False)
    for i in bar:
        idx = torch.from_numpy(batches[i])
        learning_rates[i] = scheduler.get_last_lr()[0]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses[i] = loss.item()
        if progress and i % 50 == 0:
            bar.set_postfix(loss=f"{losses[i]:.4f}")
    seconds = time.perf_counter() - start
    bar.close()

    with torch.no_grad():
        predictions = model(torch.from_numpy(data.x_test)).argmax(dim=-1).numpy()
    accuracy = float((predictions == data.y_test).mean())
    final = {n.replace(".", "/"): p.detach().numpy().copy() for n, p in model.named_parameters()}
    return RunResult(f"torch + {which}.AdamW", losses, learning_rates, accuracy, seconds, final)
