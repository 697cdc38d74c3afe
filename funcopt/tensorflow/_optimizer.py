"""A tf_keras optimizer that applies a funcopt (optax) transformation to TF variables."""

from __future__ import annotations

import jax
import optax

from funcopt.tensorflow._tf import tf, tf_keras, to_jax, to_tf
from funcopt.tensorflow._variables import as_variable_list

__all__ = ["Optimizer"]

_NO_LR = (
    "funcopt.tensorflow.Optimizer has no Keras learning rate: the learning rate (a number or "
    "a schedule) is part of the funcopt transformation. Build the transformation with the "
    "schedule you want instead of setting or reading optimizer.learning_rate."
)


def _step(transformation):
    def step(params, grads, state):
        updates, state = transformation.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step)


class Optimizer(tf_keras.optimizers.Optimizer):
    """A tf_keras optimizer whose ``apply_gradients`` applies a funcopt transformation.

    ``transformation`` is any optax ``GradientTransformation`` (e.g.
    :func:`funcopt.adam_weight_decay` or :func:`funcopt.create_optimizer`'s). The variables
    form the params pytree ``{var.name: value}``, a flat dict keyed by the Keras variable
    names (``'dense/kernel:0'``), so the parameter names that masks and
    ``include_in_weight_decay``/``exclude_from_weight_decay`` regexes see are exactly the
    names ``transformers.AdamWeightDecay`` matches (two variables with the same name are a
    ``ValueError``). Each ``apply_gradients`` call imports the variables, gradients and state
    zero-copy (DLPack), runs ``update`` and ``optax.apply_updates`` jitted, writes the results
    back, applies the variables' Keras constraints and increments ``iterations``: one
    transformation step per call, whatever the transformation counts.

    The state lives in the optimizer's (non-trainable) ``tf.Variable`` s, one per state leaf,
    so it checkpoints with the model (``tf.train.Checkpoint``, ``model.save_weights``);
    :attr:`state` reads or writes it as the funcopt pytree. It is created by ``build`` (or the
    first ``apply_gradients``) with ``transformation.init(params)``; later calls must pass the
    same variables, all with gradients (a funcopt transformation updates its whole pytree).

    ``model.compile(optimizer=Optimizer(...))`` + ``model.fit`` work in graph mode (the
    default): inside ``tf.function`` the JAX step runs through ``tf.py_function``, ordered
    after the gradients and with the variables' reads. Hence the limits: no
    ``jit_compile=True`` model, no TPU, no multi-replica ``tf.distribute`` strategy, and the
    optimizer's config cannot be deserialized (a Python transformation is not data). The
    learning rate belongs to the transformation: ``optimizer.learning_rate`` is an error.

    Example:
      >>> import tensorflow as tf, funcopt, funcopt.tensorflow
      >>> w = tf.Variable([1.0, 2.0], name="w")
      >>> opt = funcopt.tensorflow.Optimizer(funcopt.adam_weight_decay(0.1))
      >>> _ = opt.apply_gradients([(tf.constant([0.5, -0.5]), w)])
      >>> [round(x, 4) for x in w.numpy().tolist()], int(opt.iterations)
      ([0.9, 2.1], 1)
      >>> list(opt.state.m)
      ['w:0']
    """

    def __init__(self, transformation, name: str = "funcopt"):
        if not (callable(getattr(transformation, "init", None))
                and callable(getattr(transformation, "update", None))):
            raise TypeError(
                "transformation must be an optax GradientTransformation (an (init, update) "
                f"pair such as funcopt.adam_weight_decay(...)), got {transformation!r}."
            )
        super().__init__(name=name, jit_compile=False)
        self._transformation = self._no_dependency(transformation)
        self._jax_step = self._no_dependency(_step(transformation))
        self._model_vars = self._no_dependency([])
        self._names = self._no_dependency([])
        self._treedef = None
        self._state_vars = []

    @property
    def transformation(self) -> optax.GradientTransformation:
        """The funcopt transformation this optimizer applies."""
        return self._transformation

    def __setattr__(self, name, value):
        if name == "state":  # a pytree, not a Keras dependency: keep tracking from wrapping it
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def learning_rate(self):
        raise AttributeError(_NO_LR)

    @learning_rate.setter
    def learning_rate(self, value):
        raise AttributeError(_NO_LR)

    @tf.autograph.experimental.do_not_convert
    def build(self, var_list):
        """Creates the state for ``var_list`` with ``transformation.init`` (once)."""
        if getattr(self, "_built", False):
            return
        variables = as_variable_list(list(var_list))
        names = [v.name for v in variables]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"Variables share the names {duplicates}: the parameter names that masks see "
                "are the Keras variable names, so they must be unique (name your layers)."
            )
        super().build(variables)
        self._model_vars.extend(variables)
        self._names.extend(names)
        state = self._transformation.init(self._params())
        leaves, self._treedef = jax.tree.flatten(state)
        with tf.init_scope():
            for i, leaf in enumerate(leaves):
                variable = tf.Variable(to_tf(jax.numpy.array(leaf, copy=True)),
                                       name=f"state_{i}", trainable=False)
                self._state_vars.append(variable)
                self._variables.append(variable)
        self._built = True

    def _params(self) -> dict:
        return {name: to_jax(v) for name, v in zip(self._names, self._model_vars, strict=True)}

    @property
    def state(self):
        """The funcopt state (a snapshot, as JAX arrays); assign a state of the same structure,
        shapes and dtypes to replace it."""
        if self._treedef is None:
            raise ValueError("The optimizer is not built yet: it has no state.")
        return jax.tree_util.tree_unflatten(self._treedef, [to_jax(v) for v in self._state_vars])

    @state.setter
    def state(self, state):
        if self._treedef is None:
            raise ValueError("The optimizer is not built yet: call build(variables) first.")
        leaves, treedef = jax.tree.flatten(state)
        if treedef != self._treedef:
            raise ValueError(f"The state's structure {treedef} is not the optimizer's "
                             f"{self._treedef}.")
        for variable, leaf in zip(self._state_vars, leaves, strict=True):
            leaf = jax.numpy.asarray(leaf)
            if tuple(leaf.shape) != tuple(variable.shape) or leaf.dtype != variable.dtype:
                raise ValueError(
                    f"State leaf {variable.name!r} is {variable.dtype.name}{tuple(variable.shape)}"
                    f", got {leaf.dtype}{tuple(leaf.shape)}."
                )
        for variable, leaf in zip(self._state_vars, leaves, strict=True):
            variable.assign(to_tf(jax.numpy.array(leaf, copy=True)))

    def _ordered_grads(self, pairs) -> list:
        if len(pairs) != len(self._model_vars):
            raise ValueError(
                f"apply_gradients got {len(pairs)} variables but this optimizer was built for "
                f"{len(self._model_vars)} ({self._names}): a funcopt transformation updates its "
                "whole pytree at once, so pass gradients for all of them, every call."
            )
        grads = [None] * len(pairs)
        for grad, var in pairs:
            i = self._index_dict.get(self._var_key(var))
            if i is None:
                raise ValueError(
                    f"Variable {var.name!r} is not one this optimizer was built for "
                    f"({self._names}); use one optimizer per set of variables."
                )
            grads[i] = tf.convert_to_tensor(grad)
        return grads

    # No autograph: nothing here branches on tensors, and converting the JAX code that
    # build() reaches would take a minute.
    @tf.autograph.experimental.do_not_convert
    def apply_gradients(self, grads_and_vars, name=None, **kwargs):
        """Applies one step of the transformation; returns ``iterations``."""
        pairs = list(grads_and_vars)
        if not pairs:
            return self._iterations
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            raise NotImplementedError(
                "funcopt.tensorflow.Optimizer runs on one replica: multi-replica "
                "tf.distribute strategies are not supported."
            )
        no_grad = [var.name for grad, var in pairs if grad is None]
        if no_grad:
            raise ValueError(
                f"No gradient for {no_grad}: a funcopt transformation updates every parameter "
                "at once, so every variable needs a gradient (freeze unused variables with "
                "trainable=False, or pass zeros deliberately)."
            )
        with tf.init_scope():
            self.build([var for _, var in pairs])
        grads = self._ordered_grads(pairs)
        if tf.executing_eagerly():
            self._apply(grads)
        else:
            # The resource handles make tf.function order the step with the variables' reads.
            handles = [v.handle for v in (*self._model_vars, *self._state_vars, self._iterations)]
            n = len(grads)
            tf.py_function(lambda *args: self._apply(args[:n]), grads + handles, Tout=[])
        return self._iterations

    def _apply(self, grads) -> list:
        names = self._names
        state = self.state
        new_params, new_state = self._jax_step(
            self._params(), dict(zip(names, (to_jax(g) for g in grads), strict=True)), state
        )
        for name, variable in zip(names, self._model_vars, strict=True):
            variable.assign(to_tf(new_params[name]))
            if variable.constraint is not None:
                variable.assign(variable.constraint(variable))
        for variable, leaf in zip(self._state_vars, self._treedef.flatten_up_to(new_state),
                                  strict=True):
            variable.assign(to_tf(leaf))
        self._iterations.assign_add(1)
        return []

    def update_step(self, gradient, variable):  # pragma: no cover - never called
        raise NotImplementedError("funcopt.tensorflow.Optimizer updates in apply_gradients.")

    @classmethod
    def from_config(cls, config, custom_objects=None):
        raise NotImplementedError(
            "A funcopt.tensorflow.Optimizer cannot be rebuilt from a config: its funcopt "
            "transformation is Python code, not data. Build Optimizer(transformation) again "
            "and restore its variables from a checkpoint."
        )
