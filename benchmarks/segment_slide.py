"""Segment large synthetic slides with `nca segment` and report peak memory per pixel and MP/s.

Each configuration runs in a fresh `nca segment` process, so the peak resident memory in its
run_metadata.json is the segmentation's own (interpreter and libraries included).

    python benchmarks/segment_slide.py --side 10240 --config fused:float16:off --config torch:float32:auto:8GiB
    python benchmarks/segment_slide.py --side 32768 --config fused:float16:auto:8GiB   # 1.07 GP, tiled

A config is IMPL:STATE_DTYPE:TILING[:BUDGET]. Without --model, a random-weight OctreeNCA
pathology model is used (timing and memory do not depend on the weights).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def random_model(path: Path) -> Path:
    from nca_cli.models import checkpoint
    from nca_cli.models import build_model
    from nca_cli.recipes import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "octree_pathology.yaml")
    model = build_model(recipe.model).randomize_(0.05, seed=0)
    checkpoint.save_model(path, model, recipe.to_dict(), {"note": "random weights (benchmark)"})
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=10240)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nca-segment-bench"))
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--config", action="append", default=[], help="IMPL:DTYPE:TILING[:BUDGET]")
    ap.add_argument("--out", type=Path, default=None, help="append the markdown table to this file")
    args = ap.parse_args(argv)
    configs = args.config or ["fused:float16:off", "fused:float32:off"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    slide = args.workdir / f"slide_{args.side}.tif"
    if not slide.exists():
        from nca_cli.data.synthetic import make_synthetic_slide

        t = time.perf_counter()
        make_synthetic_slide(slide, args.side, args.side, seed=11)
        print(f"wrote {slide} in {time.perf_counter() - t:.0f} s", flush=True)
    model = args.model or random_model(args.workdir / "random_model.pt")
    rows = []
    for cfg in configs:
        impl, dtype, tiling, *rest = cfg.split(":")
        out = args.workdir / f"mask_{impl}_{dtype}_{tiling}.tif"
        cmd = [sys.executable, "-m", "nca_cli", "segment", str(slide), "-o", str(out), "--model", str(model),
               "--impl", impl, "--state-dtype", dtype, "--tiling", tiling, "--quiet"]
        if rest:
            cmd += ["--memory-budget", rest[0]]
        subprocess.run(cmd, check=True)
        meta = json.loads(out.with_name(out.name[:-4] + ".run_metadata.json").read_text())
        rows.append((cfg, meta))
        print(json.dumps({k: meta[k] for k in ("impl", "state_dtype", "mode", "tiles", "megapixels", "wall_seconds",
                                               "megapixels_per_second", "peak_memory_bytes_per_pixel")}), flush=True)
    lines = ["| slide | impl | state | budget | mode | MP | wall s | MP/s | peak GiB | peak B/px |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for cfg, m in rows:
        budget = cfg.split(":")[3] if cfg.count(":") >= 3 else "available"
        mode = m["mode"] + (f" ({m['tiles']} tiles, split {m['split_level']})" if m["mode"] == "tiled" else "")
        lines.append(f"| {args.side}² | {m['impl']} | {m['state_dtype']} | {budget} | {mode} | {m['megapixels']:.0f} | "
                     f"{m['wall_seconds']:.0f} | {m['megapixels_per_second']:.2f} | {m['peak_memory_bytes'] / 2**30:.2f} | "
                     f"{m['peak_memory_bytes_per_pixel']:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
