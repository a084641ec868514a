import pytest
import torch

from nca_cli.models import NCAConfig, OctreeNCA
from nca_cli.models.pyramid import downsample, level_shapes, upsample


def randomized(cfg, seed=0):
    m = OctreeNCA(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m


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
    up = upsample(torch.tensor([[[[1.0, 2.0, 3.0]]]]), (1, 2), (1, 5))
    assert up[0, 0, 0].tolist() == [1, 1, 2, 2, 3]


def test_forward_shapes_any_size_and_mask():
    cfg = NCAConfig(dims=2, input_channels=3, output_channels=2, levels=3, steps=[2, 2, 3])
    m = randomized(cfg)
    for shape in [(32, 32), (37, 23), (5, 3)]:
        x = torch.rand(2, 3, *shape)
        logits = m.predict_logits(x, impl="torch")
        assert logits.shape == (2, 2, *shape)
        assert torch.equal(m.predict_mask(x, impl="torch"), logits > 0)
    with pytest.raises(ValueError, match="input channel"):
        m.predict_logits(torch.rand(1, 1, 8, 8), impl="torch")
    with pytest.raises(ValueError, match="2D model"):
        m.predict_logits(torch.rand(1, 3, 4, 8, 8), impl="torch")


def test_levels_are_finest_first_and_use_own_weights():
    cfg = NCAConfig(dims=2, input_channels=1, output_channels=1, levels=2, steps=[1, 1])
    m = randomized(cfg)
    x = torch.rand(1, 1, 16, 16)
    before = m.predict_logits(x, impl="torch")
    with torch.no_grad():
        m.backbones[0].fc1.weight.zero_()
    after = m.predict_logits(x, impl="torch")
    # level 0 no longer changes the logits: they are level 1's, nearest-upsampled
    assert not torch.equal(before, after)
    assert torch.equal(after[..., 0::2, 0::2], after[..., 1::2, 1::2])


def test_crop_training_region_and_gradients():
    cfg = NCAConfig(dims=3, input_channels=1, output_channels=1, levels=3,
                    factors=[[2, 2, 2], [1, 2, 2]], steps=[2, 2, 4])
    m = randomized(cfg)
    x = torch.rand(2, 1, 8, 32, 32)
    g = torch.Generator().manual_seed(0)
    logits, region = m(x, patch=(4, 8, 8), crop_levels=2, generator=g)
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
    crop, region = m(x, patch=(16, 16), crop_levels=1, generator=torch.Generator().manual_seed(3))
    inner = full[(slice(None), slice(None), *region)][..., 1:-1, 1:-1]
    assert torch.allclose(crop[..., 1:-1, 1:-1], inner, atol=1e-5)
