"""Segment one input: open, plan memory, run (single pass or exact tiles), write outputs."""
from __future__ import annotations

import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import NCAError
from ..fileio import sha256_file
from ..inference.memory import available_memory, parse_size, plan_run
from ..inference.runner import drive
from ..inference.sources import FileSource
from ..inference.tiled import run_tiled
from .labels import EnsembleAccumulator, logits_to_labels

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def check_compatible(model, image, path: Path) -> None:
    c = model.config
    if image.dims != c.dims:
        what = {2: "2D image or slide", 3: "3D volume or video"}
        raise NCAError(f"{path} is a {what[image.dims]} but the model is {c.dims}D; "
                       f"use a {c.dims}D model (or a {what[c.dims]} input).")
    if image.channels != c.input_channels:
        raise NCAError(f"{path} has {image.channels} channel(s) but the model takes {c.input_channels}; "
                       f"convert the input to {c.input_channels} channel(s) or use a matching model.")


def _default_output_name(image, path: Path) -> str:
    stem = path.name
    for suffix in (".nii.gz", ".ome.tiff", ".ome.tif"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem = path.stem if path.is_file() else path.name
    ext = {"slide": ".tif", "video": ".nii.gz", "image": ".png"}.get(image.kind)
    if image.kind == "volume":
        src = "".join(path.suffixes[-2:]).lower() if path.name.lower().endswith(".nii.gz") else path.suffix.lower()
        ext = src if src in (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd") else ".nii.gz"
    return f"{stem}_mask{ext}"


def write_labels(image, labels: np.ndarray, out: Path) -> None:
    from .. import io

    suffix = "".join(out.suffixes).lower()
    if image.kind == "slide" or (image.dims == 2 and suffix.endswith((".tif", ".tiff")) and labels.size > 4096 ** 2):
        io.write_pyramidal_mask(out, labels, image.meta.get("mpp"))
    elif image.kind == "video" or (image.dims == 3 and suffix.endswith(".npz")):
        io.write_label_volume(out, labels, image.meta)
    elif image.dims == 3:
        io.write_volume(out, labels, image.meta)
    else:
        io.write_mask_image(out, labels)


def segment_one(in_path: Path, out_path: Path, model, model_file: Path, opts, progress=None, window=None) -> dict:
    """Segment ``in_path`` into ``out_path``; returns the run metadata (also written beside it).

    Models other than NCAs run patch-wise (``patchwise``; ``window``: their training patch)."""
    from .. import io
    from ..kernels import resolve_impl
    from ..models import is_nca
    from ..training.trainer import resolve_device

    if not is_nca(model):
        from .patchwise import segment_patchwise

        return segment_patchwise(in_path, out_path, model, model_file, opts, progress, window)
    t_start = time.perf_counter()
    rss0 = current_rss_bytes()
    device = resolve_device(opts.device)
    dtype = DTYPES[opts.state_dtype]
    model = model.to(device)
    c = model.config
    image = io.open_input(in_path, level=opts.level, mpp=opts.mpp, start=opts.start, duration=opts.duration,
                          max_frames=opts.max_frames)
    try:
        check_compatible(model, image, in_path)
        if image.dtype != np.uint8:
            io.check_finite(image.read(), in_path)
        impl = resolve_impl(opts.impl, list(model.backbones), device)
        budget = parse_size(opts.memory_budget) if opts.memory_budget else available_memory(device)
        baseline = rss0 if device.type == "cpu" else 0
        plan = plan_run(model, image.spatial_shape, dtype=dtype, impl=impl, budget=budget, tiling=opts.tiling,
                        tile_size=opts.tile_size, ensemble=opts.ensemble, baseline=baseline, name=str(in_path))
        source = FileSource(image, c.factors, c.pyramid, dtype, device,
                            keep=plan.mode != "single" or opts.ensemble > 1)
        shape = image.spatial_shape
        labels = np.zeros(shape, dtype=np.uint8)
        acc = EnsembleAccumulator(opts.ensemble, shape, c.output_channels) if opts.ensemble > 1 else None
        level_times: dict[int, float] = {}
        out_ch = slice(c.input_channels, c.input_channels + c.output_channels)

        def on_level(level, seconds):
            level_times[level] = level_times.get(level, 0.0) + seconds
            if progress is not None:
                progress.level_done(level)

        def emit(run, region, logits):
            if acc is not None:
                acc.add(run, region, logits)
            else:
                labels[tuple(region)] = logits_to_labels(logits).cpu().numpy()

        for run in range(opts.ensemble):
            seed = opts.seed + run
            if progress is not None:
                progress.start_run(run, opts.ensemble, c.levels, plan)
            if plan.mode == "single":
                state = drive(model, source, impl=impl, seed=seed, state_dtype=dtype, device=device, on_level=on_level)
                rows = max(1, (1 << 22) // max(1, int(np.prod(shape[1:]))))
                for r0 in range(0, shape[0], rows):
                    band = slice(r0, min(r0 + rows, shape[0]))
                    emit(run, [band], state[0, band][..., out_ch].float())
                del state
            else:
                for core, state in run_tiled(model, source, split=plan.split, tile=plan.tile, impl=impl, seed=seed,
                                             state_dtype=dtype, device=device, on_level=on_level,
                                             on_tile=progress.tile_done if progress is not None else None):
                    emit(run, core, state[0][..., out_ch].float())
                    del state  # let the tile's memory go before the next tile is computed
        del source
        nqm, std_map = None, None
        if acc is not None:
            std_map, nqm = acc.finish(labels, want_std=opts.uncertainty is not None)
            del acc
        written = write_outputs(image, labels, out_path, opts, std_map)
        return run_record(image, in_path, model_file, opts, device, labels, written, t_start) | {
            "impl": impl, "state_dtype": opts.state_dtype,
            "mode": plan.mode, "split_level": plan.split, "tile": plan.tile, "tiles": plan.tiles,
            "predicted_peak_bytes": plan.predicted_bytes, "memory_budget_bytes": budget,
            "level_seconds": {str(k): v for k, v in sorted(level_times.items())},
            "ensemble": opts.ensemble, "nqm": nqm,
        }
    finally:
        image.close()


def write_outputs(image, labels: np.ndarray, out_path: Path, opts, std_map: np.ndarray | None = None) -> list[str]:
    """The mask, and the uncertainty map, preview and video overlay when asked; returns the paths."""
    from .. import io

    write_labels(image, labels, out_path)
    written = [str(out_path)]
    if opts.uncertainty is not None and std_map is not None:
        unc = _sibling(opts.uncertainty, out_path)
        if image.dims == 3:
            _write_float_volume(unc, std_map, image)
        else:
            _write_float_tiff(unc, std_map, image.meta.get("mpp"))
        written.append(str(unc))
    if opts.preview is not None:
        prev = _sibling(opts.preview, out_path)
        _write_preview(image, labels, prev)
        written.append(str(prev))
    if opts.overlay is not None and image.kind == "video":
        ov = _sibling(opts.overlay, out_path)
        io.write_overlay_mp4(ov, image.read(), labels, image.meta.get("fps", 25.0))
        written.append(str(ov))
    return written


def run_record(image, in_path: Path, model_file: Path, opts, device, labels: np.ndarray, written: list[str],
               t_start: float) -> dict:
    """The run_metadata.json fields every model kind shares (measured now: wall time, peak memory)."""
    wall = time.perf_counter() - t_start
    shape = image.spatial_shape
    cells = int(np.prod(shape))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    return {
        "tool": "nca", "version": __version__, "input": str(in_path), "outputs": written,
        "checkpoint": str(model_file), "checkpoint_sha256": sha256_file(model_file),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "seed": opts.seed, "device": str(device), "input_kind": image.kind, "shape": list(shape),
        "megapixels": cells / 1e6, "peak_memory_bytes": int(peak), "peak_memory_bytes_per_pixel": peak / cells,
        "wall_seconds": wall, "megapixels_per_second": cells / 1e6 / wall,
        "foreground_fraction": float((labels > 0).mean()), "host": platform.node(), "torch": torch.__version__,
    }


def _sibling(path: Path, out_path: Path) -> Path:
    """An auxiliary output path: used as given for one input; inside a folder, named after the output."""
    path = Path(path)
    if path.is_dir() or (not path.suffix):
        stem = out_path.name.split(".")[0]
        return path / f"{stem}{'_' if stem else ''}{out_path.suffix}"
    return path


def _write_preview(image, labels: np.ndarray, path: Path) -> None:
    from .. import io

    if image.dims == 3:
        mid = labels.shape[0] // 2
        pixels = image.read((slice(mid, mid + 1),) + tuple(slice(0, n) for n in image.spatial_shape[1:]))[0]
        lab = labels[mid]
    else:
        step = max(1, max(labels.shape) // 2048)
        lab = labels[::step, ::step]
        if image.kind == "slide" and step > 1:
            pixels = image.read_downsampled(step)[: lab.shape[0], : lab.shape[1]]
        else:
            pixels = image.read()[::step, ::step]
    if pixels.dtype != np.uint8:
        lo, hi = np.percentile(pixels, [0.5, 99.5])
        pixels = (np.clip((pixels - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    io.write_preview(path, pixels, lab)


def _write_float_tiff(path: Path, data: np.ndarray, mpp: float | None) -> None:
    import tifffile

    from ..fileio import atomic_path

    kwargs = {}
    if mpp:
        kwargs = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, tile=(256, 256) if min(data.shape) >= 256 else None, bigtiff=data.nbytes > 2 ** 31,
                         compression="zlib", **kwargs)


def _write_float_volume(path: Path, data: np.ndarray, image) -> None:
    import SimpleITK as sitk

    from ..fileio import atomic_path

    with atomic_path(path) as tmp:
        if str(path).lower().endswith(".npz"):
            with open(tmp, "wb") as f:
                np.savez_compressed(f, std=data)
            return
        img = sitk.GetImageFromArray(data)
        for key, setter in (("spacing", img.SetSpacing), ("origin", img.SetOrigin), ("direction", img.SetDirection)):
            if image.meta.get(key) is not None:
                setter(tuple(image.meta[key]))
        sitk.WriteImage(img, str(tmp))
