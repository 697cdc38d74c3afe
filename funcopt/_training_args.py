"""``from_training_args``: the optimizer and schedule the transformers 5.x Trainer builds from
its ``TrainingArguments``, as one optax transformation."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import optax

from funcopt import _checks

__all__ = ["from_training_args", "TRAINER_DEFAULTS"]

#: The 5.x ``TrainingArguments`` defaults of the fields funcopt reads (torch >= 2.8, where
#: the default ``optim`` is ``adamw_torch_fused``).
TRAINER_DEFAULTS = {
    "learning_rate": 5e-5, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
    "adam_epsilon": 1e-8, "max_grad_norm": 1.0, "optim": "adamw_torch_fused",
    "optim_args": None, "optim_target_modules": None, "lr_scheduler_type": "linear",
    "lr_scheduler_kwargs": None, "warmup_steps": 0, "max_steps": -1,
    "gradient_accumulation_steps": 1,
}

# Fields that change the Trainer's optimizer step and that funcopt does not follow: the value
# that is harmless, and why any other raises.
_NOT_FOLLOWED = {
    "fp16": (False, "fp16 mixed precision steps through a GradScaler that skips steps on "
                    "overflow; train in float32 or bf16 (bf16 autocast leaves the optimizer "
                    "step unchanged)"),
    "deepspeed": (None, "DeepSpeed replaces the optimizer with its own"),
    "warmup_ratio": (0.0, "transformers 5.x removed warmup_ratio and reads warmup_steps < 1 as "
                          "a ratio: pass warmup_steps=ratio"),
}
_METRIC_DRIVEN = {"reduce_lr_on_plateau", "greedy"}


def _field(args, name):
    default = TRAINER_DEFAULTS.get(name)
    if isinstance(args, Mapping):
        value = args.get(name, default)
    else:
        value = getattr(args, name, default)
    if hasattr(value, "value") and not isinstance(value, str | int | float):
        value = value.value  # OptimizerNames / SchedulerType enums
    return value


def parse_optim_args(text) -> dict[str, str]:
    """``optim_args`` parsed as the Trainer parses it: ``"a=1, b=x"`` -> ``{"a": "1", ...}``
    (values stay strings; each optimizer converts the keys it reads)."""
    if not text:
        return {}
    out = {}
    for mapping in str(text).replace(" ", "").split(","):
        parts = mapping.split("=")
        if len(parts) != 2:
            raise ValueError(f"optim_args={text!r} is invalid: each item must be key=value "
                             f"(got {mapping!r}), as the Trainer requires.")
        out[parts[0]] = parts[1]
    return out


def _floats(optim_args, keys):
    return {k: float(optim_args[k]) for k in keys if k in optim_args}


def _flag(optim_args, key):
    return {key: optim_args[key].lower() in ("true", "1", "yes")} if key in optim_args else {}


def _adam(args):
    return {"betas": (_field(args, "adam_beta1"), _field(args, "adam_beta2")),
            "eps": _field(args, "adam_epsilon")}


def _bnb_kwargs(name, args, optim_args):
    if "rmsprop" in name:
        if optim_args:
            raise ValueError(
                f"optim_args={_field(args, 'optim_args')!r} with optim={name!r}: the Trainer "
                "passes them to bitsandbytes' RMSprop as raw strings, which it rejects; only "
                "its defaults are reachable."
            )
        return {}
    if "lion" in name:
        return {"betas": (_field(args, "adam_beta1"), _field(args, "adam_beta2"))}
    if "ademamix" in name:
        get = lambda key, default: float(optim_args.get(key, default))
        out = {"betas": (get("beta1", _field(args, "adam_beta1")),
                         get("beta2", _field(args, "adam_beta2")), get("beta3", 0.9999)),
               "alpha": get("alpha", 5.0), "eps": get("eps", _field(args, "adam_epsilon"))}
        out.update({k: int(optim_args[k]) for k in ("t_alpha", "t_beta3") if k in optim_args})
        return out
    return _adam(args)


def _optimizer_kwargs(name, args, optim_args) -> dict:
    """The keywords ``Trainer.get_optimizer_cls_and_kwargs`` (5.23) passes for ``name``,
    besides ``lr`` and the param groups' ``weight_decay``."""
    if name == "adafactor":
        return {"scale_parameter": False, "relative_step": False}
    if name in ("adamw_torch", "adamw_torch_fused", "adamw_hf"):
        return _adam(args)
    if name == "sgd":
        return {**_floats(optim_args, ("momentum", "dampening")), **_flag(optim_args, "nesterov")}
    if name == "adagrad":
        return _floats(optim_args, ("lr_decay", "eps"))
    if name == "rmsprop":
        return {**_floats(optim_args, ("momentum", "alpha", "eps")),
                **_flag(optim_args, "centered")}
    if any(k in name for k in ("lion", "ademamix", "adamw_bnb", "adamw_8bit", "paged_adamw",
                               "rmsprop_bnb")):
        return _bnb_kwargs(name, args, optim_args)
    if name == "grokadamw":
        defaults = {"alpha_init": 0.98, "lamb": 2.0, "gamma": 0.1,
                    "grokking_signal_decay_rate": 0.1, "gradient_clipping": 1.0}
        return {k: float(optim_args.get(k, v)) for k, v in defaults.items()}
    if name.startswith("schedule_free"):
        out = {} if name == "schedule_free_sgd" else _adam(args)
        if name != "schedule_free_radam":
            out["warmup_steps"] = _field(args, "warmup_steps")  # unchanged: a ratio stays one
        out.update({"weight_lr_power": float(optim_args.get("weight_lr_power", 2.0)),
                    "r": float(optim_args.get("r", 0.0))})
        return out
    if name == "stable_adamw":
        out = _adam(args)
        out["decouple_lr"] = bool(optim_args.get("decouple_lr", False))  # bool(str), as 5.23
        if "max_lr" in optim_args:
            out["max_lr"] = float(optim_args["max_lr"])
        elif out["decouple_lr"]:  # optimi takes the constructor's lr, before any schedule
            out["max_lr"] = _field(args, "learning_rate")
        if "kahan_sum" in optim_args:
            out["kahan_sum"] = bool(optim_args["kahan_sum"])
        return out
    if name.startswith("galore"):
        out = {"rank": int(optim_args.get("rank", 128)),
               "update_proj_gap": int(optim_args.get("update_proj_gap", 200)),
               "scale": float(optim_args.get("scale", 0.25)),
               "proj_type": optim_args.get("proj_type", "std")}
        if name == "galore_adafactor":
            out.update({"scale_parameter": False, "relative_step": False})
        return out
    return {}


