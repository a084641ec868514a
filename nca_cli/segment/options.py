"""Every option of ``nca segment``, declared once (the CLI builds its flags from this class)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.choices import IMPLS, PREVIEW_STYLES, STATE_DTYPES, TILINGS
from ..core.options import device_option, option


@dataclass(kw_only=True)
class SegmentOptions:
    inputs: list[str] = option([], argument=True, help="Input files, folders or globs.")
    more_inputs: list[str] = option([], "-i", "--input", help="More inputs (repeatable).")
    output: Path = option(..., "-o", "--output",
                          help="Output file (one input) or folder (many); a .geojson file gives QuPath polygons.")
    model: Path = option(..., "-m", "--model", help="model.pt written by `nca train`.")
    level: int | None = option(None, "--level", min=0, help="Slides: pyramid level to segment.")
    mpp: str | None = option(None, "--mpp",
                             help="Resolution to segment 2D inputs at, in µm/px (default: the model's own, recorded "
                                  "in model.pt), or 'native' to segment as stored: slides are read from the nearest "
                                  "finer level and area-averaged to exactly this resolution; images and DICOM are "
                                  "resized from their own resolution (--input-mpp when the file records none) and "
                                  "the mask is written at the input's size.")
    input_mpp: float | None = option(None, "--input-mpp", min=0.0,
                                     help="Slides and images: their resolution in µm/px (level 0), when the file "
                                          "does not record it.")
    scale: float | None = option(None, "--scale", min=0.0,
                                 help="Images and DICOM: resize by this factor before segmenting (mask written back "
                                      "at the input's size).")
    tissue: str = option("auto", "--tissue",
                         help="Slides: auto (detect the tissue on a low-resolution level and skip tiles of glass), "
                              "off, or a tissue mask file (PNG/TIFF at any scale, non-zero = tissue, or GeoJSON "
                              "polygons in level-0 pixels). Other inputs are never masked.")
    start: float | None = option(None, "--start", min=0.0, help="Videos: start time in seconds.")
    duration: float | None = option(None, "--duration", min=0.0, help="Videos: seconds to read.")
    max_frames: int | None = option(None, "--max-frames", min=1, help="Videos: at most this many frames.")
    overlay: Path | None = option(None, "--overlay", help="Videos: write an mp4 with the mask blended on the frames.")
    preview: Path | None = option(None, "--preview",
                                  help="Write a downscaled overlay PNG (volumes and videos: a montage of the three planes).")
    preview_style: str = option("outline", "--preview-style", choices=PREVIEW_STYLES,
                                help="Preview: class outlines, filled classes, or image and mask side by side.")
    geojson: Path | None = option(None, "--geojson",
                                  help="Slides and images: also write the mask as QuPath GeoJSON polygons.")
    geojson_tolerance: float = option(1.0, "--geojson-tolerance", min=0.0,
                                      help="Polygon simplification tolerance in pixels of the segmented level (0: exact).")
    dicom_seg: Path | None = option(None, "--dicom-seg",
                                    help="DICOM inputs: also write the mask as a DICOM SEG (.dcm) referencing the "
                                         "source images (-o mask.dcm writes only the SEG).")
    uncertainty: Path | None = option(None, "--uncertainty",
                                      help="With --ensemble: per-pixel standard deviation image.")
    ensemble: int = option(1, "--ensemble", min=1, help="Stochastic runs; the median of their logits is used.")
    state_dtype: str = option("float16", "--state-dtype", choices=STATE_DTYPES, help="Storage type of the NCA state.")
    memory_budget: str | None = option(None, "--memory-budget",
                                       help="e.g. 8GiB (default and maximum: the memory this device has available).")
    tiling: str = option("auto", "--tiling", choices=TILINGS, help="auto: tile only when one pass does not fit.")
    tile_size: int | None = option(None, "--tile-size", min=16, help="Tile side at level 0 (default: largest that fits).")
    impl: str = option("auto", "--impl", choices=IMPLS, help="auto, fused or torch.")
    device: str = device_option()
    seed: int = option(0, "--seed", help="Seed of the stochastic updates.")
    num_parts: int = option(1, "--num-parts", min=1, help="Split the input list into this many parts.")
    part_id: int = option(0, "--part-id", min=0, help="Which part this process handles (0-based).")
    resume: bool = option(False, "--continue",
                          help="Skip inputs whose results are complete (their run metadata lists every output).")
    quiet: bool = option(False, "-q", "--quiet", help="No progress display.")
    workers: int | None = option(None, "--workers", min=1,
                                 help="Run on a local Dask cluster of this many worker processes (the machine's "
                                      "threads and memory budget split between them).")
    scheduler: str | None = option(None, "--scheduler",
                                   help="Run on an existing Dask cluster at this address (e.g. tcp://head:8786).")
    scheduler_file: Path | None = option(None, "--scheduler-file",
                                         help="Run on the existing Dask cluster this scheduler file describes.")
    dashboard: bool = option(False, "--dashboard", help="With --workers: serve the Dask dashboard (127.0.0.1).")

    @property
    def distributed(self) -> bool:
        """Whether the run goes to a Dask cluster (``segment.distributed``)."""
        return self.workers is not None or self.scheduler is not None or self.scheduler_file is not None

    @property
    def all_inputs(self) -> list[str]:
        return [*self.inputs, *self.more_inputs]

    # Options only the NCAs use: named in the error when given with another model.
    NCA_ONLY = (("ensemble", 1, "--ensemble"), ("uncertainty", None, "--uncertainty"), ("tiling", "auto", "--tiling"),
                ("tile_size", None, "--tile-size"), ("impl", "auto", "--impl"))

    def nca_only_flags(self) -> list[str]:
        return [flag for name, default, flag in self.NCA_ONLY if getattr(self, name) != default]
