import numpy as np
import torch

from nca_cli.core.firemask import fire_mask, fires_int, mix_int, step_key, threshold


def spec_mix(x: np.ndarray) -> np.ndarray:
    """``mix`` of the specification in numpy uint32 arithmetic (wrapping), written from the
    docstring of ``core/firemask.py`` and independent of its code."""
    x = np.asarray(x, dtype=np.uint32).copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x5BD1E995)
        x ^= x >> np.uint32(16)
    return x


def spec_mask(shape, seed, level, step, fire_rate, origin=None):
    origin = origin or (0,) * len(shape)
    grids = np.meshgrid(*[np.arange(o, o + n) for o, n in zip(origin, shape)], indexing="ij")
    if len(shape) == 2:
        grids = [np.zeros(shape, np.int64), *grids]
    u32 = lambda v: np.asarray(np.asarray(v, dtype=np.int64) % 2 ** 32, dtype=np.uint32)
    key = spec_mix(spec_mix(spec_mix(u32(seed) ^ np.uint32(0x9E3779B9)) ^ u32(level)) ^ u32(step))
    z, y, x = (u32(g) for g in grids)
    h = spec_mix(spec_mix(spec_mix(key ^ z) ^ y) ^ x)
    return (h >> np.uint32(8)) < round(fire_rate * 2 ** 24)


def test_masks_equal_an_independent_implementation_of_the_specification():
    for shape, seed, level, step, rate, origin in [((13, 17), 0, 0, 0, 0.5, None),
                                                    ((9, 11), 42, 3, 7, 0.25, (100, 200)),
                                                    ((4, 6, 5), 2 ** 32 + 5, 1, 63, 0.75, (3, 0, 2 ** 20)),
                                                    ((5, 7), 123456789, 2, 1, 0.1, (2 ** 31 + 7, 9))]:
        expected = spec_mask(shape, seed, level, step, rate, origin)
        got = fire_mask(shape, seed=seed, level=level, step=step, fire_rate=rate, origin=origin).numpy()
        assert np.array_equal(got, expected), (shape, seed, level, step, rate, origin)
        assert 0 < expected.sum() < expected.size


# Pinned values of the specification: the fused kernels (cuda/nca_cell.h) must agree.
def test_pinned_values():
    assert spec_mix([0, 1, 2, 0xFFFFFFFF]).tolist() == [0, 4293290225, 4291678691, 3846949589]
    assert int(spec_mix(spec_mix(spec_mix(np.uint32(42) ^ np.uint32(0x9E3779B9)) ^ np.uint32(3)) ^ np.uint32(7))) \
        == 1979458801
    assert [mix_int(v) for v in (0, 1, 2, 0xFFFFFFFF)] == [0, 4293290225, 4291678691, 3846949589]
    assert step_key(0, 0, 0) == 775373287
    assert step_key(42, 3, 7) == 1979458801
    assert threshold(0.5) == 1 << 23 and threshold(1.0) == 1 << 24 and threshold(0.0) == 0


def test_vector_equals_scalar_2d_and_3d():
    m2 = fire_mask((7, 11), seed=42, level=3, step=7, fire_rate=0.5, origin=(100, 200))
    for y in range(7):
        for x in range(11):
            assert bool(m2[y, x]) == fires_int(42, 3, 7, (100 + y, 200 + x), 0.5)
    m3 = fire_mask((3, 4, 5), seed=1, level=0, step=2, fire_rate=0.25)
    for z in range(3):
        for y in range(4):
            for x in range(5):
                assert bool(m3[z, y, x]) == fires_int(1, 0, 2, (z, y, x), 0.25)


def test_rate_and_independence():
    m = fire_mask((256, 256), seed=3, level=1, step=4, fire_rate=0.5)
    assert abs(m.float().mean().item() - 0.5) < 0.01
    other = fire_mask((256, 256), seed=3, level=1, step=5, fire_rate=0.5)
    assert abs((m == other).float().mean().item() - 0.5) < 0.02
    assert fire_mask((4, 4), seed=0, level=0, step=0, fire_rate=1.0).all()
    assert not fire_mask((4, 4), seed=0, level=0, step=0, fire_rate=0.0).any()


def test_tile_of_mask_equals_mask_of_tile():
    full = fire_mask((40, 50), seed=9, level=2, step=3, fire_rate=0.5)
    tile = fire_mask((10, 20), seed=9, level=2, step=3, fire_rate=0.5, origin=(15, 25))
    assert torch.equal(full[15:25, 25:45], tile)
