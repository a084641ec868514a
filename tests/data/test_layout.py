import numpy as np

from nca_cli.data.layout import visible_files
from nca_cli.io.resize import nearest_indices, resize_image, resize_labels


def test_visible_files_skip_hidden_and_macos_leftovers(tmp_path):
    (tmp_path / "p.tif").write_bytes(b"x")
    (tmp_path / "._p.tif").write_bytes(b"")
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "__MACOSX" / "p.tif").write_bytes(b"")
    assert visible_files(tmp_path, "*.tif", recursive=True) == [tmp_path / "p.tif"]


def test_resizing():
    assert nearest_indices(4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert resize_labels(label, (6, 2)).tolist() == [[1, 3], [1, 3], [5, 7], [5, 7], [9, 11], [9, 11]]
    image = np.full((10, 12, 3), 200, np.uint8)
    out = resize_image(image, (5, 6))
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8 and (out == 200).all()
    ramp = np.broadcast_to(np.linspace(0, 1, 8, dtype=np.float32)[:, None, None, None], (8, 6, 6, 1))
    out = resize_image(np.ascontiguousarray(ramp), (4, 3, 3))
    assert out.shape == (4, 3, 3, 1) and np.all(np.diff(out[:, 0, 0, 0]) > 0)
