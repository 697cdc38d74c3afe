"""Drop-in replacements for ``transformers.AdamW`` and ``transformers.Adafactor``."""

from __future__ import annotations

import torch

import funcopt
from funcopt.torch import _registry
from funcopt.torch._optimizer import Optimizer

__all__ = ["AdamW", "Adafactor"]


class AdamW(Optimizer):
    r"""``transformers.AdamW`` (removed from transformers in 4.50), run by ``funcopt.adamw``.

    Same signature, param group keys (``lr, betas, eps, weight_decay, correct_bias``), state
    (``step`` a Python int, ``exp_avg`` and ``exp_avg_sq`` in the parameter's dtype) and
    numbers as the reference, to float32 round-off. For each parameter at its step :math:`t`:

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1) g,\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
        \quad p \leftarrow p - \eta \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
        \frac{m}{\sqrt v + \epsilon},\quad p \leftarrow p - \eta \lambda p

    (epsilon added to the uncorrected :math:`\sqrt v`, decay applied to the updated weights;
    ``correct_bias=False`` drops the bias correction). Its ``state_dict()`` loads into
    ``transformers.AdamW`` and ``load_state_dict()`` accepts theirs, so a run can switch
    between them. ``no_deprecation_warning`` is accepted and ignored (nothing is deprecated
    here). Unlike the reference, a negative ``weight_decay`` (which it silently ignores) is
    a ValueError. See :class:`funcopt.torch.Optimizer` for stepping, schedulers and state.

    Example:
      >>> import torch, funcopt.torch
      >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
      >>> opt = funcopt.torch.AdamW([w], lr=0.1, weight_decay=0.5)
      >>> w.grad = torch.tensor([0.5, -0.5])
      >>> opt.step()
      >>> w.detach()  # (1 - 0.1 * 1) * (1 - 0.1 * 0.5), (2 + 0.1 * 1) * (1 - 0.1 * 0.5)
      tensor([0.8550, 1.9950])
      >>> sorted(opt.state_dict()["state"][0])
      ['exp_avg', 'exp_avg_sq', 'step']
    """

    _aliases = {"learning_rate": "lr", "b1": "betas[0]", "b2": "betas[1]"}
    group_config = staticmethod(_registry.hf_adamw_config)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        no_deprecation_warning: bool = False,
    ):
        del no_deprecation_warning
        self._layout = _registry.ADAMW
        self._optimizer_fn = funcopt.adamw
        self._init_caches()
        if not (isinstance(betas, tuple | list) and len(betas) == 2):
            raise ValueError(f"betas={betas!r} is invalid: it must be a pair (beta1, beta2).")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "correct_bias": correct_bias}
        torch.optim.Optimizer.__init__(self, params, defaults)


class Adafactor(Optimizer):
    r"""``transformers.Adafactor``, run by ``funcopt.adafactor``.

    Same signature, param group keys (``lr`` None under ``relative_step``), state (``step`` a
    Python int; ``exp_avg`` with ``beta1``; ``exp_avg_sq_row``/``exp_avg_sq_col`` for
    ndim >= 2, else ``exp_avg_sq``; ``RMS`` a 0-d tensor; float32 for bf16/fp16 parameters)
    and numbers as the reference, to float32 round-off: factored second moments over the
    last two axes, relative step :math:`\min(10^{-2}, 1/\sqrt t)` (or
    :math:`\min(10^{-6} t, 1/\sqrt t)` with ``warmup_init``) scaled by
    :math:`\max(\epsilon_2, \mathrm{RMS}(p))` with ``scale_parameter``, update clipping at
    ``clip_threshold`` and decay :math:`p \leftarrow p - \lambda\alpha p` (see
    ``funcopt.adafactor``). With ``relative_step=False`` the group's ``lr`` is the step size
    and may be driven by an LR scheduler. The state dict loads into ``transformers.Adafactor``
    and back; loading keeps float32 state for bf16 parameters (torch's own loader rounds it
    to bf16). See :class:`funcopt.torch.Optimizer` for stepping and state.

    Example:
      >>> import torch, funcopt.torch
      >>> w = torch.nn.Parameter(torch.ones(2, 3))
      >>> opt = funcopt.torch.Adafactor([w])
      >>> w.grad = torch.full((2, 3), 0.5)
      >>> opt.step()
      >>> w.detach()
      tensor([[0.9900, 0.9900, 0.9900],
              [0.9900, 0.9900, 0.9900]])
      >>> {k: tuple(v.shape) for k, v in opt.state[w].items() if k != "step"}
      {'exp_avg_sq_row': (2,), 'exp_avg_sq_col': (3,), 'RMS': ()}
    """

    _aliases = {"learning_rate": "lr"}
    group_config = staticmethod(_registry.hf_adafactor_config)

    def __init__(
        self,
        params,
        lr=None,
        eps=(1e-30, 1e-3),
        clip_threshold=1.0,
        decay_rate=-0.8,
        beta1=None,
        weight_decay=0.0,
        scale_parameter=True,
        relative_step=True,
        warmup_init=False,
    ):
        self._layout = _registry.ADAFACTOR
        self._optimizer_fn = funcopt.adafactor
        self._init_caches()
        defaults = {"lr": lr, "eps": eps, "clip_threshold": clip_threshold,
                    "decay_rate": decay_rate, "beta1": beta1, "weight_decay": weight_decay,
                    "scale_parameter": scale_parameter, "relative_step": relative_step,
                    "warmup_init": warmup_init}
        torch.optim.Optimizer.__init__(self, params, defaults)
