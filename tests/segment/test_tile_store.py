import numpy as np
import pytest

from nca_cli.segment.tile_store import labels_exist, open_labels, read_labels, scratch_folder

pytest.importorskip("zarr")


def test_tiles_written_chunk_by_chunk_read_back_whole(tmp_path):
    folder = scratch_folder(tmp_path / "mask.tif")
    assert folder.name == ".mask.tif.nca-tiles" and not labels_exist(folder, (50, 70), (32, 32))
    store = open_labels(folder, (50, 70), (32, 32))
    want = np.random.default_rng(0).integers(0, 3, (50, 70), dtype=np.uint8)
    for r in range(0, 50, 32):
        for c in range(0, 70, 32):
            store[r:r + 32, c:c + 32] = want[r:r + 32, c:c + 32]
    assert labels_exist(folder, (50, 70), (32, 32)) and not labels_exist(folder, (50, 70), (16, 16))
    assert np.array_equal(read_labels(folder, np.zeros((50, 70), np.uint8)), want)
    assert open_labels(folder, (50, 70), (32, 32))[:].any()            # kept: same shape and chunks


def test_an_unreadable_store_is_not_trusted_and_made_anew(tmp_path):
    folder = tmp_path / "scratch"
    open_labels(folder, (40, 40), (20, 20))[:] = 5
    (folder / "labels.zarr" / "zarr.json").write_text("{not json")   # a killed run's leftovers
    assert not labels_exist(folder, (40, 40), (20, 20))
    assert not open_labels(folder, (40, 40), (20, 20))[:].any()
