"""`nca segment` serial against `--workers N` on the same machine: wall time, throughput, overhead.

Two workloads, each one `nca segment` process per mode: a folder of small RGB images (one task
per image) and one synthetic slide tiled with `--tiling force` (one task per exact tile, then
one assembly). The outputs of both modes are compared byte for byte. Per-task overhead is
(distributed wall - cluster start - serial wall) / tasks (the start: until the client is
connected to running workers, from the run manifest); the peak memory per worker comes from the run
manifest (the largest peak resident memory a worker reported after a task).

    python benchmarks/distributed.py --images 8 --image-side 1024 --slide-side 4096 --tile 1024 --workers 2 \\
        --out benchmarks/results/distributed_cpu.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def make_inputs(workdir: Path, images: int, side: int, slide_side: int) -> tuple[Path, Path]:
    from PIL import Image

    folder = workdir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        p = folder / f"img{i}.png"
        if not p.exists():
            Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(p)
    slide = workdir / f"slide_{slide_side}.tif"
    if not slide.exists():
        from nca_cli.data.synthetic import make_synthetic_slide

        make_synthetic_slide(slide, slide_side, slide_side, seed=11)
    return folder, slide


def segment(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nca_cli", "segment", *args, "-q"], check=True, env=env)
    return time.perf_counter() - t


def same_files(a: Path, b: Path, pattern: str) -> bool:
    names = sorted(p.name for p in a.glob(pattern))
    return bool(names) and names == sorted(p.name for p in b.glob(pattern)) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main(argv=None) -> int:
    from segment_slide import random_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--image-side", type=int, default=1024)
    ap.add_argument("--slide-side", type=int, default=4096)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nca-distributed-bench"))
    ap.add_argument("--out", type=Path, default=None, help="append the markdown table to this file")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder, slide = make_inputs(args.workdir, args.images, args.image_side, args.slide_side)
    model = random_model(args.workdir / "random_model.pt")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    workloads = [
        (f"{args.images} images {args.image_side}²", [str(folder)], "images", [], "*.png",
         args.images * args.image_side ** 2 / 1e6, args.images),
        (f"slide {args.slide_side}² tiled ({args.tile}² tiles)", [str(slide)], "slide",
         ["--tiling", "force", "--tile-size", str(args.tile)], "*.tif", args.slide_side ** 2 / 1e6,
         2 + (-(-args.slide_side // args.tile)) ** 2),
    ]
    rows = []
    for name, inputs, sub, extra, pattern, mp, tasks in workloads:
        out_s, out_d = args.workdir / f"{sub}_serial", args.workdir / f"{sub}_dask"
        for o in (out_s, out_d):
            subprocess.run(["rm", "-rf", str(o)], check=True)
        common = [*inputs, "-m", str(model), *extra]
        serial = segment([*common, "-o", str(out_s) + "/"], env)
        dask = segment([*common, "-o", str(out_d) + "/", "--workers", str(args.workers)], env)
        manifest = json.loads((out_d / "run_manifest.json").read_text())
        peak = max(e.get("worker_peak_bytes", 0) for e in manifest["inputs"].values())
        start = manifest["cluster_start_seconds"]
        same = same_files(out_s, out_d, pattern)
        row = (f"| {name} | {mp:.1f} | {tasks} | {serial:.1f} | {dask:.1f} | {serial / dask:.2f} | "
               f"{start:.1f} | {(dask - start - serial) / tasks:+.2f} | {peak / 2 ** 30:.2f} | {'yes' if same else 'NO'} |")
        print(row, flush=True)
        rows.append(row)
    table = "\n".join([
        f"| workload | MP | tasks | serial s | --workers {args.workers} s | throughput ratio | cluster start s | "
        f"overhead s/task | "
        f"peak GiB/worker | identical |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows])
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
