import pytest
import torch

from nca_cli.inference.octree import (
    TensorSource,
    buffer_layout,
    drive,
    predict_logits,
)
from nca_cli.models import NCAConfig, OctreeNCA
from nca_cli.models.schedule import upsample, whole


@pytest.mark.parametrize("shapes,factor", [
    ([(13, 9), (7, 5)], [2, 2]),
    ([(5, 13, 9), (3, 7, 5)], [2, 2, 2]),
    ([(6, 8, 8), (6, 4, 4)], [1, 2, 2]),
    ([(40, 12), (10, 3)], [4, 4]),
])
@pytest.mark.parametrize("chunk", [1, 97, 1 << 23])
def test_in_place_upsample_equals_out_of_place(shapes, factor, chunk):
    batch, channels = 2, 3
    offsets, sizes, total = buffer_layout(shapes, [factor], batch, channels)
    assert total >= sizes[0] and offsets[1] + sizes[1] <= total
    buf = torch.full((total,), float("nan"))
    src = buf[offsets[1]:offsets[1] + sizes[1]].view(batch, *shapes[1], channels)
    src.copy_(torch.randn(src.shape))
    expected = upsample(src.clone(), factor, whole(shapes[0]), channels_last=True)
    dst = buf[:sizes[0]].view(batch, *shapes[0], channels)
    upsample(src, factor, whole(shapes[0]), channels_last=True, out=dst, chunk_bytes=chunk)
    assert torch.equal(dst, expected)


def test_one_buffer_for_all_levels():
    shapes = [(320, 320), (160, 160), (80, 80), (40, 40), (20, 20)]
    offsets, sizes, total = buffer_layout(shapes, [[2, 2]] * 4, 1, 16)
    assert total == sizes[0]            # divisible sizes: exactly one finest state


def random_model(dims, inp, out, fire_rate=0.5, seed=0):
    cfg = NCAConfig(dims=dims, input_channels=inp, output_channels=out, levels=3, steps=[3, 4, 5],
                    factors=[[2] * dims, [1] + [2] * (dims - 1)] if dims == 3 else [], fire_rate=fire_rate)
    return OctreeNCA(cfg).randomize_(0.1, seed)


@pytest.mark.parametrize("dims,shape", [(2, (37, 29)), (3, (7, 19, 22))])
def test_driver_with_reference_step_equals_model_forward(dims, shape):
    m = random_model(dims, 2, 1)
    x = torch.rand(2, 2, *shape)
    expected, _ = m(x, seed=4)
    state = drive(m, TensorSource(x, m.config.factors, m.config.pyramid), impl="torch", seed=4)
    got = state[..., 2:3].movedim(-1, 1)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dims,shape", [(2, (37, 29)), (3, (7, 19, 22))])
@pytest.mark.parametrize("fire_rate", [0.5, 1.0])
def test_fused_octree_equals_reference(dims, shape, fire_rate):
    from nca_cli.kernels import fused_available

    if not fused_available("cpu"):
        pytest.skip("fused CPU kernel unavailable")
    m = random_model(dims, 1 if dims == 3 else 3, 2, fire_rate)
    x = torch.rand(2, m.config.input_channels, *shape)
    ref = predict_logits(m, x, seed=1, impl="torch")
    fused = predict_logits(m, x, seed=1, impl="fused")
    assert torch.allclose(fused, ref, atol=1e-4, rtol=1e-4)
    half = predict_logits(m, x, seed=1, impl="fused", state_dtype=torch.float16)
    ref_half = predict_logits(m, x, seed=1, impl="torch", state_dtype=torch.float16)
    assert (half - ref_half).abs().max() < 5e-2 * max(1.0, ref_half.abs().max().item())


