"""``grokadamw.GrokAdamW`` (package ``grokadamw`` 0.1.2) as an optax transformation."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcopt import _checks, _core, _step_table
from funcopt._bnb32 import complement, lr_scalars
from funcopt._numerics import f32, is_static, one_minus_power, rounder, unfused

__all__ = ["GrokAdamWState", "grokadamw", "adam_step_size", "clip_leaf"]


class GrokAdamWState(NamedTuple):
    """State of :func:`grokadamw`, field for field GrokAdamW's per-parameter state (which the
    reference keeps in ``group["state"][p]``, not in ``optimizer.state``).

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule).
      step: pytree like the params of int32 scalars, the reference's ``state["step"]``.
      exp_avg, exp_avg_sq: Adam's moments, in each parameter's dtype.
      grok_ema: the gradient's EMA that amplifies slow components, in the parameter's dtype.

    >>> import jax.numpy as jnp, funcopt
    >>> state = funcopt.grokadamw().init({"w": jnp.zeros((2, 3))})
    >>> state.grok_ema["w"].shape, int(state.step["w"])
    ((2, 3), 0)
    """

    count: jax.Array
    step: Any
    exp_avg: Any
    exp_avg_sq: Any
    grok_ema: Any


def grokadamw(
    learning_rate=1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    alpha_init: float = 0.98,
    lamb: float = 2.0,
    gamma: float = 0.1,
    grokking_signal=0.0,
    grokking_signal_decay_rate: float = 0.1,
    gradient_clipping: float = 1.0,
    mask=None,
    layer_index=None,
) -> optax.GradientTransformation:
    r"""``grokadamw.GrokAdamW``: AdamW on a gradient amplified by its own slow EMA.

    For the :math:`i`-th parameter of its param group, with gradient :math:`g`, step
    :math:`t`, learning rate :math:`\eta` and grokking signal :math:`s`:

    .. math::
        g &\leftarrow g \cdot \min\!\big(1, c / (\lVert g\rVert_2 + 10^{-6})\big)
            \quad (\text{per tensor, when } c > 0) \\
        \alpha &= \alpha_0\, e^{-r s}, \quad
        e \leftarrow \alpha e + (1 - \alpha) g, \quad \tilde g = g + \lambda_{\text{amp}} e \\
        m &\leftarrow \beta_{1,i} m + (1 - \beta_{1,i}) \tilde g, \quad
        \beta_{1,i} = \beta_1 (1 - \gamma)^i, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) \tilde g^2 \\
        p &\leftarrow p\,(1 - \eta\lambda) - \eta \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t}
            \frac{m}{\sqrt v + \epsilon}

    (the bias correction uses :math:`\beta_1`, not :math:`\beta_{1,i}`, as the reference does).
    The clipping is ``torch.nn.utils.clip_grad_norm_`` on each tensor alone (``c`` is
    ``gradient_clipping``; 0 or less turns it off). Arithmetic follows the reference op by op
    in float32 (in the parameter's dtype for bf16, whose state is bf16 as in torch). The one
    step that is not bitwise is the norm: torch sums the squares in its own order, XLA in
    another, so the clipping factor can differ by an ulp (about 1e-7 relative, measured).

    **The grokking signal as the Trainer sets it up.** ``optim="grokadamw"`` passes no
    ``grokking_signal_fns``, so the reference falls back to its default signal, built from the
    param group's ``train_loss``/``eval_loss`` keys; the Trainer never sets them, so
    :math:`s = 0` and :math:`\alpha = \alpha_0` at every step. That is the default here
    (``grokking_signal=0.0``). A signal (the reference's ``grokking_signal_fns`` average, or
    its default ``max(0, eval - train) / max(eval, train)``) is a JAX value here: a float, a
    schedule ``count -> s``, or a traced scalar set each step through
    ``optax.inject_hyperparams`` (``state.hyperparams["grokking_signal"] = s``). A static
    float computes :math:`\alpha` in float64 like the reference; a traced one in float32
    (``1 - alpha`` via ``expm1``, so it keeps its relative accuracy).

    **Which i.** The reference numbers the parameters with a gradient inside each param group
    from 0; the Trainer's groups are "decays" and "does not decay". Here ``i`` is a leaf's
    position (in ``jax.tree.leaves`` order) among the leaves with the same ``mask`` value, so
    a mask built like the Trainer's (``funcopt.trainer_decay_mask``) numbers the leaves as
    the Trainer's groups do when the pytree lists them in ``named_parameters`` order;
    ``layer_index`` (a pytree of ints like the params, or a callable ``params -> it``) sets
    ``i`` explicitly otherwise.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      b1, b2: the betas, in [0, 1) (static Python floats for exact parity).
      eps: added to :math:`\sqrt v`, >= 0.
      weight_decay: >= 0; the parameter is multiplied by ``1 - lr * weight_decay`` before the
        step, where ``mask`` is True (the class's default is 1e-2).
      alpha_init: :math:`\alpha_0`, the EMA's decay, in [0, 1].
      lamb: the amplification :math:`\lambda_{\text{amp}}` of the EMA.
      gamma: the per-layer decay of :math:`\beta_1`.
      grokking_signal: :math:`s` (see above); None acts as 0 (the reference with no signal).
      grokking_signal_decay_rate: :math:`r`.
      gradient_clipping: the per-tensor max norm :math:`c`; <= 0 disables clipping.
      mask: optional pytree of bools like the params (or callable): the leaves that decay;
        it also splits the leaves into the Trainer's two param groups (see "Which i").
      layer_index: optional explicit :math:`i` per leaf (pytree of ints >= 0 or callable).

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.grokadamw(learning_rate=0.1, weight_decay=0.0)
      >>> w = jnp.array([1.0, -2.0])
      >>> updates, state = opt.update(jnp.array([0.3, -0.4]), opt.init(w), w)
      >>> print(optax.apply_updates(w, updates).round(5))  # Adam's first step: -lr * sign(g)
      [ 0.9 -1.9]
    """
    return _core.transformation(GrokAdamW.validated(
        learning_rate, b1, b2, eps, weight_decay, alpha_init, lamb, gamma, grokking_signal,
        grokking_signal_decay_rate, gradient_clipping, mask, layer_index))


@functools.lru_cache(maxsize=64)
def step_size_table(lr: float, b1: float, b2: float) -> _step_table.StepTable:
    """``float32(lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t))``, Adam's step size as the
    reference forms it in Python float64, for every step ``t`` until it stays ``lr`` (checked
    up to ``_step_table.CAP`` steps: the ratio need not approach 1 monotonically, and can
    equal it early, e.g. b1=0.9, b2=0.99 at t=1)."""
    fn = lambda t: lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)  # noqa: E731
    target, last, t = np.float32(lr), 0, 1
    while t <= _step_table.CAP and max(abs(b1), abs(b2)) ** t >= 2.0 ** -60:
        if np.float32(fn(t)) != target:
            last = t
        t += 1
    if t > _step_table.CAP:  # not settled: cut the table, the float32 formula takes over
        last = _step_table.CAP + 1
    return _step_table.over(fn, last, lr)


def adam_step_size(learning_rate, lr, b1, b2, t):
    """Adam's bias-corrected step size at the int32 step ``t``: exact (tabulated) for static
    hyperparameters, a float32 formula otherwise (``lr``: the float32 learning rate)."""
    formula = lambda t: lr * jnp.sqrt(one_minus_power(b2, t)) / one_minus_power(b1, t)  # noqa: E731
    if not (is_static(learning_rate) and is_static(b1) and is_static(b2)):
        return formula(t)
    return _step_table.read(step_size_table(float(learning_rate), float(b1), float(b2)), t,
                            formula)


def clip_leaf(g, max_norm, rnd):
    """``torch.nn.utils.clip_grad_norm_(p, max_norm)`` on one float32 gradient (``rnd`` rounds
    to the gradient's dtype): ``g * min(1, (1 / (|g| + 1e-6)) * max_norm)``. torch divides a
    Python number by a tensor as ``reciprocal() * number``, which rounds twice; the norm of a
    one-element stack is the norm itself. Not applied when ``max_norm <= 0``."""
    norm = rnd(jnp.sqrt(jnp.sum(jnp.square(g))))
    coef = rnd(rnd(1 / rnd(norm + f32(1e-6))) * jnp.asarray(max_norm, f32))
    clipped = rnd(g * jnp.minimum(coef, f32(1.0)))
    if is_static(max_norm):
        return clipped if max_norm > 0 else g
    return jnp.where(jnp.asarray(max_norm) > 0, clipped, g)


@dataclasses.dataclass(frozen=True)
class GrokAdamW(_core.Rule):
    """grokadamw's validated hyperparameters and leaf functions."""

    State: ClassVar[type] = GrokAdamWState
    learning_rate: Any
    b1: Any
    b2: Any
    eps: Any
    weight_decay: Any
    alpha_init: Any
    lamb: Any
    gamma: Any
    grokking_signal: Any
    grokking_signal_decay_rate: Any
    gradient_clipping: Any
    mask: Any
    layer_index: Any

    @classmethod
    def validated(cls, learning_rate, b1, b2, eps, weight_decay, alpha_init, lamb, gamma,
                  grokking_signal, grokking_signal_decay_rate, gradient_clipping, mask,
                  layer_index) -> GrokAdamW:
        _checks.learning_rate("learning_rate", learning_rate)
        _checks.number("eps", eps, low=0.0)
        _checks.number("b1", b1, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("b2", b2, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("weight_decay", weight_decay, low=0.0)
        _checks.number("alpha_init", alpha_init, low=0.0, high=1.0, allowed="in [0.0, 1.0]")
        for name, value in (("lamb", lamb), ("gamma", gamma),
                            ("grokking_signal_decay_rate", grokking_signal_decay_rate),
                            ("gradient_clipping", gradient_clipping)):
            _checks.number(name, value)
        if grokking_signal is None:
            grokking_signal = 0.0
        if not callable(grokking_signal):
            _checks.number("grokking_signal", grokking_signal)
        return cls(learning_rate, b1, b2, eps, weight_decay, alpha_init, lamb, gamma,
                   grokking_signal, grokking_signal_decay_rate, gradient_clipping, mask,
                   layer_index)

    def leaf_kinds(self, tree) -> list:
        """Each leaf's :math:`i`: ``layer_index``, or its position among the leaves that share
        its ``mask`` value (the Trainer's param groups)."""
        treedef = jax.tree.structure(tree)
        if self.layer_index is not None:
            index = self.layer_index(tree) if callable(self.layer_index) else self.layer_index
            flat = treedef.flatten_up_to(index)
            for i in flat:
                _checks.integer("layer_index", i, low=0)
            return [int(i) for i in flat]
        groups = ([True] * treedef.num_leaves if self.mask is None
                  else _core.resolve_mask(self.mask, tree, treedef))
        seen = {True: 0, False: 0}
        kinds = []
        for group in groups:
            kinds.append(seen[group])
            seen[group] += 1
        return kinds

    def scalars(self, count) -> tuple:
        """``(lr, 1 - lr * weight_decay, alpha, 1 - alpha)``, float32."""
        neg_lr, keep = lr_scalars(self.learning_rate, self.weight_decay, count)
        s = self.grokking_signal(count) if callable(self.grokking_signal) else self.grokking_signal
        a0, r = self.alpha_init, self.grokking_signal_decay_rate
        if is_static(s) and is_static(a0) and is_static(r):
            alpha = a0 * math.exp(-r * s)  # the reference's float64 arithmetic
            return -neg_lr, keep, f32(alpha), f32(1 - alpha)
        x = -jnp.asarray(r, f32) * jnp.asarray(s, f32)
        a0_32, one_minus_a0 = complement(a0)
        # 1 - a0 e^x = (1 - a0) - a0 (e^x - 1): no cancellation when alpha is close to 1.
        return -neg_lr, keep, a0_32 * jnp.exp(x), one_minus_a0 - a0_32 * jnp.expm1(x)

    def init_leaf(self, p, kind) -> tuple:
        """``(step, exp_avg, exp_avg_sq, grok_ema)``: state in the parameter's dtype."""
        return jnp.zeros([], jnp.int32), jnp.zeros_like(p), jnp.zeros_like(p), jnp.zeros_like(p)

    def layer_beta1(self, i: int) -> tuple:
        """``(b1 (1 - gamma)**i, 1 - that)`` as float32 multipliers (float64 when static)."""
        if is_static(self.b1) and is_static(self.gamma):
            return complement(self.b1 * (1 - self.gamma) ** i)
        b = jnp.asarray(self.b1, f32) * (1 - jnp.asarray(self.gamma, f32)) ** i
        return b, 1 - b

    def update_leaf(self, scalars, g, p, fields, decays, kind):
        """One leaf's ``(update, (step, exp_avg, exp_avg_sq, grok_ema))``."""
        # torch op by op: x.mul_(b) rounds b*x; x.add_(y, alpha=a) is fma(a, y, x);
        # x.addcmul_(y, y, value=c) is fma(c*y, y, x); ``lamb * e`` is its own rounded product.
        lr, keep, alpha, one_minus_alpha = scalars
        t, m, v, e = fields
        dtype = m.dtype
        rnd = rounder(dtype)
        t = optax.safe_increment(t)
        g = clip_leaf(g.astype(f32), self.gradient_clipping, rnd)
        e = rnd(rnd(one_minus_alpha) * g + rnd(unfused(e.astype(f32) * alpha)))
        grok = rnd(g + unfused(rnd(e * jnp.asarray(self.lamb, f32))))
        b1_i, one_minus_b1_i = self.layer_beta1(kind)
        b2, one_minus_b2 = complement(self.b2)
        m = rnd(rnd(one_minus_b1_i) * grok + rnd(unfused(m.astype(f32) * b1_i)))
        v = rnd((one_minus_b2 * grok) * grok + rnd(unfused(v.astype(f32) * b2)))
        step_size = adam_step_size(self.learning_rate, lr, self.b1, self.b2, t)
        denom = rnd(rnd(jnp.sqrt(v)) + f32(self.eps))
        if is_static(self.eps) and self.eps == 0:
            denom = unfused(denom)  # keeps the true division (XLA would use rsqrt)
        u = (-step_size * m) / denom
        if p is not None and (decays or dtype != f32):
            p32 = p.astype(f32)
            base = rnd(unfused(p32 * keep)) if decays else p32
            u = rnd(base + u) - p32
        return u.astype(dtype), (t, m.astype(dtype), v.astype(dtype), e.astype(dtype))
