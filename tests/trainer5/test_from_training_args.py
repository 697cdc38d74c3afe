"""``funcopt.from_training_args`` end to end against the real transformers 5.x Trainer.

A small torch model (Linear -> LayerNorm -> tanh -> Linear, MSE) is trained by the Trainer for
>= 30 optimizer steps; a subclass records, for every micro-batch, its inputs and the gradient
its backward produced (then restores the accumulated gradient exactly as torch accumulates it),
and the parameters after every optimizer step. Two comparisons per configuration:

* fed the gradients the Trainer used, funcopt's parameters follow the Trainer's to <= 1e-6
  (max |difference| over all parameters, relative to the largest parameter, as
  ``tests/torch_model.rel_diff`` measures);
* a JAX twin (Flax naming: ``Dense_0``/``LayerNorm_0``/``Dense_1``, kernels transposed) trained
  on the same batches with its own gradients gives a loss curve that agrees with the Trainer's
  to a few times the forward pass's own float32 noise (measured: torch float32 vs float64
  losses on the same parameters).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import reference

import funcopt

torch = reference("torch")
transformers = reference("transformers")

STEPS = 32  # optimizer steps
N, D_IN, D_H = 16, 6, 8  # per-micro-batch size and widths


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(D_IN, D_H), torch.nn.LayerNorm(D_H),
                                       torch.nn.Tanh(), torch.nn.Linear(D_H, 1))

    def forward(self, x, labels=None):
        out = self.net(x)
        loss = torch.mean((out - labels) ** 2)
        return {"loss": loss, "logits": out}


class Data(torch.utils.data.Dataset):
    def __init__(self, size, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, D_IN, generator=g)
        self.y = self.x[:, :1] * 0.7 - self.x[:, 1:2] ** 2 + 0.1 * torch.randn(size, 1,
                                                                                generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


# torch parameter name -> (pytree path, transpose?)
TWIN = {
    "net.0.weight": (("Dense_0", "kernel"), True), "net.0.bias": (("Dense_0", "bias"), False),
    "net.1.weight": (("LayerNorm_0", "scale"), False),
    "net.1.bias": (("LayerNorm_0", "bias"), False),
    "net.3.weight": (("Dense_1", "kernel"), True), "net.3.bias": (("Dense_1", "bias"), False),
}


def to_tree(named):
    tree = {}
    for name, value in named.items():
        (module, leaf), transpose = TWIN[name]
        value = np.asarray(value, np.float32)
        tree.setdefault(module, {})[leaf] = jnp.asarray(value.T if transpose else value)
    return tree


def forward(params, x):
    row = lambda v: v[None, :]
    h = x @ params["Dense_0"]["kernel"] + row(params["Dense_0"]["bias"])
    mean = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.mean((h - mean) ** 2, axis=-1, keepdims=True)
    h = (h - mean) / jnp.sqrt(var + 1e-5) * row(params["LayerNorm_0"]["scale"]) \
        + row(params["LayerNorm_0"]["bias"])
    return jnp.tanh(h) @ params["Dense_1"]["kernel"] + row(params["Dense_1"]["bias"])


def mse(params, x, y):
    return jnp.mean((forward(params, x) - y) ** 2)


def run_trainer(tmp_path, **fields):
    """Trains with the real Trainer; returns (records, snapshots, args, initial params)."""

    class Recording(transformers.Trainer):
        records, snapshots = [], []

        def training_step(self, model, inputs, num_items_in_batch=None):
            params = list(model.parameters())
            before = [p.grad for p in params]
            for p in params:
                p.grad = None
            loss = super().training_step(model, inputs, num_items_in_batch)
            grads = [p.grad.detach().clone() for p in params]
            for p, acc in zip(params, before, strict=True):
                if acc is not None:  # what torch's AccumulateGrad does: acc += new
                    p.grad = acc.add_(p.grad)
            self.records.append(({k: v.clone() for k, v in inputs.items()}, grads))
            return loss

    class Snapshot(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            Recording.snapshots.append({n: p.detach().clone()
                                        for n, p in model.named_parameters()})

    torch.manual_seed(0)
    model = Net()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    k = fields.get("gradient_accumulation_steps", 1)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=N, max_steps=STEPS,
        use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no",
        seed=0, dataloader_drop_last=True, disable_tqdm=True, **fields)
    trainer = Recording(model=model, args=args, train_dataset=Data(N * k * STEPS),
                        callbacks=[Snapshot()])
    trainer.train()
    assert len(Recording.snapshots) == STEPS
    return Recording.records, Recording.snapshots, args, initial


CONFIGS = {
    "default": dict(learning_rate=1e-2),
    "adamw_torch_decay_cosine_ratio": dict(optim="adamw_torch", weight_decay=0.05,
                                           lr_scheduler_type="cosine", warmup_steps=0.2,
                                           learning_rate=1e-2),
    "fused_clip_every_step_accum": dict(weight_decay=0.01, max_grad_norm=0.05,
                                        gradient_accumulation_steps=2, learning_rate=2e-2,
                                        warmup_steps=4),
    "sgd_momentum_no_clip": dict(optim="sgd", optim_args="momentum=0.9,nesterov=True",
                                 max_grad_norm=0.0, learning_rate=0.05, weight_decay=0.01,
                                 lr_scheduler_type="constant_with_warmup", warmup_steps=3),
    "adagrad_poly_accum4": dict(optim="adagrad", learning_rate=0.05,
                                lr_scheduler_type="polynomial", warmup_steps=2,
                                lr_scheduler_kwargs={"power": 2.0},
                                gradient_accumulation_steps=4, max_grad_norm=0.5),
    "rmsprop_centered_wsd": dict(optim="rmsprop", optim_args="centered=true,momentum=0.5",
                                 learning_rate=2e-3, weight_decay=0.1,
                                 lr_scheduler_type="warmup_stable_decay", warmup_steps=0.1,
                                 lr_scheduler_kwargs={"num_decay_steps": 10}),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def trained(request, tmp_path_factory):
    fields = CONFIGS[request.param]
    return request.param, fields, run_trainer(tmp_path_factory.mktemp(request.param), **fields)


def test_fed_the_trainers_gradients_funcopt_follows_it(trained):
    name, fields, (records, snapshots, args, initial) = trained
    params = to_tree(initial)
    optimizer, _ = funcopt.from_training_args(args, params)
    k = fields.get("gradient_accumulation_steps", 1)
    state = optimizer.init(params)
    names = list(initial)

    @jax.jit
    def step(grads, state, params):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    worst = 0.0
    for i, (_, grads) in enumerate(records):
        # The Trainer's micro-batch gradient is of loss / k: funcopt takes the mean loss's.
        g = to_tree({n: t.numpy() * k for n, t in zip(names, grads, strict=True)})
        params, state = step(g, state, params)
        if (i + 1) % k == 0:
            expected = to_tree({n: t.numpy() for n, t in snapshots[i // k].items()})
            ours = np.concatenate([np.ravel(a) for a in jax.tree.leaves(params)])
            theirs = np.concatenate([np.ravel(b) for b in jax.tree.leaves(expected)])
            worst = max(worst, float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))))
    print(f"\n{name}: worst deviation from the Trainer's parameters {worst:.2e}")
    assert worst <= 1e-6, (name, worst)


def torch_losses(initial, records, snapshots, k, dtype):
    """The loss of each micro-batch at the parameters the Trainer had then, in ``dtype``."""
    model = Net().to(dtype)
    out = []
    for i, (inputs, _) in enumerate(records):
        state = initial if i < k else snapshots[i // k - 1]
        model.load_state_dict({n: v.to(dtype) for n, v in state.items()})
        with torch.no_grad():
            out.append(model(inputs["x"].to(dtype), inputs["labels"].to(dtype))["loss"].item())
    return np.array(out)


def test_loss_curves_agree_to_the_forward_noise(trained):
    name, fields, (records, snapshots, args, initial) = trained
    k = fields.get("gradient_accumulation_steps", 1)
    params = to_tree(initial)
    optimizer, _ = funcopt.from_training_args(args, params)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(mse)(params, x, y)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for inputs, _ in records:
        params, state, loss = step(params, state, jnp.asarray(inputs["x"].numpy()),
                                   jnp.asarray(inputs["labels"].numpy()))
        losses.append(float(loss))
    ours = np.array(losses)
    trainer32 = torch_losses(initial, records, snapshots, k, torch.float32)
    trainer64 = torch_losses(initial, records, snapshots, k, torch.float64)
    noise = float(np.max(np.abs(trainer32 - trainer64) / np.abs(trainer64)))
    gap = float(np.max(np.abs(ours - trainer32) / np.abs(trainer32)))
    print(f"\n{name}: loss curves differ by {gap:.2e} relative; the forward's own float32 "
          f"noise is {noise:.2e}; loss {trainer32[:4].mean():.4f} -> {trainer32[-4:].mean():.4f}")
    quarter = len(trainer32) // 4
    assert trainer32[-quarter:].mean() < trainer32[:quarter].mean()  # it trained
    assert gap <= max(20 * noise, 1e-6), (name, gap, noise)


def test_warmup_ratio_is_ceil_of_ratio_times_steps():
    args = transformers.TrainingArguments(output_dir="unused", warmup_steps=0.15,
                                          max_steps=30, report_to="none", use_cpu=True)
    params = {"w": jnp.zeros(3)}
    _, schedule = funcopt.from_training_args(args, params)
    warmup = args.get_warmup_steps(30)
    assert warmup == math.ceil(0.15 * 30)
    assert float(schedule(warmup - 1)) < args.learning_rate
    assert math.isclose(float(schedule(warmup)), args.learning_rate, rel_tol=1e-7)
