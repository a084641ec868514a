import pytest
import torch

from nca_cli.inference.octree import predict_logits
from nca_cli.models import NCAConfig, OctreeNCA
from nca_cli.models.pyramid import downsample, level_shapes
from nca_cli.models.schedule import upsample


def randomized(cfg, seed=0):
    return OctreeNCA(cfg).randomize_(0.2, seed)


def test_level_shapes_stop_halving_depth():
    shapes = level_shapes((24, 320, 320), [[2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]])
    assert shapes == [(24, 320, 320), (12, 160, 160), (6, 80, 80), (6, 40, 40), (6, 20, 20)]
    assert level_shapes((13, 7), [[2, 2]]) == [(13, 7), (7, 4)]


def test_pyramid_modes_and_block_upsample():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert downsample(x, (2, 2), "average")[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert downsample(x, (2, 2), "max")[0, 0].tolist() == [[5, 7], [13, 15]]
    assert downsample(x, (2, 2), "nearest")[0, 0].tolist() == [[0, 2], [8, 10]]
    odd = torch.arange(5.0).reshape(1, 1, 1, 5)
    assert downsample(odd, (1, 2), "average")[0, 0, 0].tolist() == [0.5, 2.5, 4.0]
    # an axis shorter than its factor (a 1-frame clip) becomes one node, as level_shapes says
    clip = torch.arange(10.0).reshape(1, 1, 1, 2, 5)
    for mode in ("average", "max", "nearest"):
        assert downsample(clip, (2, 2, 2), mode).shape[2:] == level_shapes((1, 2, 5), [[2, 2, 2]])[1]
    assert downsample(clip, (2, 2, 2), "average")[0, 0, 0].tolist() == [[3.0, 5.0, 6.5]]
    up = upsample(torch.tensor([[[[1.0, 2.0, 3.0]]]]), (1, 2), (slice(0, 1), slice(0, 5)))
    assert up[0, 0, 0].tolist() == [1, 1, 2, 2, 3]


def _counting_model(levels, steps, fire_rate=0.5):
    """Every fired step adds exactly 1 to the first logit (a hidden unit that is always 1, read by
    fc1 into that channel only), so the logit of a cell counts the steps that fired on it and on
    its ancestors at every coarser level."""
    cfg = NCAConfig(dims=2, input_channels=3, output_channels=2, levels=levels, steps=steps, fire_rate=fire_rate)
    m = OctreeNCA(cfg)
    with torch.no_grad():
        for bb in m.backbones:
            for p in bb.parameters():
                p.zero_()
            bb.fc0.bias[0] = 1.0
            bb.fc1.weight[0, 0] = 1.0      # fc1 row 0 updates channel IN (the first logit)
    return m


def _fired_counts(shape, steps, seed):
    """Independently of the model: per level-0 cell, how many steps fired on it or on its
    ancestor at each level (factor 2: the ancestor of cell (y, x) at level l is (y >> l, x >> l))."""
    from nca_cli.core.firemask import fire_mask

    ys, xs = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    total = torch.zeros(shape)
    for level, n in enumerate(steps):
        level_shape = ((ys >> level).max().item() + 1, (xs >> level).max().item() + 1)
        for t in range(n):
            mask = fire_mask(level_shape, seed=seed, level=level, step=t, fire_rate=0.5)
            total += mask[ys >> level, xs >> level].float()
    return total


@pytest.mark.parametrize("shape", [(100, 37), (37, 23), (5, 3)])
def test_forward_logits_count_the_fired_steps_of_every_ancestor(shape):
    m = _counting_model(3, [2, 3, 4])
    x = torch.rand(2, 3, *shape)
    logits, region = m(x, seed=7)
    assert region is None and logits.shape == (2, 2, *shape)
    expected = _fired_counts(shape, [2, 3, 4], seed=7)
    assert expected.max() > expected.min()              # the fire masks differ between cells
    assert torch.equal(logits[:, 0], expected.expand(2, *shape))
    assert torch.equal(logits[:, 1], torch.zeros(2, *shape))
    assert torch.equal(predict_logits(m, x, seed=7, impl="torch"), logits)
    from nca_cli.kernels import fused_available

    if fused_available("cpu"):       # the single pass with the shared buffer walks the same levels
        assert torch.equal(predict_logits(m, x, seed=7, impl="fused"), logits)


def test_a_training_crop_computes_its_cells_at_their_absolute_coordinates():
    m = _counting_model(3, [2, 3, 4])
    x = torch.rand(1, 3, 100, 37)
    crop = m.random_crop((100, 37), (16, 12), 2, torch.Generator().manual_seed(1))
    logits, region = m(x, seed=7, crop=crop)
    assert [s.stop - s.start for s in region] == [16, 12] and region[0].start > 0
    assert torch.equal(logits[0, 0], _fired_counts((100, 37), [2, 3, 4], seed=7)[region])


def test_forward_refuses_a_wrong_image():
    m = _counting_model(3, [2, 2, 3])
    with pytest.raises(ValueError, match="input channel"):
        predict_logits(m, torch.rand(1, 1, 8, 8), impl="torch")
    with pytest.raises(ValueError, match="2D model"):
        predict_logits(m, torch.rand(1, 3, 4, 8, 8), impl="torch")


def test_levels_are_finest_first_and_use_own_weights():
    cfg = NCAConfig(dims=2, input_channels=1, output_channels=1, levels=2, steps=[1, 1])
    m = randomized(cfg)
    x = torch.rand(1, 1, 16, 16)
    before = predict_logits(m, x, impl="torch")
    with torch.no_grad():
        m.backbones[0].fc1.weight.zero_()
    after = predict_logits(m, x, impl="torch")
    # level 0 no longer changes the logits: they are level 1's, nearest-upsampled
    assert not torch.equal(before, after)
    assert torch.equal(after[..., 0::2, 0::2], after[..., 1::2, 1::2])


def test_crop_training_region_and_gradients():
    cfg = NCAConfig(dims=3, input_channels=1, output_channels=1, levels=3,
                    factors=[[2, 2, 2], [1, 2, 2]], steps=[2, 2, 4])
    m = randomized(cfg)
    x = torch.rand(2, 1, 8, 32, 32)
    g = torch.Generator().manual_seed(0)
    logits, region = m(x, crop=m.random_crop(x.shape[2:], (4, 8, 8), 2, g))
    assert logits.shape == (2, 1, 4, 8, 8)
    assert all(s.start % 2 == 0 for s in region)
    logits.sum().backward()
    assert all(bb.fc1.weight.grad is not None and bb.fc1.weight.grad.abs().sum() > 0 for bb in m.backbones)


def test_crop_matches_whole_image_inside_when_fire_rate_one():
    # With fire_rate 1 the cropped levels see the same state as the full run away from the crop border.
    cfg = NCAConfig(dims=2, input_channels=1, output_channels=1, levels=2, steps=[1, 2], fire_rate=1.0)
    m = randomized(cfg)
    x = torch.rand(1, 1, 32, 32)
    full, _ = m(x)
    crop, region = m(x, crop=m.random_crop(x.shape[2:], (16, 16), 1, torch.Generator().manual_seed(3)))
    inner = full[(slice(None), slice(None), *region)][..., 1:-1, 1:-1]
    assert torch.allclose(crop[..., 1:-1, 1:-1], inner, atol=1e-5)


def _crop_model():
    from nca_cli.models import build_model

    model = build_model(dict(architecture="octree_nca", dims=2, input_channels=1, output_channels=2, levels=3,
                             steps=[3, 3, 4]))
    for b in model.backbones:
        torch.nn.init.normal_(b.fc1.weight, std=0.05)
    return model


def test_all_levels_finest_equals_the_logits():
    model = _crop_model()
    x = torch.rand(2, 1, 32, 28)
    levels, region = model(x, seed=7, all_levels=True)
    ref, _ = model(x, seed=7)
    assert region is None and torch.equal(levels[0], ref)
    assert [tuple(t.shape) for t in levels] == [(2, 2, 32, 28), (2, 2, 16, 14), (2, 2, 8, 7)]


def test_crop_levels_train_on_a_region_the_coarse_level_sees_everything():
    model = _crop_model()
    x = torch.rand(1, 1, 40, 36)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    crop = model.random_crop(x.shape[2:], [16, 12], 2, g1)
    assert crop == model.random_crop(x.shape[2:], [16, 12], 2, g2)      # reproducible from the generator
    levels, region = model(x, seed=5, crop=crop, all_levels=True)
    logits, same = model(x, seed=5, crop=crop)
    assert region == same and torch.equal(levels[0], logits)
    assert levels[0].shape[2:] == (16, 12) and [s.stop - s.start for s in region] == [16, 12]
    whole, _ = model(x, seed=5, all_levels=True)
    assert torch.equal(levels[2], whole[2])          # the coarsest level sees the whole image
    assert model.random_crop(x.shape[2:], None, 2, g1) is None


def test_two_seeds_give_two_different_passes():
    model = _crop_model()
    x = torch.rand(1, 1, 16, 16)
    a, _ = model(x, seed=1, all_levels=True)
    b, _ = model(x, seed=2, all_levels=True)
    assert not torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
