"""PyTorch bridge: funcopt optimizers as ``torch.optim.Optimizer`` s, and state conversion.

Import it explicitly (``import funcopt.torch``); ``import funcopt`` does not need torch.

* :class:`Optimizer` runs any funcopt optimizer with a torch layout (``funcopt.adamw``,
  ``funcopt.adafactor`` and the Trainer's menu: ``funcopt/torch/_registry.py`` and the
  ``_menu_*`` modules) jitted on torch parameters. Drop-in replacements (same signatures,
  numbers and state dicts): :class:`AdamW` and :class:`Adafactor` for ``transformers.AdamW``
  and ``transformers.Adafactor``; :class:`AdamWScheduleFree`, :class:`SGDScheduleFree` and
  :class:`RAdamScheduleFree` for schedulefree's classes, with their ``train()``/``eval()``.
* :func:`state_from_torch` / :func:`state_to_torch` move optimizer state between a torch
  optimizer (``transformers.AdamW``/``Adafactor``, torch.optim's ``AdamW``, ``Adam``,
  ``SGD``, ``Adagrad``, ``RMSprop``, bitsandbytes', schedulefree's, ``grokadamw``'s,
  optimi's ``StableAdamW``, galore-torch's classes, and the classes here) and the matching
  JAX transformation, so a run continues in the other framework with the same numbers.
* :func:`torch_svd`: torch's SVD as a JAX function, for GaLore's projections exactly as
  galore-torch computes them (``funcopt.galore_adamw(..., svd=funcopt.torch.torch_svd)``).
"""

# The Trainer's menu: each module registers its optimizers' reference classes on import.
from funcopt.torch import _menu_bnb as _menu_bnb
from funcopt.torch import _menu_packages as _menu_packages
from funcopt.torch import _menu_schedulefree as _menu_schedulefree
from funcopt.torch import _menu_torch_optim as _menu_torch_optim
from funcopt.torch._convert import state_from_torch as state_from_torch
from funcopt.torch._convert import state_to_torch as state_to_torch
from funcopt.torch._dropins import Adafactor as Adafactor
from funcopt.torch._dropins import AdamW as AdamW
from funcopt.torch._optimizer import Optimizer as Optimizer
from funcopt.torch._schedule_free import AdamWScheduleFree as AdamWScheduleFree
from funcopt.torch._schedule_free import RAdamScheduleFree as RAdamScheduleFree
from funcopt.torch._schedule_free import SGDScheduleFree as SGDScheduleFree
from funcopt.torch._svd import torch_svd as torch_svd

__all__ = ["Adafactor", "AdamW", "AdamWScheduleFree", "Optimizer", "RAdamScheduleFree",
           "SGDScheduleFree", "state_from_torch", "state_to_torch", "torch_svd"]
