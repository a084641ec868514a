"""The phone-photo-of-a-monitor shift: reproducible, label-aligned, and strong enough to matter."""
import numpy as np
import pytest

from nca_cli.data.shift import draw_params, photograph, source_coordinates, warp_label


def _square(size=64):
    img = np.full((size, size), 40, np.uint8)
    img[16:48, 20:44] = 220
    mask = (img > 128).astype(np.uint8)
    return img, mask


def test_same_seed_same_photo_and_strength_zero_is_identity():
    img, mask = _square()
    a, (ma,) = photograph(img, (mask,), seed=5)
    b, (mb,) = photograph(img, (mask,), seed=5)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not np.array_equal(a, photograph(img, (mask,), seed=6)[0])
    same, (same_mask,) = photograph(img, (mask,), seed=5, strength=0)
    assert np.array_equal(same, img) and np.array_equal(same_mask, mask)


def test_shape_dtype_kept_for_grey_and_rgb():
    img, mask = _square()
    rgb = np.stack([img, img // 2, img], -1)
    out, (moved,) = photograph(rgb, (mask,), seed=1)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and moved.dtype == mask.dtype
    with pytest.raises(ValueError):
        photograph(img.astype(np.float32), seed=1)
    with pytest.raises(ValueError):
        photograph(img, (mask[:10],), seed=1)


def test_labels_move_with_the_image():
    img, mask = _square()
    out, (moved,) = photograph(img, (mask,), seed=3)
    # the bright square, wherever the camera put it, is where the moved mask is
    inside, outside = out[moved == 1].mean(), out[(moved == 0) & (out > 0)].mean()
    assert inside > outside + 40
    p = draw_params(3)
    sy, sx = source_coordinates(p, *img.shape)
    assert np.array_equal(warp_label(mask, sy, sx), moved)
    assert moved.sum() != mask.sum()          # the homography really moved it


def test_the_photo_washes_out_contrast():
    img, mask = _square()
    out, (moved,) = photograph(img, (mask,), seed=2)
    dark, bright = out[(moved == 0) & (out > 0)].mean(), out[moved == 1].mean()
    assert dark > 40 + 20                      # the black level is lifted
    assert bright - dark < 0.9 * (220 - 40)    # less contrast between the same regions
