import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
import torch
from PIL import Image

from nca_cli.models import NCAConfig, OctreeNCA, checkpoint


def random_model(dims, inp, out, levels=3, steps=(3, 3, 4), seed=0, factors=None):
    cfg = NCAConfig(dims=dims, input_channels=inp, output_channels=out, levels=levels, steps=list(steps),
                    factors=factors or [])  # default shape: served by the prebuilt kernel library
    m = OctreeNCA(cfg).randomize_(0.15, seed)
    with torch.no_grad():
        for bb in m.backbones:  # a visible bias towards foreground in some places
            bb.fc0.bias.add_(0.05)
    return m


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, args in {"rgb2d": (2, 3, 1), "gray3d": (3, 1, 1), "rgb3d": (3, 3, 2), "gray2d": (2, 1, 1)}.items():
        m = random_model(*args)
        p = root / f"{name}.pt"
        checkpoint.save_model(p, m, None, {"note": "random weights for tests"})
        paths[name] = p
    return paths


@pytest.fixture
def rgb_image():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:90, 0:120]
    img = np.stack([(np.sin(yy / 7.0) + np.cos(xx / 5.0) + 2) * 60, (yy + xx) % 256, rng.integers(0, 255, (90, 120))], -1)
    return img.astype(np.uint8)


def write_oblique_nifti(path, vol):
    """``vol`` as a NIfTI with anisotropic spacing, an origin and a rotated direction; returns the image."""
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.7, 0.8, 3.0))
    img.SetOrigin((10.0, -5.0, 2.5))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    sitk.WriteImage(img, str(path))
    return img


def assert_same_geometry(got, img):
    assert got.GetSize() == img.GetSize()
    assert np.allclose(got.GetSpacing(), img.GetSpacing())
    assert np.allclose(got.GetOrigin(), img.GetOrigin())
    assert np.allclose(got.GetDirection(), img.GetDirection())


def shifted_images(folder, image, count, axis):
    """``count`` PNGs ``img0.png``… in ``folder``: ``image`` rolled by 0, 1, … pixels along ``axis``."""
    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.roll(image, i, axis=axis)).save(folder / f"img{i}.png")
    return folder


def write_pyramid_slide(path, base, *, tile=256, levels=2, mpp=0.5):
    """An RGB pyramidal BigTIFF slide of ``base`` [H, W, 3] at ``mpp`` µm/px: level k is every
    2**k-th pixel, with its resolution tags (what openslide and the slide reader see)."""
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        opts = dict(tile=(tile, tile), photometric="rgb", resolutionunit="CENTIMETER")
        for k in range(levels):
            res = 1e4 / (mpp * 2 ** k)
            place = dict(subifds=levels - 1) if k == 0 else dict(subfiletype=1)
            tw.write(base[::2 ** k, ::2 ** k], resolution=(res, res), **place, **opts)
    return path