def _check_followed(args):
    for field, (harmless, why) in _NOT_FOLLOWED.items():
        value = _field(args, field)
        if value not in (harmless, None, "", False, 0, 0.0, [], {}):
            raise ValueError(f"{field}={value!r} changes the Trainer's optimizer step and "
                             f"funcopt does not follow it: {why}.")
    if _field(args, "fsdp") not in (None, "", [], False):
        raise ValueError(f"fsdp={_field(args, 'fsdp')!r}: FSDP shards the optimizer and its "
                         "clipping; shard funcopt's state with jax.sharding instead.")


def _warmup_steps(args, num_training_steps) -> int:
    warmup = _field(args, "warmup_steps")
    _checks.number("warmup_steps", warmup, low=0.0,
                   allowed=">= 0 (an int number of steps, or a ratio in [0, 1))")
    return int(warmup) if warmup >= 1 else math.ceil(num_training_steps * warmup)


def _schedule(args, num_training_steps):
    from funcopt import get_scheduler

    name = _field(args, "lr_scheduler_type")
    if name in _METRIC_DRIVEN:
        raise ValueError(
            f"lr_scheduler_type={name!r} is driven by evaluation metrics, which the optimizer "
            "does not see: build funcopt.get_optimizer(...) and chain funcopt.get_scheduler("
            f"{name!r}, ...) yourself, passing value=metric at each update."
        )
    kwargs = _field(args, "lr_scheduler_kwargs") or {}
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs)
    return get_scheduler(name, _field(args, "learning_rate"),
                         num_warmup_steps=_warmup_steps(args, num_training_steps),
                         num_training_steps=num_training_steps,
                         scheduler_specific_kwargs=dict(kwargs))


def _base_optimizer(args, params, schedule):
    import funcopt

    name = _field(args, "optim")
    optim_args = parse_optim_args(_field(args, "optim_args"))
    kwargs = _optimizer_kwargs(name, args, optim_args)
    if name.startswith("galore"):
        targets = _field(args, "optim_target_modules")
        if targets is None:
            raise ValueError(f"optim={name!r} needs optim_target_modules (a list of module "
                             "names, a regex, or 'all-linear'), as the Trainer requires.")
        kwargs["mask"] = funcopt.galore_target_mask(params, targets)
    else:  # the Trainer's two param groups: args.weight_decay, and 0.0 for the rest
        kwargs["weight_decay"] = _field(args, "weight_decay")
        kwargs["mask"] = funcopt.trainer_decay_mask(params)
    return funcopt.get_optimizer(name, learning_rate=schedule, **kwargs)


