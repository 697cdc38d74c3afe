"""funcopt.trainer_decay_mask on Flax twins against the real Trainer.get_decay_parameter_names.

Tiny torch models are built from transformers 5.23 configs (no downloads); their Flax twins
are built from the same module tree with Flax's own modules, in linen and in nnx, so the
pytree names are exactly what Flax produces. The decay set funcopt selects on each twin must
be the set the Trainer selects on the torch model.
"""

import functools

import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import reference

import funcopt

torch = reference("torch")
transformers = reference("transformers")
flax = reference("flax")
from flax import linen, nnx  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

# Flax leaf names of a torch module's "weight" (a twin's other leaf is "bias").
WEIGHT_NAMES = {"kernel", "scale", "embedding"}


@functools.cache
def tiny_models():
    """Small torch models: BERT (LayerNorm), GPT-2 (ln_1/ln_f: LayerNorm by type only),
    Llama (RMSNorms named input_layernorm, post_attention_layernorm, norm)."""
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=32, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16))
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(
        vocab_size=32, n_embd=8, n_layer=2, n_head=2, n_positions=16, bos_token_id=0,
        eos_token_id=0))
    llama = transformers.LlamaModel(transformers.LlamaConfig(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16))
    return {"bert": bert, "gpt2": gpt2, "llama": llama}


class Odd(torch.nn.Module):
    """Norms the type rule and the name patterns treat differently: a GroupNorm and an
    RMSNorm named like nothing (decayed by torch), a GroupNorm named ``group_norm`` and a
    LayerNorm named ``ln`` without bias (both excluded)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.gn = torch.nn.GroupNorm(2, 4)
        self.rms = torch.nn.RMSNorm(4)
        self.group_norm = torch.nn.GroupNorm(2, 4)
        self.ln = torch.nn.LayerNorm(4, bias=False)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4, bias=False)])


def leaf_spec(module):
    """(kind, sizes, has_bias) of a torch module holding parameters."""
    has_bias = getattr(module, "bias", None) is not None
    if isinstance(module, torch.nn.Linear):
        return "dense", (module.in_features, module.out_features), has_bias
    if isinstance(module, Conv1D):
        return "dense", tuple(module.weight.shape), has_bias
    if isinstance(module, torch.nn.Embedding):
        return "embed", (module.num_embeddings, module.embedding_dim), False
    if isinstance(module, torch.nn.LayerNorm):
        return "layer_norm", (module.normalized_shape[0],), has_bias
    if isinstance(module, torch.nn.GroupNorm):
        return "group_norm", (module.num_channels, module.num_groups), has_bias
    if isinstance(module, torch.nn.RMSNorm) or type(module).__name__.endswith("RMSNorm"):
        return "rms_norm", (module.weight.shape[0],), False
    raise TypeError(f"no Flax twin for {type(module).__name__}")


def module_spec(module):
    """The module tree as nested tuples ``(name, spec)``; leaves are ``leaf_spec``s."""
    children = []
    for name, child in module.named_children():
        if next(child.parameters(), None) is None:
            continue  # dropout, activations, rotary embeddings: no parameters
        if list(child.parameters(recurse=False)):
            assert not list(child.children()), name
            children.append((name, leaf_spec(child)))
        else:
            children.append((name, module_spec(child)))
    return tuple(children)


def is_leaf(spec):
    return isinstance(spec[0], str) and spec[0] in {
        "dense", "embed", "layer_norm", "group_norm", "rms_norm"}


class LinenTwin(linen.Module):
    spec: tuple

    @linen.compact
    def __call__(self):
        for name, child in self.spec:
            if not is_leaf(child):
                LinenTwin(child, name=name)()
                continue
            kind, sizes, bias = child
            if kind == "dense":
                linen.Dense(sizes[1], use_bias=bias, name=name)(jnp.zeros((1, sizes[0])))
            elif kind == "embed":
                linen.Embed(*sizes, name=name)(jnp.zeros((1,), jnp.int32))
            elif kind == "layer_norm":
                linen.LayerNorm(use_bias=bias, name=name)(jnp.zeros((1, sizes[0])))
            elif kind == "group_norm":
                linen.GroupNorm(num_groups=sizes[1], name=name)(jnp.zeros((1, sizes[0])))
            else:
                linen.RMSNorm(name=name)(jnp.zeros((1, sizes[0])))


class Node(nnx.Module):
    """A plain nnx container; its children are set as attributes."""


def nnx_twin(spec, rngs):
    """An nnx module tree: attributes named as torch's children, a ModuleList as nnx.List."""
    def build(child):
        if not is_leaf(child):
            return nnx_twin(child, rngs)
        kind, sizes, bias = child
        if kind == "dense":
            return nnx.Linear(*sizes, use_bias=bias, rngs=rngs)
        if kind == "embed":
            return nnx.Embed(*sizes, rngs=rngs)
        if kind == "layer_norm":
            return nnx.LayerNorm(sizes[0], use_bias=bias, rngs=rngs)
        if kind == "group_norm":
            return nnx.GroupNorm(sizes[0], num_groups=sizes[1], rngs=rngs)
        return nnx.RMSNorm(sizes[0], rngs=rngs)

    if all(name.isdigit() for name, _ in spec):
        return nnx.List([build(child) for _, child in spec])
    node = Node()
    for name, child in spec:
        setattr(node, name, build(child))
    return node


