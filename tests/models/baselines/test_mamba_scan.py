import pytest
import torch
import torch.nn.functional as F

from nca_cli.models.baselines.mamba_scan import (
    selective_scan,
    selective_scan_chunked,
    selective_scan_sequential,
)


def make_inputs(batch=2, d=6, n=16, length=50, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, d, length, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(batch, d, length, generator=g, dtype=dtype))
    A = -(torch.rand(d, n, generator=g, dtype=dtype) * 4 + 0.05)
    B = torch.randn(batch, n, length, generator=g, dtype=dtype)
    C = torch.randn(batch, n, length, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D)]


def value_and_grads(fn, inputs):
    y = fn(*inputs)
    weight = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    grads = torch.autograd.grad((y * weight).sum(), inputs)
    return y.detach(), grads


@pytest.mark.parametrize("chunk", [1, 7, 16, 50, 64])
def test_chunked_matches_sequential_float64(chunk):
    inputs = make_inputs()
    y_ref, g_ref = value_and_grads(selective_scan_sequential, inputs)
    y, g = value_and_grads(lambda *a: selective_scan_chunked(*a, chunk=chunk), inputs)
    assert (y - y_ref).abs().max() < 1e-5
    for a, b in zip(g, g_ref):
        assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("chunk", [5, 32])
def test_chunked_matches_sequential_float32(chunk):
    inputs = make_inputs(length=77, dtype=torch.float32, seed=1)
    y_ref, g_ref = value_and_grads(selective_scan_sequential, inputs)
    y, g = value_and_grads(lambda *a: selective_scan_chunked(*a, chunk=chunk), inputs)
    assert ((y - y_ref).abs().max() / y_ref.abs().max()) < 1e-5
    for a, b in zip(g, g_ref):
        assert ((a - b).abs().max() / b.abs().max()) < 1e-5


def test_without_grad_and_dispatch_agree():
    inputs = make_inputs(length=33)
    with torch.no_grad():
        y_plain = selective_scan_chunked(*inputs, chunk=8)
        y_ref = selective_scan_sequential(*inputs)
        y_any = selective_scan(*inputs, chunk=8)
    assert torch.allclose(y_plain, y_ref, atol=1e-10)
    assert torch.allclose(y_any, y_ref, atol=1e-10)


def test_strong_decay_stays_finite():
    u, delta, A, B, C, D = make_inputs(length=40)
    with torch.no_grad():
        delta.mul_(0).add_(50.0)  # exp(delta*A) underflows to 0
        y = selective_scan_chunked(u, delta, A, B, C, D, chunk=16)
        y_ref = selective_scan_sequential(u, delta, A, B, C, D)
    assert torch.isfinite(y).all()
    assert torch.allclose(y, y_ref, atol=1e-8)


def test_backward_does_not_keep_every_state():
    """With recomputation autograd keeps far fewer values than the [b, d, L, n] states."""
    u, delta, A, B, C, D = make_inputs(batch=1, d=32, n=16, length=512, dtype=torch.float32)
    full = 32 * 16 * 512

    def saved_values(fn):
        count = [0]

        def pack(t):
            count[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(u, delta, A, B, C, D)
        return count[0]

    assert saved_values(selective_scan_sequential) > full
    assert saved_values(lambda *a: selective_scan_chunked(*a, chunk=16)) < full / 2


def test_bad_chunk():
    with pytest.raises(ValueError, match="chunk"):
        selective_scan_chunked(*make_inputs(length=4), chunk=0)
