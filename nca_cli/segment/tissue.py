"""``--tissue``: segment only the tissue of a whole slide.

``auto`` (the default for slides; other inputs are never masked) detects the tissue on a
low-resolution level once per slide (``nca_cli.io.tissue``); a file path takes a user's mask
(PNG/TIFF at any scale, or GeoJSON); ``off`` segments everything. NCAs then run exact tiles
(``TISSUE_TILE`` cells a side, at the deepest split that fits, unless ``--tiling``/``--tile-size``
say otherwise; one pass when the slide is mostly tissue) and skip the
tiles without tissue; tiles with tissue are computed exactly as in one pass (halos included),
and the mask is ANDed with the tissue, so it equals the single pass ANDed with the tissue mask.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..inference.sources import band_rows
from ..io.tissue import TissueMask, detect_tissue, read_tissue

TISSUE_TILE = {"cpu": 256, "cuda": 1024}   # tile side per device (a GPU needs larger tiles to be busy)
MOSTLY_TISSUE = 0.8   # above this tissue fraction one pass is cheaper than tiles: the mask is only ANDed


def tissue_for(source, opts, log) -> TissueMask | None:
    """The tissue mask of ``source`` as ``--tissue`` asks (None: segment everything)."""
    choice = opts.tissue
    if source.kind != "slide" or choice == "off":
        return None
    if choice == "auto":
        if source.channels < 3:   # a label mask or a grey slide: nothing to detect tissue on
            return None
        return detect_tissue(source.path)
    return read_tissue(Path(choice), tuple(source.meta["level0_shape"]))


@dataclass
class TissueRun:
    """One slide's tissue during a run: the tile predicate, then the mask ANDed with the tissue."""

    tissue: TissueMask
    downsample: float
    tiles_skipped: int = 0
    tiles_seen: int = 0
    _cores: set = field(default_factory=set)

    def keep(self, core) -> bool:
        key = tuple((s.start, s.stop) for s in core)
        first = key not in self._cores
        self._cores.add(key)
        held = self.tissue.holds_tissue(core, self.downsample)
        if first:
            self.tiles_seen += 1
            self.tiles_skipped += not held
        return held

    def apply(self, labels: np.ndarray) -> None:
        """Zero the labels outside the tissue, band by band."""
        h, w = labels.shape[:2]
        rows = band_rows((h, w))
        for r0 in range(0, h, rows):
            band = slice(r0, min(h, r0 + rows))
            labels[band][~self.tissue.pixels(band, w, self.downsample)] = 0

    def record(self) -> dict:
        return {"tissue": self.tissue.source, "tissue_fraction": self.tissue.fraction,
                "tiles_skipped": self.tiles_skipped, "tiles_with_tissue": self.tiles_seen - self.tiles_skipped}


def tileable(model) -> bool:
    """Whether an NCA can run exact tiles (no BatchNorm on whole levels)."""
    backbones = getattr(model, "backbones", None)
    return bool(backbones) and len(backbones) > 1 and all(bb.normalization != "batch" for bb in backbones)


def tiling_for(opts, tissue: TissueMask | None, model, device_type: str) -> tuple[str, int | None]:
    """(tiling, tile size): with tissue, exact tiles of ``TISSUE_TILE`` unless the flags say
    otherwise (models that cannot be tiled, and slides that are mostly tissue, only have their
    mask ANDed with the tissue)."""
    if (tissue is None or opts.tiling != "auto" or opts.tile_size is not None or not tileable(model)
            or tissue.fraction > MOSTLY_TISSUE):
        return opts.tiling, opts.tile_size
    return "force", TISSUE_TILE.get(device_type, TISSUE_TILE["cpu"])


def deepest_split(plan, predictor, image, *, budget: int, baseline: int, normalization, ensemble: int,
                  want_std: bool):
    """``plan`` with its tiles reaching the deepest level that fits: skipped tiles then save every
    level but the coarsest (exact at any split; the memory model of each is the plan's own)."""
    from ..inference.memory import Plan, tiled_phases, usable_budget

    if plan.mode != "tiled":
        return plan
    model = predictor.model
    for split in range(model.config.levels - 1, plan.split, -1):
        phases, count = tiled_phases(model, image.spatial_shape, split=split, tile=plan.tile, dtype=predictor.dtype,
                                     impl=predictor.impl, cost=predictor.cost(image, normalization), ensemble=ensemble,
                                     want_std=want_std, device_type=predictor.device.type)
        need = max(phases.values()) + baseline
        if need <= usable_budget(budget):     # the margin plan_run keeps, as for every plan
            return Plan("tiled", need, split, plan.tile, count, phases)
    return plan
