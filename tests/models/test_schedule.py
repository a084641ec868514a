import pytest
import torch

from nca_cli.models import NCAConfig, OctreeNCA
from nca_cli.models.schedule import LevelSchedule, upsample, upsample_bytes


def _schedule(shape, factors, steps=None, kernels=None, whole_level=None):
    levels = len(factors) + 1
    return LevelSchedule(shape, factors, steps or [1] * levels, kernels, whole_level)


def test_three_levels_of_100_by_37_halve_with_ceiling_coarsest_first():
    s = _schedule((100, 37), [[2, 2], [2, 2]], steps=[3, 4, 5])
    assert s.shapes == [(100, 37), (50, 19), (25, 10)]
    walked = list(s.walk())
    assert [lv.index for lv in walked] == [2, 1, 0]
    assert [lv.steps for lv in walked] == [5, 4, 3]
    assert [lv.factor for lv in walked] == [None, (2, 2), (2, 2)]
    assert [lv.size for lv in walked] == [[25, 10], [50, 19], [100, 37]]
    assert all(lv.origin == [0, 0] and lv.whole for lv in walked)
    assert [lv.index for lv in s.walk(stop=1)] == [2, 1]
    assert [lv.index for lv in s.walk(start=1)] == [1, 0]
    assert s.scale(2) == [4, 4]


def test_odd_sizes_and_an_axis_shorter_than_its_factor():
    assert _schedule((13, 7), [[2, 2], [3, 3]]).shapes == [(13, 7), (7, 4), (3, 2)]
    # one frame: the depth axis stays one node at every level
    assert _schedule((1, 5, 9), [[2, 2, 2], [4, 4, 4]]).shapes == [(1, 5, 9), (1, 3, 5), (1, 1, 2)]
    assert _schedule((3, 64, 64), [[1, 2, 2]]).shapes == [(3, 64, 64), (3, 32, 32)]


def test_crop_regions_scale_the_crop_to_every_finer_level_clipped():
    s = _schedule((100, 37), [[2, 2], [2, 2]])
    regions = s.crop_regions(1, (slice(10, 20), slice(15, 19)))
    assert regions == {1: (slice(10, 20), slice(15, 19)), 0: (slice(20, 40), slice(30, 37))}
    lv = s.level(0, regions[0])
    assert lv.origin == [20, 30] and lv.size == [20, 7] and not lv.whole


def test_tile_regions_grow_by_the_reach_of_each_level_and_read_their_nodes():
    s = _schedule((100, 37), [[2, 2], [2, 2]], steps=[3, 4, 5], kernels=[3, 3, 5])
    regions = s.tile_regions([slice(40, 60), slice(0, 10)], split=2)
    # level 0: +-3 cells (3 steps x radius 1); level 1 reads nodes 18..31, 0..6, grown by 4, clipped
    assert regions[0] == (slice(37, 63), slice(0, 13))
    assert regions[1] == (slice(14, 36), slice(0, 11))
    assert regions[2] == (slice(7, 18), slice(0, 6))


def test_one_tiling_rule_levels_with_whole_level_statistics_stay_whole():
    assert _schedule((64, 64), [[2, 2], [2, 2]]).splits() == [1, 2]
    assert _schedule((64, 64), [[2, 2], [2, 2]], whole_level=[False, False, True]).splits() == [1, 2]
    mixed = _schedule((64, 64), [[2, 2], [2, 2]], whole_level=[False, True, True])
    assert mixed.splits() == [1] and not mixed.tileable(2)
    assert _schedule((64, 64), [[2, 2], [2, 2]], whole_level=[True, False, False]).splits() == []
    assert _schedule((64, 64), []).splits() == []                      # one level: nothing to tile
    assert not _schedule((64, 64), [[2, 2]]).tileable(0)


def test_schedule_of_a_model_reads_its_config_and_normalisation():
    from nca_cli.models import build_model
    from nca_cli.recipes import load_recipe

    m = build_model(load_recipe("mednca_pathology")["model"])
    s = m.schedule((100, 100))
    assert s.shapes == [(100, 100), (25, 25)] and s.steps == m.config.steps
    assert s.splits() == []                                            # BatchNorm on every level
    octree = OctreeNCA(NCAConfig(dims=2, input_channels=1, output_channels=1, levels=3, steps=[1, 2, 3]))
    assert octree.schedule((10, 10)).splits() == [1, 2]


def test_upsample_reads_node_i_div_factor_in_absolute_coordinates():
    nodes = torch.tensor([10.0, 11.0, 12.0, 13.0]).reshape(1, 1, 1, 4)        # nodes 5..8 of an axis
    cells = upsample(nodes, (1, 2), (slice(0, 1), slice(11, 16)), start=(0, 5))
    assert cells[0, 0, 0].tolist() == [10, 11, 11, 12, 12]                    # cells 11..15 -> nodes 5,6,6,7,7
    last = upsample(nodes.reshape(1, 4, 1, 1), (2, 1), (slice(0, 7), slice(0, 1)), channels_last=True)
    assert last[0, :, 0, 0].tolist() == [10, 10, 11, 11, 12, 12, 13]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("chunk", [1, 300, 1 << 23])
def test_banded_upsample_equals_one_gather(channels_last, chunk):
    g = torch.Generator().manual_seed(0)
    nodes = torch.randn(2, 7, 5, 3, generator=g)          # [B, *spatial, C]
    if not channels_last:
        nodes = nodes.movedim(-1, 1)
    region = (slice(3, 13), slice(1, 9))
    gathered = upsample(nodes, (2, 2), region, start=(1, 0), channels_last=channels_last)
    banded = upsample(nodes, (2, 2), region, start=(1, 0), channels_last=channels_last, chunk_bytes=chunk)
    assert torch.equal(gathered, banded)
    assert tuple(banded.shape[1:3] if channels_last else banded.shape[2:]) == (10, 8)


def test_upsample_bytes_is_one_band_of_whole_row_blocks_and_its_gather():
    row = 37 * 16 * 2                                                          # one row of float16 [*, 37, 16]
    assert upsample_bytes((100, 37), 16, 2, (2, 2), 1 << 23) == 2 * 100 * row  # the whole state in one band
    assert upsample_bytes((100, 37), 16, 2, (2, 2), 4000) == 2 * 2 * row       # one block of 2 rows
