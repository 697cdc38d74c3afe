"""A funcopt schedule as plain JSON data and back.

funcopt's schedules are ``functools.partial`` objects of module-level functions of funcopt
with plain arguments (numbers, strings, None, lists, nested schedules). Such a partial is
described as ``{"function": "module:qualname", "args": [...], "keywords": {...}}``, where a
nested schedule appears as ``{"schedule": <description>}``. Rebuilding imports only funcopt
modules, so a config cannot make it run arbitrary code. Descriptions saved before funcopt's
schedule modules were split by family (``funcopt._schedules:...``) rebuild too.
"""

from __future__ import annotations

import functools
import importlib
import numbers

__all__ = ["describe", "rebuild"]


# Where the schedule functions of descriptions saved by earlier funcopt versions live now
# (funcopt 0.1's ``_schedules`` and ``_tf_schedules`` were split by family): a saved Keras
# config keeps rebuilding. Same functions and keywords, other modules.
_MOVED = {
    "funcopt._schedules": {
        "_constant": "funcopt._lambda_schedules_power",
        "_constant_with_warmup": "funcopt._lambda_schedules_power",
        "_linear": "funcopt._lambda_schedules_power",
        "_polynomial": "funcopt._lambda_schedules_power",
        "_inverse_sqrt": "funcopt._lambda_schedules_power",
        "_cosine": "funcopt._lambda_schedules_cosine",
        "_hard_restarts": "funcopt._lambda_schedules_cosine",
        "_wsd": "funcopt._lambda_schedules_wsd",
    },
    "funcopt._tf_schedules": {
        "_warmup": "funcopt._warmup_decay",
        "_polynomial_decay": "funcopt._warmup_decay",
    },
}


class NotDescribable(ValueError):
    pass


def _plain(value, where):
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, functools.partial):
        return {"schedule": describe(value)}
    raise NotDescribable(f"{where}={value!r} is not a plain value (number, string, None, list) "
                         "or a funcopt schedule")


def _is_funcopt(module: str) -> bool:
    return module == "funcopt" or module.startswith("funcopt.")


def describe(schedule) -> dict:
    """The JSON-able description of a funcopt schedule; ``NotDescribable`` otherwise."""
    if not isinstance(schedule, functools.partial):
        raise NotDescribable(f"{schedule!r} is not a funcopt schedule (a functools.partial)")
    func = schedule.func
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", "")
    if not module or not _is_funcopt(module) or "<" in qualname:
        raise NotDescribable(f"{func!r} is not a module-level function of funcopt")
    return {
        "function": f"{module}:{qualname}",
        "args": [_plain(a, f"args[{i}]") for i, a in enumerate(schedule.args)],
        "keywords": {k: _plain(v, k) for k, v in schedule.keywords.items()},
    }


def _value(data):
    if isinstance(data, dict):
        if set(data) != {"schedule"}:
            raise ValueError(f"Not a funcopt schedule description: {data!r}.")
        return rebuild(data["schedule"])
    if isinstance(data, list):
        return [_value(v) for v in data]
    return data


def rebuild(description: dict):
    """The schedule a :func:`describe` description stands for."""
    try:
        module, qualname = description["function"].split(":")
        args, keywords = description["args"], description["keywords"]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError(
            "Not a funcopt schedule description (expected {'function': 'module:qualname', "
            f"'args': [...], 'keywords': {{...}}}}): {description!r}."
        ) from None
    if not _is_funcopt(module):
        raise ValueError(
            f"Refusing to rebuild a schedule from {module!r}: only funcopt's own schedule "
            "functions are rebuilt from a config."
        )
    module = _MOVED.get(module, {}).get(qualname, module)
    func = importlib.import_module(module)
    for part in qualname.split("."):
        func = getattr(func, part, None)
    if not callable(func):
        raise ValueError(f"{description['function']!r} is not a function of funcopt.")
    return functools.partial(func, *[_value(a) for a in args],
                             **{k: _value(v) for k, v in keywords.items()})
