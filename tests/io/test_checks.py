"""NaN/Inf detection before segmentation."""
from __future__ import annotations

import numpy as np
import pytest

from nca_cli.core.errors import NCAError
from nca_cli.io import check_finite, checks


def test_finite_arrays_pass():
    check_finite(np.zeros((3, 4), np.float32), "a.nii")
    check_finite(np.full((3, 4), 255, np.uint8), "a.png")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_raises_naming_file(bad):
    arr = np.zeros((5, 6, 7), np.float32)
    arr[4, 5, 6] = bad
    with pytest.raises(NCAError, match=r"scan\.nii\.gz contains NaN or Inf values; fix or mask them before segmenting\."):
        check_finite(arr, "scan.nii.gz")


def test_large_arrays_scanned_in_slabs(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "_CHUNK_ELEMENTS", 100)
    mm = np.memmap(tmp_path / "v.raw", dtype=np.float32, mode="w+", shape=(50, 10, 10))
    check_finite(mm, "v.raw")
    mm[49, 9, 9] = np.nan
    with pytest.raises(NCAError, match="v.raw"):
        check_finite(mm, "v.raw")
