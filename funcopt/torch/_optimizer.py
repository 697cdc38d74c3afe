"""``funcopt.torch.Optimizer``: a ``torch.optim.Optimizer`` that runs a funcopt optimizer."""

from __future__ import annotations

import inspect
import re

import jax
import numpy as np
import torch

from funcopt.torch import _direct, _dlpack, _layouts, _registry, _update

__all__ = ["Optimizer"]


class Optimizer(torch.optim.Optimizer):
    r"""A ``torch.optim.Optimizer`` that updates torch parameters with a jitted funcopt optimizer.

    ``optimizer_fn`` is a funcopt optimizer with a torch layout (``funcopt.adamw``,
    ``funcopt.adafactor``; see ``funcopt/torch/_registry.py``); ``hyperparams`` are its
    keyword arguments, except that the learning rate is ``lr`` (the group key torch LR
    schedulers drive) and ``mask`` is a bool for a whole param group (None: the optimizer's
    default; ``mask=False`` on the group of parameters that must not decay, or that are not
    GaLore targets, as galore-torch's groups without ``rank``). Unset hyperparameters take
    ``optimizer_fn``'s defaults (but GaLore's ``svd``: :func:`funcopt.torch.torch_svd`,
    galore-torch's own projections), and every param group may override any of them.

    Each ``step()`` runs, for every param group, one jitted call of ``optimizer_fn``'s update
    on all the group's parameters that have a gradient, and updates the parameters in place
    (storage, views and tied weights are kept). Float32 contiguous CPU parameters of
    ``funcopt.adamw``, ``adamw_torch``, ``adamw_torch_fused``, ``adam_torch``, ``sgd``, the
    three ``schedule_free_*`` and ``stable_adamw`` skip XLA: one C call of funcopt's CPU kernel
    steps them and their state in place, in torch's memory, with the XLA path's numbers bit
    for bit (``funcopt/torch/_direct.py``; for schedule-free and StableAdamW, whose param
    group holds state, only when all the group's stepping parameters qualify); other
    parameters get the jitted result copied back.
    Parameters whose ``.grad`` is None are skipped exactly as torch skips them: no state is
    created, their step does not advance and no weight decay touches them. Tensors enter JAX
    through DLPack without copies; the state of the jitted path lives in JAX memory that is
    donated to, and reused by, the next update.

    The group's ``lr`` is read at every step and enters the computation as a traced value, so
    LR schedulers (``LambdaLR``, ``transformers.get_scheduler``) work and changing it never
    recompiles. Compiled updates are cached per (group hyperparameters other than ``lr``,
    shapes, dtypes, which parameters step).

    ``optimizer.state[p]`` is torch's per-parameter layout of the reference class:
    ``step`` (a Python int), ``exp_avg``, ``exp_avg_sq`` for ``funcopt.adamw`` (moments in the
    parameter's dtype); ``step``, ``exp_avg`` (with ``beta1``), ``exp_avg_sq_row`` and
    ``exp_avg_sq_col`` (ndim >= 2) or ``exp_avg_sq``, and a 0-d ``RMS`` for
    ``funcopt.adafactor`` (float32 for bf16/fp16 parameters). The kernel path's tensors are
    torch tensors updated in place (as the reference's are); the jitted path's are views of
    JAX memory, replaced at every step. ``state_dict()`` returns copies, and ``load_state_dict()``
    accepts the reference classes' state dicts (keeping float32 Adafactor state for bf16
    parameters, which torch's own loader would round to bf16).

    Performance: on the kernel path, one pass over each parameter, gradient and state tensor
    (7 memory accesses per parameter for AdamW, as torch's fused kernel), on torch's own
    OpenMP threads, and a few microseconds of Python per parameter: as fast as torch's fused
    AdamW in a plain process (``benchmarks/NOTES.md``). The jitted path makes one call per
    group and step and allocates nothing in steady state (the state is donated and reused;
    the new parameters land in a donated scratch array and are copied into the parameters on
    torch's threads); XLA's and torch's thread pools then take turns, each spinning a while
    after its own work.

    Args:
      params: an iterable of tensors, or of dicts defining param groups.
      optimizer_fn: a registered funcopt optimizer function, e.g. ``funcopt.adamw``.
      **hyperparams: ``lr`` and ``optimizer_fn``'s other keyword arguments.

    Example:
      >>> import torch, funcopt, funcopt.torch
      >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
      >>> opt = funcopt.torch.Optimizer([w], funcopt.adamw, lr=0.1, weight_decay=0.0)
      >>> w.grad = torch.tensor([0.5, -0.5])
      >>> opt.step()  # Adam's first step moves each weight by lr against its gradient's sign
      >>> w.detach()
      tensor([0.9000, 2.1000])
      >>> opt.state[w]["step"], opt.param_groups[0]["b1"]
      (1, 0.9)
    """

    _aliases = {"learning_rate": "lr"}  # funcopt keyword -> group key, for error messages

    # Internal API (no leading underscore, not for users): what funcopt.torch's state
    # converters use -- ``layout``, ``group_config`` and ``set_param_state``.

    def __init__(self, params, optimizer_fn, **hyperparams):
        self._layout = _registry.layout_of(optimizer_fn)
        self._optimizer_fn = optimizer_fn
        self._init_caches()
        super().__init__(params, self._defaults(optimizer_fn, hyperparams))

    # -- hyperparameters -------------------------------------------------------------------

    def _defaults(self, optimizer_fn, hyperparams):
        signature = inspect.signature(optimizer_fn).parameters
        names = [n for n in signature if n != "learning_rate"]
        if "learning_rate" in hyperparams:
            raise TypeError(
                "pass the learning rate as lr=..., the param group key that torch LR "
                "schedulers drive, not learning_rate=..."
            )
        unknown = sorted(set(hyperparams) - set(names) - {"lr"})
        if unknown:
            raise TypeError(
                f"unknown hyperparameters {unknown} for {self._layout.name}; it accepts lr and "
                f"{names}."
            )
        self._names = names
        defaults = {"lr": hyperparams.get("lr", signature["learning_rate"].default)}
        own = self._layout.defaults
        defaults.update({n: hyperparams.get(n, own.get(n, signature[n].default)) for n in names})
        return defaults

    @property
    def layout(self) -> _layouts.Layout:
        """Internal API: how this optimizer's funcopt state maps to ``optimizer.state``."""
        return self._layout

    def group_config(self, group) -> dict:
        """Internal API: a param group's hyperparameters as ``optimizer_fn`` keywords
        (``learning_rate`` too)."""
        config = {n: group[n] for n in self._names}
        config["learning_rate"] = group["lr"]
        return config

    def _checked_config(self, group, where):
        try:
            config = self.group_config(group)
        except KeyError as err:
            raise ValueError(f"{where} lacks the hyperparameter {err}.") from None
        if isinstance(config["learning_rate"], torch.Tensor):  # torch allows a tensor lr
            config["learning_rate"] = float(config["learning_rate"])
        mask = config.get("mask")
        if mask is not None and not isinstance(mask, bool):
            raise TypeError(f"{where}: mask={mask!r} is invalid: in a param group it is None "
                            "(the optimizer's default) or a bool for all of the group's "
                            "parameters (e.g. mask=False: no weight decay, no GaLore target).")
        try:
            self._optimizer_fn(**config)  # its construction-time checks, with names and values
            _layouts.static_key({k: v for k, v in config.items() if k != "learning_rate"})
        except (TypeError, ValueError) as err:
            message = str(err)
            for name, alias in self._aliases.items():
                message = re.sub(rf"(?<![\w\[]){re.escape(name)}\b", alias, message)
            raise type(err)(f"{where}: {message}") from None
        return config

    def add_param_group(self, param_group):
        """Adds a param group (torch's method), then checks its parameters and
        hyperparameters, raising ValueError/TypeError naming the bad one."""
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        try:
            for i, p in enumerate(group["params"]):
                _dlpack.check_param(p, f"param group {index}, parameter {i}")
            config = self._checked_config(group, f"param group {index}")
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise
        if self._layout.group_keys:  # group-level state, as the reference keeps it
            for key, value in self._layout.initial_group(self._layout.rule(config)).items():
                group.setdefault(key, value)

    # -- stepping --------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step; ``closure`` (re-evaluating the model and returning
        the loss) is called with gradients enabled, as torch's optimizers do."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            self._step_group(group, f"param group {index}")
        return loss

    def _step_group(self, group, where):
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients.")
        config = self._checked_config(group, where)
        lr = config["learning_rate"]
        lr = None if lr is None else np.float32(float(lr))
        static = _layouts.static_key({k: v for k, v in config.items() if k != "learning_rate"})
        steps = [self._step_of(p) for p in params]
        # float32 CPU parameters, in place in one C call
        taken = _direct.step(self, group, params, steps, static, lr)
        rest = [i for i, done in enumerate(taken) if not done]
        if rest:
            self._step_jax(group, [params[i] for i in rest], [steps[i] for i in rest], config,
                           static, lr)

    def direct_stepped(self, stepped):
        """Internal API (``_direct``): each ``(p, step)`` of ``stepped``: ``p`` and its state
        tensors were stepped in place from ``step``; the state is torch's own memory now."""
        torch.autograd.graph.increment_version([p for p, _ in stepped])  # autograd sees it
        state = self.state
        for p, step in stepped:
            state[p]["step"] = min(step + 1, 2**31 - 1)
        if self._jax:
            for p, _ in stepped:
                self._jax.pop(p, None)
                self._scratch.pop(p, None)

    def _step_jax(self, group, params, steps, config, static, lr):
        """The jitted update of ``params`` (a group's, or those the kernel did not take)."""
        views = [self._param_view(p) for p in params]
        states, scratch = self._inputs(params, steps, config, static, lr is None)
        fn = _update.compiled_update(self._optimizer_fn, self._layout, static, lr is None)
        inputs = views, [_dlpack.to_jax(p.grad) for p in params]
        group_in = self._layout.group_arrays(group)  # host-side (float64 -> [hi, lo] pairs)
        # Drop our torch views of the state so that JAX may donate (reuse) its buffers.
        for p, step, state in zip(params, steps, states, strict=True):
            if step:
                self.state[p].update(dict.fromkeys(state))
        try:
            new_params, new_states, new_group = fn(
                lr, np.asarray(steps, np.int32), *inputs, scratch, states, group_in)
            jax.block_until_ready((new_params, new_states))
        except Exception:
            for p, step, state in zip(params, steps, states, strict=True):
                if step and not any(a.is_deleted() for a in state.values()):
                    self._install(p, step, state)
            raise
        del inputs, views  # JAX is done reading the torch parameters and gradients
        _direct.write(params, new_params)
        for p, step, new_p, new_state in zip(params, steps, new_params, new_states, strict=True):
            self._scratch[p] = new_p
            self._install(p, min(step + 1, 2**31 - 1), new_state)
        group.update(self._layout.torch_group(new_group))  # as the reference keeps them

    def _inputs(self, params, steps, config, static, lr_is_none):
        """The JAX state (one dict per parameter) and scratch arrays of a group's step: the
        current ones, zeros (from a small computation of their own) where missing."""
        states = [self._jax_state(p, self.state[p], config) if step else None
                  for p, step in zip(params, steps, strict=True)]
        scratch = [self._scratch.pop(p, None) for p in params]
        scratch = [s if _reusable(s, p) else None for s, p in zip(scratch, params, strict=True)]
        fresh = [i for i, (s, z) in enumerate(zip(states, scratch, strict=True))
                 if s is None or z is None]
        if fresh:
            init = _update.compiled_init(self._optimizer_fn, self._layout, static, lr_is_none)
            zero_states, zeros = init([_dlpack.to_jax(params[i]) for i in fresh])
            for i, zero_state, zero in zip(fresh, zero_states, zeros, strict=True):
                states[i] = zero_state if states[i] is None else states[i]
                scratch[i] = zero if scratch[i] is None else scratch[i]
        return states, scratch

    # -- state ----------------------------------------------------------------------------

    def _init_caches(self):
        self._jax = {}  # param -> {key: jax.Array}: the arrays behind optimizer.state[param]
        self._scratch = {}  # param -> last new-parameter array (donated at the next step)
        self._views = {}  # param -> JAX array sharing the parameter's memory

    def _param_view(self, p):
        """A JAX array sharing ``p``'s memory, made once: it reads whatever ``p`` holds when
        a computation runs (in-place torch writes included), and is remade only if ``p``'s
        memory moved (``p.data = ...``). DLPack imports cost far more than this check."""
        view = self._views.get(p)
        if view is None or view.unsafe_buffer_pointer() != p.data_ptr() or view.shape != tuple(
                p.shape) or view.dtype != _dlpack.jax_dtype(p.dtype) or not p.is_contiguous():
            view = _dlpack.to_jax(p)
            if view.unsafe_buffer_pointer() == p.data_ptr():  # not a copy: reusable
                self._views[p] = view
            else:
                self._views.pop(p, None)
        return view

    def _install(self, p, step, arrays):
        """Makes ``arrays`` (JAX-owned) the state of ``p``; ``optimizer.state[p]`` gets views."""
        state = self.state[p]
        state["step"] = step
        for key in sorted(arrays, key=self._layout.order.index):  # the reference's order
            state[key] = _dlpack.to_torch(arrays[key])
        self._jax[p] = arrays

    def _expected(self, p, config) -> tuple[_layouts.Entry, ...]:
        """The tensor entries of ``p``'s state (key, shape, dtype), in the reference's order."""
        return self._layout.entries(config, p.shape, _dlpack.jax_dtype(p.dtype))

    def _jax_state(self, p, state, config):
        """The JAX arrays of ``p``'s state: ours where ``optimizer.state[p]`` still holds our
        views, fresh JAX-owned copies of whatever replaced them."""
        ours = self._jax.get(p, {})
        arrays = {}
        for entry in self._expected(p, config):
            key = entry.key
            value = state.get(key)
            array = ours.get(key)
            if (
                isinstance(value, torch.Tensor) and array is not None
                and not array.is_deleted() and tuple(value.shape) == array.shape
                and _dlpack.jax_dtype(value.dtype) == array.dtype
                and value.data_ptr() == array.unsafe_buffer_pointer()
            ):
                arrays[key] = array
            else:
                arrays[key] = self._imported(p, entry, value)
        return arrays

    def _imported(self, p, entry, value):
        key, shape = entry.key, entry.shape
        if value is None:
            raise ValueError(
                f"the state of a parameter of shape {tuple(p.shape)} has no {key!r}: it was not "
                f"made by {self._layout.name}'s reference optimizer. Reset it with "
                "optimizer.state.pop(param) or load a matching state dict."
            )
        if np.shape(value) != shape:
            raise ValueError(
                f"state {key!r} of a parameter of shape {tuple(p.shape)} has shape "
                f"{tuple(np.shape(value))}; {self._layout.name} needs {shape}."
            )
        return _dlpack.to_jax_owned(value, entry.dtype)

    def set_param_state(self, p, step, values, group):
        """Internal API: replaces the state of parameter ``p`` of ``group`` (``values``:
        tensors, arrays or numbers by torch key); a ``step`` of 0 removes it, as a parameter
        torch has not stepped has none."""
        self.state.pop(p, None)
        self._jax.pop(p, None)
        if step:
            arrays = {e.key: self._imported(p, e, values.get(e.key))
                      for e in self._expected(p, self.group_config(group))}
            self._install(p, int(step), arrays)

    def _step_of(self, p) -> int:
        state = self.state[p]
        if not state:
            return 0
        if "step" not in state:
            raise ValueError(
                f"the state of a parameter of shape {tuple(p.shape)} has no 'step': it was not "
                f"made by {self._layout.name}'s reference optimizer. Reset it with "
                "optimizer.state.pop(param) or load a matching state dict."
            )
        return _layouts.step_number(state["step"])

    def state_dict(self):
        """torch's ``state_dict()``, with copies of the state tensors (not views of JAX
        memory that the next step would stop updating)."""
        sd = super().state_dict()
        sd["state"] = {
            i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            for i, s in sd["state"].items()
        }
        return sd

    def load_state_dict(self, state_dict):
        """torch's ``load_state_dict()`` (parameters matched by position, group
        hyperparameters replaced by the saved ones), accepting the reference class's state
        dicts (``step`` an int or a tensor). The state is copied into JAX memory in this
        optimizer's dtypes, from the saved values (not torch's dtype-cast ones). Missing group
        hyperparameters take this optimizer's defaults; a state entry that does not fit (a
        missing or foreign key, a wrong shape) raises ValueError before anything changes."""
        state_dict = self._layout.loadable(state_dict, self.param_groups)
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        placed = []  # (saved state, param, group index) for each saved entry
        if len(saved_groups) == len(self.param_groups):
            pairs = zip(saved_groups, self.param_groups, strict=True)
            for index, (saved, group) in enumerate(pairs):
                if len(saved["params"]) != len(group["params"]):
                    break
                merged = {**self.defaults, **saved}
                try:
                    config = self._checked_config(merged, f"saved param group {index}")
                except (TypeError, ValueError) as err:
                    raise type(err)(
                        f"{err} Was the state dict saved by another optimizer than "
                        f"{type(self).__name__} ({self._layout.name})?"
                    ) from None
                for i, p in zip(saved["params"], group["params"], strict=True):
                    if i in saved_state:
                        self._check_saved(saved_state[i], p, config, i)
                        placed.append((saved_state[i], p, index))
        super().load_state_dict(state_dict)  # raises for mismatched groups
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self._jax.clear()
        for saved, p, index in placed:
            step = _layouts.step_of(saved)
            self.set_param_state(p, step, saved, self.param_groups[index])

    def _check_saved(self, saved, p, config, index):
        expected = {e.key for e in self._expected(p, config)}
        keys = set(saved) - {"step"}
        if keys != expected:
            raise ValueError(
                f"saved state of parameter {index} has entries {sorted(keys)}, but "
                f"{type(self).__name__} ({self._layout.name}) keeps {sorted(expected)} for a "
                f"parameter of shape {tuple(p.shape)}: the state dict comes from a different "
                "optimizer or configuration."
            )
        for key, shape, _ in self._expected(p, config):
            if tuple(np.shape(saved[key])) != shape:
                raise ValueError(
                    f"saved state {key!r} of parameter {index} has shape "
                    f"{tuple(np.shape(saved[key]))}, but the parameter of shape "
                    f"{tuple(p.shape)} needs {shape}."
                )

    def __getstate__(self):
        state = super().__getstate__()
        state["_optimizer_fn"] = self._optimizer_fn
        state["_names"] = getattr(self, "_names", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_layout" not in self.__dict__:
            self._layout = _registry.layout_of(self._optimizer_fn)
        if "_jax" not in self.__dict__:
            self._init_caches()


def _reusable(array, p) -> bool:
    return (array is not None and not array.is_deleted() and array.shape == tuple(p.shape)
            and array.dtype == _dlpack.jax_dtype(p.dtype))
