"""Where the Keras Adam optimizers keep ``m``, ``v`` and ``vhat`` for each variable.

* Legacy tf_keras (``tf_keras.optimizers.legacy.Adam``, hence ``transformers.AdamWeightDecay``):
  slot variables ``optimizer.get_slot(var, "m" | "v" | "vhat")``, created by
  ``optimizer._create_all_weights(var_list)``.
* New tf_keras (``tf_keras.optimizers.Adam``, what ``create_optimizer`` returns without weight
  decay): lists ``_momentums``, ``_velocities``, ``_velocity_hats`` indexed by
  ``optimizer._index_dict[optimizer._var_key(var)]``, created by ``optimizer.build(var_list)``.

Both count steps in ``optimizer.iterations`` (int64).
"""

from __future__ import annotations

from funcopt.tensorflow._tf import tf_keras

__all__ = ["slot_names", "slots"]

_SUPPORTED = (
    "transformers.AdamWeightDecay or another tf_keras.optimizers.legacy.Adam (slots m, v, "
    "vhat), or tf_keras.optimizers.Adam (what transformers.create_optimizer returns without "
    "weight decay)"
)
_NEW_LISTS = {"m": "_momentums", "v": "_velocities", "vhat": "_velocity_hats"}


def _kind(optimizer) -> str:
    if isinstance(optimizer, tf_keras.optimizers.legacy.Adam):
        return "legacy"
    if isinstance(optimizer, tf_keras.optimizers.Adam):
        return "new"
    cls = type(optimizer)
    raise TypeError(
        f"Unsupported optimizer class {cls.__module__}.{cls.__qualname__}: expected "
        f"{_SUPPORTED}. (A Keras 3 optimizer is not a tf_keras one: build it from tf_keras, "
        "as transformers does.)"
    )


def slot_names(optimizer) -> tuple[str, ...]:
    """``("m", "v")``, plus ``"vhat"`` when the optimizer uses amsgrad."""
    _kind(optimizer)
    return ("m", "v", "vhat") if optimizer.amsgrad else ("m", "v")


def _missing(optimizer, slot, why, var=None):
    where = "" if var is None else f" for variable {var.name!r}"
    return ValueError(
        f"The {type(optimizer).__name__} has no {slot!r} slot{where}: {why}. "
        "state_from_keras reads an optimizer that has been applied to "
        "these variables; start a fresh run from the funcopt transformation's init(params), "
        "or write a state into the optimizer with state_to_keras (which creates the slots)."
    )


def slots(optimizer, variables: list, create: bool) -> dict[str, list]:
    """The slot variables ``{"m": [...], "v": [...], ("vhat": [...])}``, one per variable in
    order. ``create`` makes missing slots (as a fresh optimizer's first step would); otherwise
    a missing slot is a ``ValueError``."""
    kind = _kind(optimizer)
    names = slot_names(optimizer)
    if kind == "legacy":
        if create:
            optimizer._create_all_weights(variables)
        out = {name: [] for name in names}
        for var in variables:
            for name in names:
                try:
                    out[name].append(optimizer.get_slot(var, name))
                except KeyError:
                    raise _missing(
                        optimizer, name, "it has not been applied to this variable yet", var
                    ) from None
        return out

    if create:
        optimizer.build(variables)
    index = getattr(optimizer, "_index_dict", None)
    if not getattr(optimizer, "_built", False) or index is None:
        raise _missing(optimizer, names[0], "it is not built yet (it has no slots at all)")
    out = {}
    for name in names:
        lists = getattr(optimizer, _NEW_LISTS[name], None)
        if lists is None:
            raise _missing(optimizer, name, "it keeps no such slots")
        out[name] = []
        for var in variables:
            i = index.get(optimizer._var_key(var))
            if i is None:
                raise ValueError(
                    f"The {type(optimizer).__name__} was built for other variables than "
                    f"{var.name!r}: a built tf_keras optimizer cannot take new "
                    "variables; pass the variables it was built (or applied) with, or a fresh "
                    "optimizer."
                )
            out[name].append(lists[i])
    return out
