"""The small torch model and helpers shared by the funcopt.torch tests."""

import contextlib

import pytest
from conftest import reference

torch = reference("torch")  # skipped locally when missing, a failure in CI
transformers = reference("transformers")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """torch's OpenMP threads and XLA's pool spin-wait against each other on a small CPU;
    one torch thread keeps these tests fast. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.GELU(), torch.nn.Linear(16, 4)
    )
    return model.to(dtype)


def batch(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 8, generator=g).to(dtype), torch.randn(32, 4, generator=g).to(dtype)


def weights(model):
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


def rel_diff(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def hf_adamw(params, **kw):
    return transformers.AdamW(params, no_deprecation_warning=True, **kw)


@contextlib.contextmanager
def raises(error, *words):
    with pytest.raises(error) as info:
        yield
    for word in words:
        assert word in str(info.value), (word, str(info.value))