def from_training_args(args, params, num_training_steps=None):
    r"""The optimizer the transformers 5.x Trainer would step with, and its schedule.

    ``args`` is a ``transformers.TrainingArguments`` or any mapping/object with its field names
    (missing ones take 5.x's defaults, listed in ``funcopt._training_args.TRAINER_DEFAULTS``).
    One optimizer step is what the Trainer does after its ``gradient_accumulation_steps``
    backward passes:

    .. math::
        g = \tfrac1k \textstyle\sum_{i=1}^k g_i, \qquad
        g \leftarrow g \cdot \min\!\big(1, \tfrac{\text{max\_grad\_norm}}{\|g\| + 10^{-6}}\big),
        \qquad \theta \leftarrow \text{optim}(\theta, g, \eta_t)

    with :func:`funcopt.clip_grad_norm` at ``max_grad_norm`` (at infinity when it is not
    > 0: the Trainer still calls the clip then, which leaves finite gradients unchanged), the
    ``optim`` algorithm (:func:`funcopt.get_optimizer`) built with ``learning_rate``,
    ``adam_beta1/2``, ``adam_epsilon`` and ``optim_args`` exactly as the Trainer passes them,
    ``weight_decay`` on :func:`funcopt.trainer_decay_mask` of ``params`` (0.0 elsewhere), and
    :math:`\eta_t` from ``lr_scheduler_type``, ``warmup_steps`` (``< 1``: a ratio,
    ``ceil(ratio * num_training_steps)``) and ``lr_scheduler_kwargs``. With
    ``gradient_accumulation_steps = k > 1`` the result is
    :func:`funcopt.gradient_accumulation` of it: call ``update`` once per micro-batch with
    that micro-batch's gradient of its mean loss; the optimizer and the schedule advance once
    per ``k`` calls.

    Two Trainer behaviours need data the optimizer does not see:

    * **Token-weighted losses.** Models that take ``num_items_in_batch`` (HF language models)
      weight each micro-batch by its token count :math:`n_i` out of :math:`N = \sum n_i`:
      pass :math:`k\,n_i/N` times the micro-batch's mean-loss gradient, so that the mean is
      the Trainer's token-weighted sum.
    * **A short last accumulation.** When an epoch's batch count is not a multiple of ``k``,
      its last step accumulates only :math:`r < k` micro-batches and divides by :math:`r`:
      pass those :math:`r` gradients times :math:`k/r`, then :math:`k - r` zero gradients.

    Fields that change the Trainer's optimizer and that funcopt does not follow (``fp16``'s
    GradScaler, ``deepspeed``, ``fsdp``, metric-driven schedulers, 4.x's ``warmup_ratio``)
    raise ``ValueError``; so do an unsupported ``optim`` (listing the supported ones), a
    ``lr_scheduler_kwargs`` key the schedule does not take, and ``warmup_steps < 0``.

    Args:
      args: ``TrainingArguments``, a mapping, or an object with its fields.
      params: the parameter pytree (its names choose which leaves decay).
      num_training_steps: optimizer steps of the run; defaults to ``args.max_steps`` when
        that is > 0, and is required otherwise.

    Returns:
      ``(optimizer, schedule)``: an optax transformation and the ``step -> lr`` schedule it
      evaluates at its optimizer-step count.

    Example:
      >>> import jax.numpy as jnp, funcopt
      >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
      >>> opt, schedule = funcopt.from_training_args(
      ...     {"learning_rate": 1e-3, "weight_decay": 0.01, "optim": "adamw_torch",
      ...      "warmup_steps": 0.1, "max_steps": 100}, params)
      >>> print(schedule(5), schedule(10))  # 10 warmup steps: ceil(0.1 * 100)
      0.0005 0.001
    """
    _check_followed(args)
    if num_training_steps is None:
        max_steps = _field(args, "max_steps")
        if max_steps is None or max_steps <= 0:
            raise ValueError("num_training_steps is required when args.max_steps is not > 0 "
                             "(the Trainer derives it from the dataset's length and epochs).")
        num_training_steps = max_steps
    num_training_steps = _checks.integer("num_training_steps", num_training_steps, low=1)
    schedule = _schedule(args, num_training_steps)
    optimizer = _base_optimizer(args, params, schedule)
    from funcopt import clip_grad_norm

    # With max_grad_norm <= 0 the Trainer still calls clip_grad_norm_ with an infinite max to
    # log the norm: a multiplication by 1.0, which only turns non-finite gradients into NaN.
    max_grad_norm = _field(args, "max_grad_norm")
    clip = max_grad_norm if max_grad_norm is not None and max_grad_norm > 0 else math.inf
    optimizer = optax.chain(clip_grad_norm(clip), optimizer)
    k = _checks.integer("gradient_accumulation_steps",
                        _field(args, "gradient_accumulation_steps"), low=1)
    if k > 1:
        from funcopt import gradient_accumulation

        optimizer = gradient_accumulation(optimizer, k)
    return optimizer, schedule
