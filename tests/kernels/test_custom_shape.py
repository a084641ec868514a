"""A model shape outside the default library is built on demand (generic code paths:
channels not a multiple of the SIMD width, kernel 5, sizes below the kernel)."""
import pytest
import torch

from nca_cli.kernels import fused_run, from_channels_last, kernel_module, resolve_impl, to_channels_last
from nca_cli.kernels.build import as_shape

from .conftest import make_backbone

SHAPE = (2, 12, 32, 2, 5)  # dims, channels, hidden, input channels, kernel


@pytest.mark.slow
def test_on_demand_shape_matches_reference(cpu_kernels):
    dims, channels, hidden, inp, k = SHAPE
    m = make_backbone(dims, inp, 0.5, channels=channels, hidden=hidden, kernel_size=k)
    assert resolve_impl("auto", [m], "cpu") == "fused"
    mod = kernel_module("cpu", SHAPE)
    assert mod is not kernel_module("cpu") and mod.has(*as_shape(SHAPE), 0)
    for shape in [(13, 21), (3, 2), (1, 9)]:
        state = torch.randn(2, channels, *shape)
        with torch.no_grad():
            ref = m.run(state, 6, seed=4, origin=(3, 1))
        out = fused_run(m, to_channels_last(state), 6, seed=4, origin=(3, 1))
        torch.testing.assert_close(from_channels_last(out), ref, atol=1e-5, rtol=1e-5)
        half = state.half()
        with torch.no_grad():
            ref16 = m.run(half.float(), 6, seed=4, state_dtype=torch.float16)
        got = from_channels_last(fused_run(m, to_channels_last(half), 6, seed=4)).float()
        assert ((got - ref16).abs() <= 4 * 2.0 ** -10 * ref16.abs().clamp(min=1.0)).all()
