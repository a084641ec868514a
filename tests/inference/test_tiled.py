"""Exact tiles: every core cell of every tile is the single pass's cell, bit for bit, whatever
the split and the tile size (the two passes walk the same level schedule)."""
import pytest
import torch

from nca_cli.inference.octree import TensorSource, drive
from nca_cli.inference.tiled import plan_tiles, run_tiled
from nca_cli.models import NCAConfig, OctreeNCA
from nca_cli.models.schedule import LevelSchedule


def _model(dims):
    factors = [[2] * dims, [1] + [2] * (dims - 1)] if dims == 3 else [[2, 2], [3, 3]]
    m = OctreeNCA(NCAConfig(dims=dims, input_channels=1, output_channels=1, levels=3, steps=[3, 2, 4],
                            factors=factors))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m


@pytest.mark.parametrize("dims,shape,tile", [(2, (41, 29), (9, 16)), (3, (6, 19, 14), (4, 7, 5))])
@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("impl", ["torch", "fused"])
def test_tiles_equal_the_single_pass(dims, shape, tile, split, impl):
    from nca_cli.kernels import fused_available

    if impl == "fused" and not fused_available("cpu"):
        pytest.skip("fused CPU kernel unavailable")
    m = _model(dims)
    x = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    one = drive(m, TensorSource(x, m.config.factors, m.config.pyramid, keep=True), impl=impl, seed=3).clone()
    tiled = torch.full_like(one, float("nan"))
    for core, state in run_tiled(m, TensorSource(x, m.config.factors, m.config.pyramid, keep=True), split=split,
                                 tile=tile, impl=impl, seed=3):
        tiled[(slice(None), *core)] = state
    assert torch.equal(tiled, one)


def test_tiles_cover_level_0_once_in_row_major_order():
    schedule = LevelSchedule((10, 7), [[2, 2]], [1, 1])
    tiles = plan_tiles(schedule, 1, (4, 4))
    assert [[(s.start, s.stop) for s in t.core] for t in tiles] == [
        [(0, 4), (0, 4)], [(0, 4), (4, 7)], [(4, 8), (0, 4)], [(4, 8), (4, 7)], [(8, 10), (0, 4)], [(8, 10), (4, 7)]]


def test_a_level_with_whole_level_statistics_is_not_tiled():
    from nca_cli.models import build_model
    from nca_cli.recipes import load_recipe

    m = build_model(load_recipe("mednca_pathology")["model"])
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="can be split only at levels \\[\\]"):
        next(run_tiled(m, TensorSource(x, m.config.factors, m.config.pyramid), split=1, tile=(8, 8), impl="torch"))
