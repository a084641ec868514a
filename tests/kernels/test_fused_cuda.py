"""Fused CUDA kernel against the PyTorch reference; runs wherever CUDA is available."""
import pytest
import torch

from nca_cli.kernels import (
    from_channels_last,
    fused_available,
    fused_run,
    to_channels_last,
)

from .conftest import make_backbone

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def cuda_kernels():
    if not fused_available("cuda"):
        pytest.fail("the CUDA kernels did not build (see the warning)")


@pytest.mark.parametrize("dims,shape,inp,fire_rate,origin", [
    (2, (17, 23), 3, 0.5, (5, -7)),
    (3, (5, 9, 11), 1, 1.0, None),
    (2, (1, 6), 1, 0.5, None),
    (3, (2, 1, 3), 3, 0.5, (1, 2, 3)),
])
@pytest.mark.parametrize("steps", [9, 10])          # odd and even: the result must land in the state
def test_float32_matches_reference(cuda_kernels, dims, shape, inp, fire_rate, origin, steps):
    m = make_backbone(dims, inp, fire_rate).cuda()
    state = torch.randn(2, 16, *shape, device="cuda")
    with torch.no_grad():
        ref = m.run(state, steps, seed=3, level=1, origin=origin)
    cl = to_channels_last(state)
    out = fused_run(m, cl, steps, seed=3, level=1, origin=origin)
    assert out.data_ptr() == cl.data_ptr()
    torch.testing.assert_close(from_channels_last(out), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype,ulp", [(torch.float16, 2.0 ** -10), (torch.bfloat16, 2.0 ** -7)])
def test_half_storage_matches_reference(cuda_kernels, dtype, ulp):
    m = make_backbone(2, 3, 0.5).cuda()
    state = torch.randn(2, 16, 17, 23, device="cuda").to(dtype)
    with torch.no_grad():
        ref = m.run(state.float(), 10, seed=5, state_dtype=dtype)
    got = from_channels_last(fused_run(m, to_channels_last(state), 10, seed=5)).float()
    err = (got - ref).abs()
    assert (err <= 4 * ulp * ref.abs().clamp(min=1.0)).all(), err.max()
    assert (err == 0).float().mean() >= 0.9
