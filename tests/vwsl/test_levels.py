import torch

from nca_cli.models import build_model
from nca_cli.vwsl.levels import forward_levels, random_crop

from .conftest import tiny_model


def test_finest_level_equals_the_model_forward():
    model = tiny_model()
    x = torch.rand(2, 1, 32, 28)
    levels, region = forward_levels(model, x, seed=7)
    ref, _ = model(x, seed=7)
    assert region is None
    assert torch.equal(levels[0], ref)
    assert [tuple(t.shape) for t in levels] == [(2, 1, 32, 28), (2, 1, 8, 7)]


def test_crop_matches_the_model_forward_and_keeps_the_coarse_level_whole():
    model = build_model(dict(architecture="octree_nca", dims=2, input_channels=1, output_channels=2, levels=3,
                             steps=[3, 3, 4]))
    for b in model.backbones:
        torch.nn.init.normal_(b.fc1.weight, std=0.05)
    x = torch.rand(1, 1, 40, 36)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    crop = random_crop(model, x.shape[2:], [16, 12], 2, g1)
    levels, region = forward_levels(model, x, seed=5, crop=crop)
    ref, ref_region = model(x, seed=5, patch=[16, 12], crop_levels=2, generator=g2)
    assert region == ref_region
    assert torch.equal(levels[0], ref)
    assert levels[0].shape[2:] == (16, 12)
    whole, _ = forward_levels(model, x, seed=5)
    assert torch.equal(levels[2], whole[2])          # the coarsest level sees the whole image
    assert random_crop(model, x.shape[2:], None, 2, g1) is None


def test_two_seeds_give_two_different_passes():
    model = tiny_model()
    x = torch.rand(1, 1, 16, 16)
    a, _ = forward_levels(model, x, seed=1)
    b, _ = forward_levels(model, x, seed=2)
    assert not torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
