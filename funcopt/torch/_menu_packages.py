"""The menu's single-package references in the torch bridge: ``grokadamw.GrokAdamW`` <->
``funcopt.grokadamw``, ``optimi.StableAdamW`` <-> ``funcopt.stable_adamw``, galore-torch's
``GaLoreAdamW``/``GaLoreAdafactor`` <-> ``funcopt.galore_adamw``/``galore_adafactor``.

* GrokAdamW keeps each parameter's state in ``param_groups[i]["state"][p]`` (not in
  ``optimizer.state``), so its own ``state_dict()`` saves it inside the param groups keyed by
  the tensors themselves: :func:`grok_normalize` matches them to parameters by position.
  Its grokking signal becomes ``grokking_signal``: the default signal of the group's
  ``train_loss``/``eval_loss`` (0 without them, as the Trainer runs it);
  ``grokking_signal_fns`` cannot convert (pass their value as ``grokking_signal``).
* optimi keeps the step in the param group (``step``, an int32 tensor, and ``setup``) and
  ``kahan_comp=None`` for a parameter without Kahan summation.
* galore-torch keeps a ``GaLoreProjector`` object per target parameter (``projector``): its
  ``ortho_matrix`` is the funcopt state's ``ortho_left``/``ortho_right``. A param group with
  ``rank`` is a GaLore group (all its parameters targets), as in galore-torch; the
  ``Optimizer`` takes the rule's own targets (every 2-D parameter, its ``mask`` default)
  and re-projects with torch's SVD (:func:`funcopt.torch.torch_svd`), as galore-torch.
"""

from __future__ import annotations

import torch

import funcopt
from funcopt import _galore
from funcopt.torch._layouts import GroupKey, Layout, Reference
from funcopt.torch._registry import adafactor_lr, hf_adafactor_reference_config, register
from funcopt.torch._svd import torch_svd

__all__ = ["GROKADAMW", "STABLE_ADAMW", "GALORE_ADAMW", "GALORE_ADAFACTOR"]


# -- grokadamw.GrokAdamW <-> funcopt.grokadamw -------------------------------------------------

def grok_signal(group) -> float:
    """The reference's default grokking signal of a param group."""
    if group.get("grokking_signal_fns") is not None:
        raise ValueError(
            "grokking_signal_fns (callables) do not convert: pass their current value as "
            "funcopt.grokadamw(grokking_signal=...).")
    train, val = group.get("train_loss"), group.get("eval_loss")
    if train is None or val is None:
        return 0.0
    worst = max(val, train)
    return max(0, val - train) / worst if worst > 0 else 0.0


def grok_config(group):
    """A GrokAdamW group as ``funcopt.grokadamw`` keywords."""
    b1, b2 = group["betas"]
    return {"learning_rate": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"],
            "weight_decay": group["weight_decay"], "alpha_init": group["alpha_init"],
            "lamb": group["lamb"], "gamma": group["gamma"],
            "grokking_signal": grok_signal(group),
            "grokking_signal_decay_rate": group["grokking_signal_decay_rate"],
            "gradient_clipping": group["gradient_clipping"]}


def _grok_store(optimizer, group, p, state):
    states = group.setdefault("state", {})
    states.pop(p, None)
    if state is not None:
        states[p] = state


def grok_normalize(state_dict) -> dict:
    """GrokAdamW's state dict in torch's form: each group's ``"state"`` (keyed by the saved
    tensors, in the order the parameters first stepped) moved to ``state_dict["state"]`` by
    position; it must hold every parameter of its group (else the order is unknown)."""
    groups, state = [], dict(state_dict["state"])
    for index, group in enumerate(state_dict["param_groups"]):
        group = dict(group)
        saved = list(group.pop("state", {}).values())
        if saved and len(saved) != len(group["params"]):
            raise ValueError(
                f"GrokAdamW's state dict keeps param group {index}'s state by tensor, for "
                f"{len(saved)} of its {len(group['params'])} parameters: which is which is "
                "unknown. Convert the live optimizer with funcopt.torch.state_from_torch.")
        state.update(zip(group["params"], saved, strict=False))
        groups.append(group)
    return {**state_dict, "state": state, "param_groups": groups}


