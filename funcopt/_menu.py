"""``get_optimizer``: the Trainer's ``optim`` menu (transformers 5.x ``OptimizerNames``) by name.

Each supported name maps to the funcopt function that is exact against the class the Trainer
instantiates for it; the keyword arguments are that class's own constructor keywords (the ones
``Trainer.get_optimizer_cls_and_kwargs`` passes), translated to the function's.
"""

from __future__ import annotations

import enum
import inspect
from typing import Any, NamedTuple

import optax

__all__ = ["get_optimizer", "SUPPORTED", "UNSUPPORTED"]


class _Entry(NamedTuple):
    function: str  # the funcopt function's name
    reference: str  # the class the Trainer instantiates
    fixed: dict  # keywords the name implies (e.g. optim_bits=8)
    note: str = ""


def _e(function, reference, note="", **fixed):
    return _Entry(function, reference, fixed, note)


_PAGED = "paged_ names run unpaged: paging is a CUDA memory feature with no JAX meaning"

SUPPORTED: dict[str, _Entry] = {
    "adamw_torch": _e("adamw_torch", "torch.optim.AdamW"),
    "adamw_torch_fused": _e("adamw_torch_fused", "torch.optim.AdamW(fused=True)"),
    "adamw_hf": _e("adamw", "transformers.AdamW (4.49)"),
    "adafactor": _e("adafactor", "transformers.Adafactor"),
    "sgd": _e("sgd", "torch.optim.SGD"),
    "adagrad": _e("adagrad", "torch.optim.Adagrad"),
    "rmsprop": _e("rmsprop", "torch.optim.RMSprop"),
    "lion_32bit": _e("lion", "bitsandbytes.optim.Lion(optim_bits=32)", optim_bits=32),
    "paged_lion_32bit": _e("lion", "bitsandbytes.optim.Lion(optim_bits=32)", _PAGED,
                           optim_bits=32),
    "lion_8bit": _e("lion_8bit", "bitsandbytes.optim.Lion(optim_bits=8)", optim_bits=8),
    "paged_lion_8bit": _e("lion_8bit", "bitsandbytes.optim.Lion(optim_bits=8)", _PAGED,
                          optim_bits=8),
    "ademamix": _e("ademamix", "bitsandbytes.optim.AdEMAMix(optim_bits=32)", optim_bits=32),
    "paged_ademamix_32bit": _e("ademamix", "bitsandbytes.optim.AdEMAMix(optim_bits=32)",
                               _PAGED, optim_bits=32),
    "ademamix_8bit": _e("ademamix_8bit", "bitsandbytes.optim.AdEMAMix(optim_bits=8)",
                        optim_bits=8),
    "paged_ademamix_8bit": _e("ademamix_8bit", "bitsandbytes.optim.AdEMAMix(optim_bits=8)",
                              _PAGED, optim_bits=8),
    "adamw_bnb_8bit": _e("adamw_8bit", "bitsandbytes.optim.AdamW(optim_bits=8)", optim_bits=8),
    "adamw_8bit": _e("adamw_8bit", "bitsandbytes.optim.AdamW(optim_bits=8)", optim_bits=8),
    "paged_adamw_8bit": _e("adamw_8bit", "bitsandbytes.optim.AdamW(optim_bits=8)", _PAGED,
                           optim_bits=8),
    "paged_adamw_32bit": _e("adamw_bnb", "bitsandbytes.optim.AdamW(optim_bits=32)", _PAGED,
                            optim_bits=32),
    "rmsprop_bnb": _e("rmsprop_bnb", "bitsandbytes.optim.RMSprop(optim_bits=32)",
                      optim_bits=32),
    "rmsprop_bnb_32bit": _e("rmsprop_bnb", "bitsandbytes.optim.RMSprop(optim_bits=32)",
                            optim_bits=32),
    "rmsprop_bnb_8bit": _e("rmsprop_8bit", "bitsandbytes.optim.RMSprop(optim_bits=8)",
                           optim_bits=8),
    "schedule_free_adamw": _e("schedule_free_adamw", "schedulefree.AdamWScheduleFree"),
    "schedule_free_sgd": _e("schedule_free_sgd", "schedulefree.SGDScheduleFree"),
    "schedule_free_radam": _e("schedule_free_radam", "schedulefree.RAdamScheduleFree"),
    "grokadamw": _e("grokadamw", "grokadamw.GrokAdamW"),
    "stable_adamw": _e("stable_adamw", "optimi.StableAdamW"),
    "galore_adamw": _e("galore_adamw", "galore_torch.GaLoreAdamW"),
    "galore_adafactor": _e("galore_adafactor", "galore_torch.GaLoreAdafactor"),
}

_LAYERWISE = ("layer-wise optimizers step each parameter inside its backward hook; a pure "
              "transformation sees the whole gradient at once, so use the non-layerwise name "
              "(same numbers per step)")