def _batchnorm_model_and_input(recipe, shape):
    """A recipe's model with fc1 drawn (it starts at zero) and a batch of 2 inputs; skips
    without the fused CPU kernel."""
    from nca_cli.kernels import fused_available
    from nca_cli.models import build_model
    from nca_cli.recipes import load_recipe

    if not fused_available("cpu"):
        pytest.skip("fused CPU kernel unavailable")
    torch.manual_seed(0)
    m = build_model(load_recipe(recipe)["model"])
    for bb in m.backbones:
        torch.nn.init.normal_(bb.fc1.weight, std=0.02)
    return m, torch.rand(2, m.config.input_channels, *shape, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("recipe,shape", [("mednca_pathology", (45, 61)), ("mednca_xray_vwsl", (45, 61)),
                                          ("m3d_radiology_2levels", (9, 29, 23))])
def test_fused_batchnorm_models_equal_the_reference_after_a_whole_forward(recipe, shape):
    """Med-NCA and M3D-NCA with their recipes' steps (64/64, 10/40), batch 2: BatchNorm's
    statistics over the batch, every level, logits within 1e-4."""
    m, x = _batchnorm_model_and_input(recipe, shape)
    with torch.inference_mode():
        ref = predict_logits(m, x, seed=5, impl="torch")
        fused = predict_logits(m, x, seed=5, impl="fused")
    assert torch.allclose(fused, ref, atol=1e-4, rtol=1e-4), (fused - ref).abs().max()


@pytest.mark.parametrize("recipe,shape", [("mednca_pathology", (45, 61)), ("mednca_xray_vwsl", (37, 29)),
                                          ("m3d_radiology_2levels", (9, 29, 23))])
def test_coarse_batchnorm_levels_keep_their_perception_without_changing_a_bit(monkeypatch, recipe, shape):
    """The coarse level keeps its perception between the sweeps of a step, in the front of the
    shared buffer, and the logits are the very bits of perceiving twice."""
    import nca_cli.inference.octree as octree
    import nca_cli.kernels as kernels

    m, x = _batchnorm_model_and_input(recipe, shape)
    shapes = m.level_shapes(shape)
    assert octree.keeps_perception(m, shapes, 1, 0, 2, 4, "cpu") > 0
    assert octree.keeps_perception(m, shapes, 0, 0, 2, 4, "cpu") == 0      # the last level never keeps
    assert octree.keeps_perception(m, shapes, 1, 0, 2, 4, "cuda") == 0

    calls = []
    fused_run = kernels.fused_run

    def spy(backbone, state, steps, **kw):
        buffer = kw.get("keep_buffer")
        calls.append(kw.get("keep_perception", False) and buffer is not None and buffer.dtype == torch.float32)
        return fused_run(backbone, state, steps, **kw)

    monkeypatch.setattr(kernels, "fused_run", spy)
    with torch.inference_mode():
        kept = predict_logits(m, x, seed=5, impl="fused")
        assert calls == [True, False]
        monkeypatch.setattr(octree, "keeps_perception", lambda *a: 0)
        again = predict_logits(m, x, seed=5, impl="fused")
        assert calls == [True, False, False, False]
    assert torch.equal(kept, again)


def test_a_level_keeps_its_perception_only_where_the_shared_buffer_has_room():
    """Kept perception (float32, C or 2C values per cell) must fit in the front of the shared
    buffer, before the level's own state: it does at 1/16 and 1/64 of the cells, not for a
    full2 model whose coarse level has 1/4 of the cells in float16 (the sizes are the launcher's)."""
    from nca_cli.inference.octree import keeps_perception
    from nca_cli.kernels import fused_available

    if not fused_available("cpu"):
        pytest.skip("fused CPU kernel unavailable")
    from nca_cli.models import build_model
    from nca_cli.recipes import load_recipe

    m3d = build_model(load_recipe("m3d_radiology_2levels")["model"])
    assert keeps_perception(m3d, [(64, 128, 128), (16, 32, 32)], 1, 0, 1, 2, "cpu") == 16 * 32 * 32 * 16 * 4
    spec = load_recipe("mednca_xray_vwsl")["model"]
    vwsl = build_model(spec)
    assert keeps_perception(vwsl, vwsl.level_shapes((1955, 1841)), 1, 0, 1, 2, "cpu") == 489 * 464 * 32 * 4
    halves = build_model({**spec, "factors": [[2, 2]]})
    assert keeps_perception(halves, halves.level_shapes((1024, 1024)), 1, 0, 1, 2, "cpu") == 0
    assert keeps_perception(halves, halves.level_shapes((1024, 1024)), 1, 0, 1, 4, "cpu") > 0   # float32 room
