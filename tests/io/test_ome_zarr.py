"""OME-Zarr label images: valid NGFF 0.4 metadata, nearest pyramid, physical scale, region writes, atomic."""
import sys

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr_models.v04 import ImageLabel

from nca_cli.core.errors import NCAError
from nca_cli.io.ome_zarr import LabelStore, axes_for, chunk_regions, write_ome_zarr
from nca_cli.io.palette import PALETTE


def _slide_labels(h=1100, w=1300):
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy // 37 + xx // 53) % 3).astype(np.uint8)      # every level sees all three classes, not uniform blocks


def test_a_slide_mask_with_valid_metadata_a_nearest_pyramid_and_its_mpp(tmp_path):
    labels = _slide_labels()
    path = write_ome_zarr(tmp_path / "mask.ome.zarr", labels, "slide", {"mpp": 0.25}, ["tumour", "stroma"])
    group = zarr.open_group(str(path), mode="r")
    ImageLabel.from_zarr(group)                                # raises on metadata invalid for NGFF 0.4
    attrs = group.attrs.asdict()
    multiscale = attrs["multiscales"][0]
    assert multiscale["version"] == "0.4" and [a["unit"] for a in multiscale["axes"]] == ["micrometer"] * 2
    datasets = multiscale["datasets"]
    assert len(datasets) == 4                                  # 1300 -> 650 -> 325 -> 163 <= 256
    for k, ds in enumerate(datasets):
        level = group[ds["path"]][:]
        assert np.array_equal(level, labels[:: 2 ** k, :: 2 ** k])
        assert ds["coordinateTransformations"][0]["scale"] == [0.25 * 2 ** k] * 2
    label = attrs["image-label"]
    assert [p["class"] for p in label["properties"]] == ["background", "tumour", "stroma"]
    assert label["colors"][0]["rgba"][3] == 0 and label["colors"][2]["rgba"][:3] == PALETTE[2].tolist()


def test_the_ome_zarr_reader_opens_it_as_labels_with_the_scale(tmp_path):
    labels = _slide_labels(600, 700)
    write_ome_zarr(tmp_path / "m.ome.zarr", labels, "slide", {"mpp": 0.5}, ["a", "b"])
    node = next(iter(Reader(parse_url(str(tmp_path / "m.ome.zarr")))()))
    assert any(isinstance(s, Label) for s in node.specs) and any(isinstance(s, Multiscales) for s in node.specs)
    assert np.array_equal(np.asarray(node.data[0]), labels)
    assert node.metadata["coordinateTransformations"][0] == [{"type": "scale", "scale": [0.5, 0.5]}]


def test_volumes_in_mm_and_videos_in_seconds():
    vol = axes_for("volume", {"spacing": (0.7, 0.8, 3.0)}, 3)
    assert [(a.name, a.unit, a.scale) for a in vol] == [("z", "millimeter", 3.0), ("y", "millimeter", 0.8),
                                                        ("x", "millimeter", 0.7)]
    video = axes_for("video", {"fps": 25.0}, 3)
    assert [(a.name, a.type, a.unit) for a in video] == [("t", "time", "second"), ("y", "space", None),
                                                         ("x", "space", None)]
    assert video[0].scale == pytest.approx(0.04)
    assert [a.unit for a in axes_for("image", {}, 2)] == [None, None]


def test_a_volume_pyramid_halves_space_and_never_time(tmp_path):
    labels = np.random.default_rng(0).integers(0, 3, (8, 300, 520), dtype=np.uint8)
    write_ome_zarr(tmp_path / "v.ome.zarr", labels, "volume", {"spacing": (0.7, 0.8, 3.0)}, ["a", "b"])
    group = zarr.open_group(str(tmp_path / "v.ome.zarr"), mode="r")
    ImageLabel.from_zarr(group)
    assert np.array_equal(group["1"][:], labels[::2, ::2, ::2])
    assert group.attrs["multiscales"][0]["datasets"][1]["coordinateTransformations"][0]["scale"] == [6.0, 1.6, 1.4]
    write_ome_zarr(tmp_path / "t.ome.zarr", labels, "video", {"fps": 10.0}, ["a", "b"])
    video = zarr.open_group(str(tmp_path / "t.ome.zarr"), mode="r")
    assert np.array_equal(video["1"][:], labels[:, ::2, ::2])
    assert video.attrs["multiscales"][0]["datasets"][1]["coordinateTransformations"][0]["scale"] == [0.1, 2.0, 2.0]


def test_tiles_in_any_order_write_their_own_chunks(tmp_path):
    labels = _slide_labels(700, 1100)
    labels[256:512, 512:768] = 0                               # one chunk of background: never stored
    axes = axes_for("slide", {"mpp": 1.0}, 2)
    store = LabelStore(tmp_path / "s", labels.shape, axes, ["a", "b"], (256, 256))
    regions = list(chunk_regions(labels.shape, store.chunks))
    assert len(regions) == 3 * 5
    expected = set()
    for region in reversed(regions):                           # e.g. tiles finishing out of order
        store.write(region, labels[region])
        if labels[region].any():
            expected.add(f"{region[0].start // 256}/{region[1].start // 256}")
        stored = {f"{p.parent.name}/{p.name}" for p in (tmp_path / "s" / "0").glob("*/*")}
        assert stored == expected                              # each tile wrote its own chunk, no other
    assert "1/2" not in expected
    store.finish()
    assert np.array_equal(store.levels[0][:], labels) and np.array_equal(store.levels[2][:], labels[::4, ::4])


def test_a_failed_write_leaves_nothing_and_a_store_is_replaced_whole(tmp_path, monkeypatch):
    old = write_ome_zarr(tmp_path / "m.ome.zarr", np.ones((40, 50), np.uint8), "image", {}, ["a"])

    def fail(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LabelStore, "finish", fail)
    with pytest.raises(NCAError, match="disk is full"):
        write_ome_zarr(old, np.zeros((40, 50), np.uint8), "image", {}, ["a"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.ome.zarr"]
    assert zarr.open_group(str(old), mode="r")["0"][:].all()  # the previous store is untouched
    monkeypatch.undo()
    write_ome_zarr(old, np.full((20, 30), 2, np.uint8), "image", {}, ["a", "b"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.ome.zarr"]
    assert zarr.open_group(str(old), mode="r")["0"].shape == (20, 30)
    with pytest.raises(NCAError, match="ending in .ome.zarr"):
        write_ome_zarr(tmp_path / "m.zarr", np.zeros((4, 4), np.uint8), "image", {}, ["a"])
    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(NCAError, match=r'pip install "nca\[formats\]"'):
        write_ome_zarr(tmp_path / "n.ome.zarr", np.zeros((4, 4), np.uint8), "image", {}, ["a"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.ome.zarr"]