def twins(model):
    """The model's linen params (as shapes: names are all the mask reads) and nnx Param state."""
    spec = module_spec(model)
    variables = jax.eval_shape(LinenTwin(spec).init, jax.random.key(0))
    return {"linen": variables["params"],
            "nnx": nnx.state(nnx_twin(spec, nnx.Rngs(0)), nnx.Param)}


def torch_names(params, mask=None):
    """Leaf names mapped to torch's (``kernel``/``scale``/``embedding`` -> ``weight``), with
    ``mask`` the set of those it marks True."""
    names = jax.tree.leaves(funcopt.param_names(params))
    marks = jax.tree.leaves(mask) if mask is not None else [True] * len(names)
    assert len(marks) == len(names)
    out = set()
    for name, mark in zip(names, marks, strict=True):
        *module, leaf = name.split("/")
        if leaf == "value":  # an nnx.Variable's value: param_names keeps the attribute
            *module, leaf = module
        leaf = "weight" if leaf in WEIGHT_NAMES else leaf
        if mark:
            out.add(".".join([*module, leaf]))
    return out


def trainer_decayed(model):
    """The real Trainer's decay group: get_decay_parameter_names among named_parameters."""
    decay = set(transformers.Trainer.get_decay_parameter_names(None, model))
    return {n for n, _ in model.named_parameters() if n in decay}


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_decay_set_equals_the_trainers(name, api):
    model = tiny_models()[name]
    params = twins(model)[api]
    all_names = {n for n, _ in model.named_parameters()}
    assert torch_names(params) == all_names  # the twin has exactly the torch parameters
    expected = trainer_decayed(model)
    got = torch_names(params, funcopt.trainer_decay_mask(params))
    print(f"{name} ({api}): {len(all_names)} parameters, Trainer decays {len(expected)}, "
          f"funcopt decays {len(got)}, symmetric difference {sorted(got ^ expected)}")
    assert got == expected
    assert expected != all_names and expected  # the rule does exclude, and does keep


def test_type_rule_is_what_excludes_gpt2_layer_norms():
    """ln_1/ln_2/ln_f match no pattern: only the LayerNorm type (Flax: scale+bias) drops them."""
    model = tiny_models()["gpt2"]
    excluded = {n for n, _ in model.named_parameters()} - trainer_decayed(model)
    assert {"h.0.ln_1.weight", "ln_f.weight"} <= excluded
    params = twins(model)["linen"]
    mask = funcopt.trainer_decay_mask(params)
    assert not mask["ln_f"]["scale"] and not mask["h"]["0"]["ln_1"]["scale"]
    assert mask["h"]["0"]["attn"]["c_attn"]["kernel"]


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_norms_named_like_nothing_need_layer_norms(api):
    """A GroupNorm ``gn`` and an RMSNorm ``rms`` are decayed by torch (not LayerNorm, no
    pattern); by default the pytree takes them for LayerNorms (documented). ``layer_norms``,
    as a list of paths or as a predicate, gives the Trainer's set."""
    model = Odd()
    params = twins(model)[api]
    expected = trainer_decayed(model)
    assert {"gn.weight", "rms.weight"} <= expected and "ln.weight" not in expected
    default = torch_names(params, funcopt.trainer_decay_mask(params))
    assert expected - default == {"gn.weight", "rms.weight"} and default <= expected
    by_list = funcopt.trainer_decay_mask(params, layer_norms=["ln"])
    by_predicate = funcopt.trainer_decay_mask(params, layer_norms=lambda path: path == "ln")
    print(f"odd norms ({api}): Trainer decays {sorted(expected)}; default differs on "
          f"{sorted(expected - default)}; with layer_norms: equal")
    assert torch_names(params, by_list) == expected == torch_names(params, by_predicate)


def test_full_linen_variables_and_optimizer_use():
    """The mask works on the whole linen variables dict ({"params": ...}) and as the ``mask``
    argument itself (a callable) of a funcopt optimizer and of optax: exactly the leaves it
    marks get an update that differs from the same optimizer without weight decay."""
    model = tiny_models()["bert"]
    variables = LinenTwin(module_spec(model)).init(jax.random.key(0))
    mask = funcopt.trainer_decay_mask(variables)
    assert mask["params"] == funcopt.trainer_decay_mask(variables["params"])
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), variables)
    for adamw in (funcopt.adamw, optax.adamw):
        updates = {}
        for decay in (0.0, 0.1):
            tx = adamw(1e-3, weight_decay=decay, mask=funcopt.trainer_decay_mask)
            updates[decay], _ = jax.jit(tx.update)(grads, tx.init(variables), variables)
        differs = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), updates[0.0], updates[0.1])
        assert differs == mask


def test_layer_norms_errors():
    params = {"a": {"scale": jnp.ones(2)}, "b": {"kernel": jnp.ones((2, 2))}}
    with pytest.raises(ValueError, match="not modules of params"):
        funcopt.trainer_decay_mask(params, layer_norms=["c"])
    with pytest.raises(TypeError, match="layer_norms must be"):
        funcopt.trainer_decay_mask(params, layer_norms="a")
    assert funcopt.trainer_decay_mask(params, layer_norms=[]) == {
        "a": {"scale": True}, "b": {"kernel": True}}