UNSUPPORTED: dict[str, str] = {
    "adamw_torch_xla": "torch_xla's syncfree AdamW is a device kernel funcopt does not match; "
                       "use adamw_torch (torch.optim.AdamW's numbers)",
    "adamw_torch_npu_fused": "torch_npu's fused kernel is not available to compare against; "
                             "use adamw_torch",
    "adamw_anyprecision": "torchdistx's AnyPrecisionAdamW (its dtype/Kahan options) is not built",
    "adamw_torch_4bit": "torchao's 4-bit AdamW is not built (its quantization differs from "
                        "bitsandbytes'); use adamw_8bit",
    "adamw_torch_8bit": "torchao's 8-bit AdamW is not built (its quantization differs from "
                        "bitsandbytes'); use adamw_8bit",
    "galore_adamw_8bit": "GaLore with bitsandbytes' 8-bit AdamW is not built; use galore_adamw",
    "galore_adamw_layerwise": _LAYERWISE,
    "galore_adamw_8bit_layerwise": _LAYERWISE,
    "galore_adafactor_layerwise": _LAYERWISE,
    "apollo_adamw": "APOLLO draws its random projections from torch's RNG stream, which JAX "
                    "cannot reproduce, so no run could match the reference",
    "apollo_adamw_layerwise": _LAYERWISE,
    "lomo": "LOMO fuses the update into backward (it needs the model and its hooks)",
    "adalomo": "AdaLomo fuses the update into backward (it needs the model and its hooks)",
}

# Keywords of the reference classes with no effect on the numbers (implementation choices).
_IGNORED = {"foreach", "capturable", "differentiable", "is_paged", "paged"}


def _name(name) -> str:
    if isinstance(name, enum.Enum):
        name = name.value
    if not isinstance(name, str):
        raise TypeError(f"name must be a Trainer optim name (a str or OptimizerNames), got "
                        f"{name!r}.")
    return name


def _entry(name: str) -> _Entry:
    if name in SUPPORTED:
        return SUPPORTED[name]
    why = UNSUPPORTED.get(name)
    detail = f" ({why})" if why else ""
    raise ValueError(
        f"optim={name!r} is not supported{detail}. Supported names: {sorted(SUPPORTED)}."
    )


def _function(entry: _Entry):
    import funcopt

    return getattr(funcopt, entry.function)


def _translate(name: str, entry: _Entry, function, kwargs: dict) -> dict:
    """The reference class's keywords as the funcopt function's."""
    accepted = inspect.signature(function).parameters
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key == "lr":
            raise TypeError("get_optimizer takes the learning rate as learning_rate=..., not lr.")
        if key in _IGNORED:
            continue
        if key == "betas" and "betas" not in accepted:
            slots = [b for b in ("b1", "b2", "b3") if b in accepted]
            if not isinstance(value, tuple | list) or len(value) != len(slots):
                raise ValueError(f"betas={value!r} is invalid for optim={name!r}: it must be a "
                                 f"tuple of {len(slots)} floats ({', '.join(slots)}).")
            out.update(zip(slots, value, strict=True))
        elif key == "optim_bits" and "optim_bits" not in accepted:
            if value != entry.fixed.get("optim_bits"):
                raise ValueError(f"optim_bits={value!r} contradicts optim={name!r}, which is "
                                 f"{entry.fixed.get('optim_bits')}-bit.")
        elif key == "fused" and name.startswith("adamw_torch"):
            if bool(value) != (name == "adamw_torch_fused"):
                raise ValueError(f"fused={value!r} contradicts optim={name!r}: use "
                                 "'adamw_torch_fused' for torch's fused kernel, 'adamw_torch' "
                                 "for its for-loop/foreach path.")
        elif key in accepted:
            out[key] = value
        else:
            allowed = sorted((set(accepted) - {"learning_rate"}) | _IGNORED
                             | ({"betas"} if "b1" in accepted else set()))
            raise TypeError(f"optim={name!r} ({entry.reference}) got an unexpected keyword "
                            f"{key!r}; it accepts {allowed}.")
    return out


def get_optimizer(name, learning_rate=None, **kwargs) -> optax.GradientTransformation:
    """The funcopt optimizer the 5.x Trainer would build for ``optim=name``.

    ``name`` is a Trainer ``optim`` value (transformers 5.x ``OptimizerNames``, a str or the
    enum, plus ``"adamw_hf"``, 4.49's ``transformers.AdamW``). ``kwargs`` are the reference
    class's own constructor keywords as the Trainer passes them (``betas=(b1, b2)``, ``eps``,
    ``weight_decay``, ``momentum``, ``alpha``, ``optim_bits``, ...), the learning rate spelled
    ``learning_rate``, plus ``mask`` (which leaves decay). Keywords without numerical effect
    (``foreach``, ``is_paged``, ``capturable``, ``differentiable``) are accepted and ignored;
    ``paged_*`` names are their unpaged twins (paging is a CUDA memory feature). Every name maps
    to the function that is exact against its class (the README's porting table lists them):
    ``adamw_torch_fused`` follows torch's fused CPU kernel, ``adamw_torch`` its for-loop path.
    Names funcopt does not build (APOLLO, LOMO, the layer-wise and torchao variants) raise with
    the reason.

    Args:
      name: the ``optim`` name.
      learning_rate: a float or schedule; None takes the reference class's default.
      **kwargs: the reference class's keywords, and ``mask``.

    Raises:
      ValueError: for a name funcopt does not support (the message lists those it does) or
        a keyword value that contradicts the name.
      TypeError: for a keyword the reference class does not take.

    Example:
      >>> import funcopt
      >>> opt = funcopt.get_optimizer("adamw_hf", learning_rate=1e-3, betas=(0.9, 0.98),
      ...                             eps=1e-6, weight_decay=0.01)
      >>> funcopt.get_optimizer("lomo")
      Traceback (most recent call last):
      ...
      ValueError: optim='lomo' is not supported (LOMO fuses the update into backward ...
    """
    name = _name(name)
    entry = _entry(name)
    function = _function(entry)
    config = _translate(name, entry, function, kwargs)
    if learning_rate is not None:
        config["learning_rate"] = learning_rate
    return function(**config)
