"""Many inputs → many outputs: expansion of files/folders/globs, parts, --continue, progress."""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from ..errors import NCAError
from ..fileio import write_json


@dataclass
class SegmentOptions:
    level: int | None = None
    mpp: float | None = None
    start: float | None = None
    duration: float | None = None
    max_frames: int | None = None
    overlay: Path | None = None
    preview: Path | None = None
    uncertainty: Path | None = None
    ensemble: int = 1
    state_dtype: str = "float16"
    memory_budget: str | None = None
    tiling: str = "auto"
    tile_size: int | None = None
    impl: str = "auto"
    device: str = "auto"
    seed: int = 0
    quiet: bool = False


def expand_inputs(items: list[str]) -> list[Path]:
    """Files as given, folders to their supported files (a DICOM series folder stays whole),
    globs expanded; duplicates removed, order kept."""
    from ..io import is_supported
    from ..io.volume import dicom_series_files

    out: list[Path] = []
    for item in items:
        matches = sorted(glob.glob(item)) if any(ch in item for ch in "*?[") else [item]
        if not matches:
            raise NCAError(f"No input matches '{item}'; check the pattern.")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                if dicom_series_files(p):
                    out.append(p)
                    continue
                found = sorted(q for q in p.iterdir() if q.is_file() and is_supported(q) and not q.name.startswith("."))
                found += sorted(q for q in p.iterdir() if q.is_dir() and dicom_series_files(q))
                if not found:
                    raise NCAError(f"The folder {p} holds no supported image; pass a folder of slides, volumes, "
                                   f"videos or images.")
                out.extend(found)
            elif p.exists():
                out.append(p)
            else:
                raise NCAError(f"The input {p} does not exist; check the path.")
    seen, unique = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def segment_inputs(items: list[str], output: Path, model_file: Path, opts: SegmentOptions, *, num_parts: int = 1,
                   part_id: int = 0, skip_existing: bool = False) -> list[dict]:
    from ..checkpoint import load_model
    from ..io import open_input
    from ..models import is_nca
    from .patchwise import nca_only_flags, recipe_window
    from .pipeline import _default_output_name, segment_one

    if not items:
        raise NCAError("No input given; pass files, folders or globs (e.g. nca segment slide.svs -o mask.tif).")
    if not 0 <= part_id < num_parts:
        raise NCAError(f"--part-id {part_id} must lie in 0..{num_parts - 1} for --num-parts {num_parts}.")
    if opts.ensemble == 1 and opts.uncertainty is not None:
        raise NCAError("--uncertainty needs --ensemble N with N >= 2 (the spread of N runs).")
    inputs = expand_inputs(items)
    inputs = inputs[part_id::num_parts]
    model, payload = load_model(model_file)
    window = None
    if not is_nca(model):
        flags = nca_only_flags(opts)
        if flags:
            many = len(flags) > 1
            raise NCAError(f"{', '.join(flags)} {'apply' if many else 'applies'} to NCA models only, and {model_file} "
                           f"holds a {model.config['architecture']} model; drop {'them' if many else 'it'}.")
        window = recipe_window(payload)
    output = Path(output)
    single = len(expand_inputs(items)) == 1 and output.suffix and not output.is_dir()
    results = []
    with _Progress(opts.quiet) as progress:
        for path in inputs:
            if single:
                out = output
            else:
                with open_input(path, level=opts.level, mpp=opts.mpp, start=opts.start, duration=opts.duration,
                                max_frames=opts.max_frames) as img:
                    out = output / _default_output_name(img, path)
            if skip_existing and out.exists():
                results.append({"input": str(path), "output": str(out), "status": "skipped (exists)"})
                continue
            progress.new_input(path)
            meta = segment_one(path, out, model, Path(model_file), opts, progress, window)
            meta_path = out.parent / ("run_metadata.json" if single else f"{out.name.split('.')[0]}.run_metadata.json")
            write_json(meta_path, meta)
            results.append({"input": str(path), "output": str(out), "status": "done", "metadata": str(meta_path),
                            "megapixels_per_second": meta["megapixels_per_second"],
                            "peak_memory_bytes_per_pixel": meta["peak_memory_bytes_per_pixel"]})
    return results


class _Progress:
    """Rich progress: one bar for the levels of the current run, one for tiles."""

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            disable=quiet, transient=False)
        self.levels = self.tiles = None
        self.name = ""

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def new_input(self, path: Path):
        self.name = path.name

    def start_run(self, run: int, runs: int, levels: int, plan):
        for task in (self.levels, self.tiles):
            if task is not None:
                self.bar.remove_task(task)
        label = f"{self.name}" + (f" run {run + 1}/{runs}" if runs > 1 else "")
        n_levels = levels if plan.mode == "single" else levels - plan.split
        self.levels = self.bar.add_task(f"{label} levels", total=n_levels)
        self.tiles = self.bar.add_task(f"{label} tiles", total=plan.tiles) if plan.mode == "tiled" else None

    def level_done(self, level: int):
        self.bar.advance(self.levels)

    def tile_done(self, done: int, total: int):
        if self.tiles is not None:
            self.bar.update(self.tiles, completed=done, total=total)

    def window_done(self, done: int, total: int):
        """Sliding-window progress of a baseline model (one bar per input)."""
        if done == 1 or self.tiles is None:
            for task in (self.levels, self.tiles):
                if task is not None:
                    self.bar.remove_task(task)
            self.levels = None
            self.tiles = self.bar.add_task(f"{self.name} windows", total=total)
        self.bar.update(self.tiles, completed=done, total=total)
