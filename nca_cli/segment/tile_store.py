"""The scratch folder of one input segmented tile by tile on several workers.

``.<mask name>.nca-tiles/`` beside the mask holds:

- ``coarse.pt``: the coarse levels computed once on the whole input (the state at the split
  level and the input pyramid's levels 1 .. split-1), written atomically by the input's task
  and read by every tile task, which reads only its own region of level 0 from the input;
- ``labels.zarr``: the uint8 label map, one chunk per tile (tile cores start on the chunk
  grid), so each tile task writes its own chunk and no lock is needed; zarr writes a chunk
  under a temporary name and renames it, and a repeated tile writes the same bytes.

The folder is removed once the outputs are assembled from it.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.files import atomic_path
from ..inference.sources import FileSource, band_rows

STORE_SUFFIX = ".nca-tiles"


def scratch_folder(mask: Path) -> Path:
    return mask.with_name(f".{mask.name}{STORE_SUFFIX}")


def save_coarse(folder: Path, state: torch.Tensor, levels: Sequence[torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "coarse.pt") as tmp:
        torch.save({"state": state.clone(), "levels": [lv.clone() for lv in levels]}, tmp)


def load_coarse(folder: Path) -> tuple[torch.Tensor, list[torch.Tensor]]:
    data = torch.load(folder / "coarse.pt", weights_only=True, mmap=True)
    return data["state"], list(data["levels"])


class StoredSource(FileSource):
    """A :class:`FileSource` whose coarse levels come from ``coarse.pt`` instead of being built
    from the whole input: level 0 is read from the file, region by region."""

    def __init__(self, image, shapes, levels: Sequence[torch.Tensor], dtype: torch.dtype, normalizer,
                 device: torch.device | str = "cpu"):
        self.image = image
        self.keep = True
        self.batch = 1
        self.shapes = shapes
        self.dtype = dtype
        self.device = device
        self.normalize = normalizer
        self.levels = [None, *levels]


def open_labels(folder: Path, shape: Sequence[int], chunks: Sequence[int]):
    """The tile label store: opened when it exists with this shape and chunking, else created empty
    (:func:`labels_exist` tells which)."""
    import zarr

    path = folder / "labels.zarr"
    chunks = tuple(min(int(c), int(n)) for c, n in zip(chunks, shape))
    if path.exists():
        try:
            arr = zarr.open_array(str(path), mode="r+")
            if tuple(arr.shape) == tuple(shape) and tuple(arr.chunks) == chunks:
                return arr
        except Exception:   # an unreadable store from a killed run: made anew below
            pass
        shutil.rmtree(path)
    folder.mkdir(parents=True, exist_ok=True)
    return zarr.create_array(str(path), shape=tuple(shape), chunks=chunks, dtype="uint8", fill_value=0,
                             compressors=None)


def labels_exist(folder: Path, shape: Sequence[int], chunks: Sequence[int]) -> bool:
    """Whether a readable tile store of this shape and chunking is there (tiles a manifest lists
    can be trusted only then)."""
    import zarr

    try:
        arr = zarr.open_array(str(folder / "labels.zarr"), mode="r")
    except Exception:   # missing or unreadable
        return False
    return tuple(arr.shape) == tuple(shape) and tuple(arr.chunks) == tuple(min(int(c), int(n)) for c, n in
                                                                            zip(chunks, shape))


def read_labels(folder: Path, out: np.ndarray) -> np.ndarray:
    """The whole label map into ``out`` (a possibly memory-mapped array), band by band."""
    import zarr

    arr = zarr.open_array(str(folder / "labels.zarr"), mode="r")
    rows = band_rows(arr.shape, arr.chunks[0])
    for r0 in range(0, arr.shape[0], rows):
        out[r0:r0 + rows] = arr[r0:r0 + rows]
    return out


def remove_scratch(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
