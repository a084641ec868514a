import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.inference.windows import Stage1Mean, Stage2Input, sliding_window_predict
from nca_cli.models import build_model, checkpoint
from nca_cli.segment.options import SegmentOptions
from nca_cli.segment.run import segment_inputs

from .conftest import assert_same_geometry, write_oblique_nifti


def baseline(tmp_path, name, dims, cin, cout, patch=None, **options):
    """A randomly initialised baseline saved as model.pt (with a recipe when ``patch`` is given)."""
    torch.manual_seed(0)
    section = {"architecture": name, "dims": dims, "input_channels": cin, "output_channels": cout, **options}
    model = build_model(section).eval()
    recipe = {"name": f"test_{name}", "model": model.config.to_dict(), "data": {"patch": patch}} if patch else None
    path = tmp_path / f"{name}{dims}d.pt"
    checkpoint.save_model(path, model, recipe, {"note": "random weights for tests"})
    return path


def run(inputs, out, model, **kw):
    kw.setdefault("quiet", True)
    return segment_inputs(SegmentOptions(inputs=[str(i) for i in inputs], output=out, model=model, **kw))


def test_nifti_with_meunet_keeps_geometry(tmp_path):
    model = baseline(tmp_path, "meunet", 3, 1, 3, patch=[16, 16, 16])
    vol = (np.random.default_rng(2).random((19, 20, 17)) * 1000).astype(np.float32)
    src = tmp_path / "vol.nii.gz"
    img = write_oblique_nifti(src, vol)
    out = tmp_path / "out" / "vol_mask.nii.gz"
    run([src], out, model)
    got = sitk.ReadImage(str(out))
    assert_same_geometry(got, img)
    labels = sitk.GetArrayFromImage(got)
    # the same labels as the sliding window over the whole (normalised) volume, argmax of 3 classes
    net, _ = checkpoint.load_model(model)
    lo, hi = np.percentile(vol, [0.5, 99.5])
    x = torch.from_numpy((np.clip(vol, lo, hi) - lo) / (hi - lo)).float()[None, None]
    expected = sliding_window_predict(net, x, (16, 16, 16))[0].argmax(0).numpy()
    assert np.array_equal(labels, expected) and labels.max() <= 2
    meta = json.loads((tmp_path / "out" / "vol_mask.run_metadata.json").read_text())
    assert meta["impl"] == "sliding-window" and meta["architecture"] == "meunet" and meta["tile"] == [16, 16, 16]
    assert meta["tiles"] == 2 * 2 * 2 and meta["shape"] == [19, 20, 17]


def test_png_with_unet_2d(tmp_path, rgb_image):
    model = baseline(tmp_path, "unet", 2, 3, 2, num_encoding_blocks=3, out_channels_first_layer=4)
    src = tmp_path / "a.png"
    Image.fromarray(rgb_image).save(src)
    out = tmp_path / "out" / "a_mask.png"
    res = run([src], out, model, preview=tmp_path / "out" / "preview.png")
    mask = np.array(Image.open(out))
    assert mask.shape == rgb_image.shape[:2] and set(np.unique(mask)) <= {0, 1, 2}
    assert Image.open(tmp_path / "out" / "preview.png").size[0] > 0 and res[0]["status"] == "done"
    meta = json.loads((tmp_path / "out" / "a_mask.run_metadata.json").read_text())
    assert meta["tile"] == [92, 120] and meta["tiles"] == 1  # default window, capped at the image (divisor 4)


def test_cascade_segments_in_two_passes(tmp_path):
    model = baseline(tmp_path, "meunet_cascade", 2, 1, 3, patch=[32, 32])
    src = tmp_path / "g.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(src)
    out = tmp_path / "g_mask.png"
    run([src], out, model)
    net, _ = checkpoint.load_model(model)
    x = torch.from_numpy(np.array(Image.open(src))).float()[None, None] / 255
    stage1 = sliding_window_predict(Stage1Mean(net), x, (32, 32)).argmax(1)
    onehot = torch.nn.functional.one_hot(stage1, 3).movedim(-1, 1).float()
    expected = sliding_window_predict(Stage2Input(net, 1), torch.cat([x, onehot], 1), (32, 32))[0].argmax(0)
    assert np.array_equal(np.array(Image.open(out)), expected.numpy())


def test_nca_only_flags_and_wrong_input_rejected(tmp_path, rgb_image):
    model = baseline(tmp_path, "unet", 2, 3, 1, num_encoding_blocks=2, out_channels_first_layer=4)
    src = tmp_path / "a.png"
    Image.fromarray(rgb_image).save(src)
    with pytest.raises(NCAError, match="--ensemble, --tiling apply to NCA models only"):
        run([src], tmp_path / "m.png", model, ensemble=3, tiling="force")
    grey = tmp_path / "g.png"
    Image.fromarray(rgb_image[..., 0]).save(grey)
    with pytest.raises(NCAError, match="takes 3"):
        run([grey], tmp_path / "g_mask.png", model)
