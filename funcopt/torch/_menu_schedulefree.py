"""schedulefree's ``AdamWScheduleFree``, ``SGDScheduleFree`` and ``RAdamScheduleFree`` in
the torch bridge <-> ``funcopt.schedule_free_adamw``, ``schedule_free_sgd``,
``schedule_free_radam`` (and ``funcopt.torch``'s drop-ins of the same names).

The reference keeps per parameter ``z`` (and ``exp_avg_sq``, not for SGD) without a step,
and in each param group ``k`` (the steps taken, also the funcopt state's count),
``weight_sum`` and ``lr_max`` (Python floats: float32 ``[hi, lo]`` pairs here, float64 to
about 48 bits) and ``train_mode`` (whether the parameters hold y). Beta1 (SGD: momentum),
which the funcopt state also keeps, comes from the group's hyperparameters.
"""

from __future__ import annotations

from funcopt import _double_float as df
from funcopt import schedule_free_adamw, schedule_free_radam, schedule_free_sgd
from funcopt._schedule_free_rule import ScheduleFreeState
from funcopt.torch._layouts import GroupKey, Layout, Reference
from funcopt.torch._registry import register

__all__ = ["SCHEDULE_FREE_ADAMW", "SCHEDULE_FREE_SGD", "SCHEDULE_FREE_RADAM", "GROUP_KEYS",
           "adamw_config", "sgd_config", "radam_config"]

#: The reference's group-level state: key -> funcopt field(s) and conversions.
GROUP_KEYS = {
    "k": GroupKey(("k", "count")),
    "weight_sum": GroupKey("weight_sum", df.to_float, df.pair_from_float),
    "lr_max": GroupKey("lr_max", df.to_float, df.pair_from_float),
    "train_mode": GroupKey("train_mode", lambda a: bool(a.item())),
}


def _common(group) -> dict:
    return {"learning_rate": group["lr"], "weight_decay": group["weight_decay"],
            "r": group["r"], "weight_lr_power": group["weight_lr_power"]}


def adamw_config(group):
    """An ``AdamWScheduleFree`` group as ``funcopt.schedule_free_adamw`` keywords."""
    b1, b2 = group["betas"]
    return {**_common(group), "b1": b1, "b2": b2, "eps": group["eps"],
            "warmup_steps": group["warmup_steps"]}


def sgd_config(group):
    """An ``SGDScheduleFree`` group as ``funcopt.schedule_free_sgd`` keywords."""
    return {**_common(group), "momentum": group["momentum"],
            "warmup_steps": group["warmup_steps"]}


def radam_config(group):
    """A ``RAdamScheduleFree`` group as ``funcopt.schedule_free_radam`` keywords."""
    b1, b2 = group["betas"]
    return {**_common(group), "b1": b1, "b2": b2, "eps": group["eps"],
            "silent_sgd_phase": group["silent_sgd_phase"]}


def _layout(fn, module, name, config):
    return register(Layout(
        fn, ScheduleFreeState, keys={"z": "z", "exp_avg_sq": "exp_avg_sq"}, step=None,
        group_keys=GROUP_KEYS,
        references=(Reference(f"schedulefree.{module}", name, config, keeps_step=False,
                              label=f"schedulefree.{name}"),),
    ))


SCHEDULE_FREE_ADAMW = _layout(schedule_free_adamw, "adamw_schedulefree", "AdamWScheduleFree",
                              adamw_config)
SCHEDULE_FREE_SGD = _layout(schedule_free_sgd, "sgd_schedulefree", "SGDScheduleFree",
                            sgd_config)
SCHEDULE_FREE_RADAM = _layout(schedule_free_radam, "radam_schedulefree", "RAdamScheduleFree",
                              radam_config)
