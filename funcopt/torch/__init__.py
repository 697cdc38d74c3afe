"""PyTorch bridge: funcopt optimizers as ``torch.optim.Optimizer`` s, and state conversion.

Import it explicitly (``import funcopt.torch``); ``import funcopt`` does not need torch.

* :class:`Optimizer` runs ``funcopt.adamw`` / ``funcopt.adafactor`` (any optimizer with a
  torch layout: ``funcopt/torch/_registry.py``) jitted on torch parameters; :class:`AdamW`
  and :class:`Adafactor` are drop-in replacements for
  ``transformers.AdamW`` and ``transformers.Adafactor`` (same signatures, numbers and state
  dicts).
* :func:`state_from_torch` / :func:`state_to_torch` move optimizer state between a torch
  optimizer (``transformers.AdamW``, ``transformers.Adafactor``, ``torch.optim.AdamW`` and the
  classes here) and the matching JAX transformation, so a run continues in the other
  framework with the same numbers.
"""

from funcopt.torch._convert import state_from_torch as state_from_torch
from funcopt.torch._convert import state_to_torch as state_to_torch
from funcopt.torch._dropins import Adafactor as Adafactor
from funcopt.torch._dropins import AdamW as AdamW
from funcopt.torch._optimizer import Optimizer as Optimizer

__all__ = ["Adafactor", "AdamW", "Optimizer", "state_from_torch", "state_to_torch"]