GROKADAMW = register(Layout(
    funcopt.grokadamw, funcopt.GrokAdamWState,
    keys={"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "grok_ema": "grok_ema"},
    normalize=grok_normalize,
    references=(Reference("grokadamw.grokadamw", "GrokAdamW", grok_config,
                          state_of=lambda opt, group, p: group.get("state", {}).get(p),
                          store=_grok_store, label="grokadamw.GrokAdamW"),),
))


# -- optimi.StableAdamW <-> funcopt.stable_adamw -----------------------------------------------

def stable_config(group):
    """An optimi StableAdamW group as ``funcopt.stable_adamw`` keywords."""
    return {"learning_rate": group["lr"], "b1": group["beta1"], "b2": group["beta2"],
            "weight_decay": group["weight_decay"], "eps": group["eps"],
            "decouple_lr": group["decouple_lr"], "max_lr": group["max_lr"],
            "kahan_sum": group["kahan_sum"]}


def _with_kahan_key(state, p, group):
    """optimi's per-parameter state: ``kahan_comp`` None without Kahan summation (it reads
    the key); with it, the group's ``kahan_sum`` True, as optimi sets it at the first step."""
    if state.get("kahan_comp") is not None and group.get("kahan_sum") is None:
        group["kahan_sum"] = True
    return {"kahan_comp": None, **state}


STABLE_ADAMW = register(Layout(
    funcopt.stable_adamw, funcopt.StableAdamWState,
    keys={"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "eps_sq": "eps_sq",
          "kahan_comp": "kahan_comp"},
    step=None,
    group_keys={"step": GroupKey("count", lambda a: torch.tensor(int(a), dtype=torch.int32),
                                 lambda v: int(v)),
                "setup": GroupKey(None, lambda _: True)},
    references=(Reference("optimi.stableadamw", "StableAdamW", stable_config, keeps_step=False,
                          to_reference=_with_kahan_key, label="optimi.StableAdamW"),),
))


# -- galore-torch <-> funcopt.galore_adamw / galore_adafactor ----------------------------------

def _galore_keys(group) -> dict:
    """A galore-torch group's GaLore keywords: no targets without ``rank``, else all its
    parameters (a group that already says, as ``funcopt.torch.Optimizer``'s do, keeps its
    ``mask``)."""
    if "rank" not in group:  # a plain group: no target
        return {"mask": False}
    return {"mask": group.get("mask", True), "rank": group["rank"],
            "update_proj_gap": group["update_proj_gap"], "scale": group["scale"],
            "proj_type": group["proj_type"]}


def galore_adamw_config(group):
    """A galore-torch AdamW group as ``funcopt.galore_adamw`` keywords."""
    b1, b2 = group["betas"]
    return {"learning_rate": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"],
            "weight_decay": group["weight_decay"], "correct_bias": group["correct_bias"],
            **_galore_keys(group)}


def galore_adafactor_config(group):
    """A galore-torch Adafactor group as ``funcopt.galore_adafactor`` keywords."""
    return {**hf_adafactor_reference_config(group), **_galore_keys(group)}


def galore_flatten(state, p):
    """``projector.ortho_matrix`` as ``ortho_left``/``ortho_right`` (by the projector's
    ``proj_type`` and the parameter's shape)."""
    flat = {k: v for k, v in state.items() if k != "projector"}
    projector = state.get("projector")
    if projector is None or projector.ortho_matrix is None:
        return flat
    ortho = projector.ortho_matrix
    side = "full" if isinstance(ortho, list | tuple) else _galore._side(
        projector.proj_type, *(tuple(p.shape) if p is not None else ortho.shape))
    if side == "full":
        flat["ortho_left"], flat["ortho_right"] = ortho
    else:
        flat[f"ortho_{side}"] = ortho
    return flat


def galore_projector(state, p, group):
    """The reference's per-parameter state: ``ortho_left``/``ortho_right`` in a
    ``GaLoreProjector`` (a parameter of a GaLore group), the rest as is."""
    from galore_torch.galore_projector import GaLoreProjector

    left, right = state.pop("ortho_left", None), state.pop("ortho_right", None)
    if "rank" in group:
        projector = GaLoreProjector(group["rank"], update_proj_gap=group["update_proj_gap"],
                                    scale=group["scale"], proj_type=group["proj_type"])
        projector.ortho_matrix = [left, right] if left is not None and right is not None \
            else (left if left is not None else right)
        state["projector"] = projector
    return state


def _galore_layout(fn, state_type, keys, config, module, name, **extra):
    return register(Layout(
        fn, state_type, keys={**keys, "ortho_left": "ortho_left", "ortho_right": "ortho_right"},
        flatten=galore_flatten, defaults={"svd": torch_svd},
        references=(Reference(f"galore_torch.{module}", name, config,
                              to_reference=galore_projector,
                              label=f"galore_torch.GaLore{name}"),), **extra))


GALORE_ADAMW = _galore_layout(
    funcopt.galore_adamw, funcopt.GaLoreAdamWState,
    {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}, galore_adamw_config, "adamw", "AdamW")
GALORE_ADAFACTOR = _galore_layout(
    funcopt.galore_adafactor, funcopt.GaLoreAdafactorState,
    {"exp_avg": "exp_avg", "exp_avg_sq_row": "exp_avg_sq_row",
     "exp_avg_sq_col": "exp_avg_sq_col", "exp_avg_sq": "exp_avg_sq", "RMS": "rms"},
    galore_adafactor_config, "adafactor", "Adafactor", derived=adafactor_lr)
