"""Fused CUDA kernel against the PyTorch reference; runs wherever CUDA is available.

Tolerances as in test_fused_cpu.py and test_variants_cpu.py (float32: 1e-5; 16-bit storage:
4 units in the last place relative to max(|x|, 1) and >= 90 % bit-identical, after up to 4
steps for the variants). The reference runs in true float32: TF32 is switched off for
convolutions and matrix products (torch's default on Ampere and later GPUs would be 1e-3).
Without a GPU the same launcher runs under the CPU emulator: test_cuda_emulated.py."""
import pytest
import torch

from nca_cli.kernels import (
    from_channels_last,
    fused_available,
    fused_run,
    to_channels_last,
)

from .conftest import make_backbone
from .test_variants_cpu import SHAPES, VARIANTS, variant

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ULP = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


def _tf32_settings():
    """(object, attribute) of every TF32 switch, through the API this torch has: the
    fp32_precision settings, or the older allow_tf32 flags (never both: torch refuses a mix)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return [(conv, "fp32_precision", "ieee"), (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]


@pytest.fixture(autouse=True, scope="module")
def no_tf32():
    """The reference in true float32 (TF32 convolutions would be 1e-3 off on Ampere and later)."""
    settings = _tf32_settings()
    before = [getattr(obj, attr) for obj, attr, _ in settings]
    for obj, attr, off in settings:
        setattr(obj, attr, off)
    yield
    for (obj, attr, _), value in zip(settings, before):
        setattr(obj, attr, value)


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


VARIANT_CASES = [(name, *SHAPES[dims][i]) for name, (dims, _, _) in VARIANTS.items() for i in (0, 2)]


@pytest.mark.parametrize("name,shape,fire_rate,origin", VARIANT_CASES)
@pytest.mark.parametrize("steps", [1, 6])
def test_variants_float32_match_reference(cuda_kernels, name, shape, fire_rate, origin, steps):
    m = variant(name, fire_rate).cuda()
    state = torch.randn(2, m.channels, *shape, device="cuda")
    with torch.no_grad():
        ref = m.run(state, steps, seed=3, level=1, origin=origin)
    cl = to_channels_last(state)
    out = fused_run(m, cl, steps, seed=3, level=1, origin=origin)
    assert out.data_ptr() == cl.data_ptr()
    torch.testing.assert_close(from_channels_last(out), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_half_storage_match_reference(cuda_kernels, name, dtype):
    shape, fire_rate, origin = SHAPES[VARIANTS[name][0]][0]
    m = variant(name, fire_rate).cuda()
    state = torch.randn(2, m.channels, *shape, device="cuda").to(dtype)
    with torch.no_grad():
        ref = m.run(state.float(), 4, seed=5, origin=origin, state_dtype=dtype)
    got = from_channels_last(fused_run(m, to_channels_last(state), 4, seed=5, origin=origin)).float()
    err = (got - ref).abs()
    assert (err <= 4 * ULP[dtype] * ref.abs().clamp(min=1.0)).all(), err.max()
    assert (err == 0).float().mean() >= 0.9


def test_batch_norm_statistics_are_deterministic_and_cover_the_batch(cuda_kernels):
    """Many blocks (the statistics kernel strides over cells with a fixed grid): two runs are
    bit-identical, and equal the reference, which normalises over both images."""
    m = variant("m3d-k3", 0.5).cuda()
    state = torch.randn(2, 16, 12, 70, 90, device="cuda")
    state[1] = 2 * state[1] - 1
    with torch.no_grad():
        ref = m.run(state, 3, seed=1)
    a = fused_run(m, to_channels_last(state), 3, seed=1)
    b = fused_run(m, to_channels_last(state), 3, seed=1)
    assert torch.equal(a, b)
    torch.testing.assert_close(from_channels_last(a), ref, atol=1e-5, rtol=1e-5)


def test_reference_runs_without_tf32():
    assert all(getattr(obj, attr) == off for obj, attr, off in _tf32_settings())


def test_synchronised_steps_give_the_same_result(cuda_kernels, monkeypatch):
    """NCA_CUDA_SYNC=1 (synchronise after every kernel, to name a failing one) changes nothing else."""
    m = variant("mednca-k3", 0.5).cuda()
    state = to_channels_last(torch.randn(2, 16, 17, 23, device="cuda"))
    a = fused_run(m, state.clone(), 3, seed=1)
    monkeypatch.setenv("NCA_CUDA_SYNC", "1")
    assert torch.equal(fused_run(m, state.clone(), 3, seed=1), a)


@pytest.mark.parametrize("name", ["octree-fc1all", "mednca-k7", "m3d-k5"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_in_place_step_gives_the_bits_of_the_double_buffered_step(cuda_kernels, monkeypatch, name, dtype):
    m = variant(name, 0.5).cuda()
    shape = (301, 97) if m.dims == 2 else (37, 29, 23)
    state = to_channels_last(torch.randn(2, 16, *shape, device="cuda")).to(dtype)
    monkeypatch.setenv("NCA_CUDA_STEP", "in_place")
    in_place = fused_run(m, state.clone(), 4, seed=1)
    monkeypatch.setenv("NCA_CUDA_STEP", "double")
    assert torch.equal(fused_run(m, state.clone(), 4, seed=1), in_place)
