"""The memory model against measurement: predicted and measured peak of `nca segment` runs.

Every model family (OctreeNCA 2D/3D, Med-NCA, M3D-NCA, UNet, meU-net and its cascade,
SegResMamba) with every implementation (fused, PyTorch) and state type, on synthetic inputs,
each `nca segment` in a fresh process. The prediction is what the run planned before it started
(``predicted_peak_bytes``); the measurement is the peak resident memory of that input's
segmentation (``peak_memory_bytes``: VmHWM reset when the input starts). Both include the
process's resident memory at the start (libraries, model).

    python benchmarks/memory_model.py [--out benchmarks/results/memory_model_cpu.md] [--quick]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# name -> (recipe or architecture dict, kind of input)
CASES = {
    "octree_nca 2D": ("octree_pathology", "rgb"),
    "octree_nca 3D": ("octree_radiology", "volume"),
    "med_nca 2D": ("mednca_pathology", "rgb"),
    "m3d_nca 3D": ("m3d_radiology_2levels", "volume"),
    "unet 2D": ({"architecture": "unet", "dims": 2, "input_channels": 3, "output_channels": 1,
                 "num_encoding_blocks": 3, "out_channels_first_layer": 16}, "rgb"),
    "unet 3D": ({"architecture": "unet", "dims": 3, "input_channels": 1, "output_channels": 1,
                 "num_encoding_blocks": 3, "out_channels_first_layer": 8}, "volume"),
    "meunet 3D": ({"architecture": "meunet", "dims": 3, "input_channels": 1, "output_channels": 3}, "volume"),
    "meunet_cascade 3D": ({"architecture": "meunet_cascade", "dims": 3, "input_channels": 1, "output_channels": 3},
                          "volume"),
    "segresmamba 3D": ({"architecture": "segresmamba", "dims": 3, "input_channels": 1, "output_channels": 2,
                        "widths": [16, 32], "blocks_down": [1, 1]}, "volume"),
}
NCA_RUNS = [("fused", "float16"), ("fused", "float32"), ("torch", "float32"), ("torch", "float16")]
WINDOWS = {2: [256, 256], 3: [32, 64, 64]}


def make_model(spec, folder: Path) -> tuple[Path, bool]:
    import torch

    from nca_cli.models import architecture, build_model, checkpoint
    from nca_cli.recipes import load_recipe

    torch.manual_seed(0)
    config = load_recipe(spec).model if isinstance(spec, str) else dict(spec)
    model = build_model(config)
    arch = architecture(model.config.architecture)
    if arch.is_nca:
        for bb in model.backbones:
            torch.nn.init.normal_(bb.fc1.weight, std=0.01)
    path = folder / f"{model.config.architecture}{model.config.dims}d.pt"
    recipe = None if arch.is_nca else {"name": "memory", "model": model.config.to_dict(),
                                       "data": {"patch": WINDOWS[model.config.dims]}}
    checkpoint.save_model(path, model, recipe)
    return path, arch.is_nca


def make_input(kind: str, folder: Path, scale: int) -> Path:
    rng = np.random.default_rng(0)
    if kind == "rgb":
        from PIL import Image

        side = 1024 * scale
        path = folder / f"rgb{side}.png"
        if not path.exists():
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, compress_level=1)
        return path
    import SimpleITK as sitk

    shape = (32 * scale, 128 * scale, 128 * scale)
    path = folder / f"vol{'x'.join(map(str, shape))}.nii.gz"
    if not path.exists():
        sitk.WriteImage(sitk.GetImageFromArray(rng.normal(100, 20, shape).astype(np.float32)), str(path))
    return path


def measure(model: Path, image: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "nca_cli", "segment", str(image), "-o", str(out), "-m", str(model), "-q", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "seconds": time.perf_counter() - t0}
    meta = json.loads(out.with_name(out.name.split(".")[0] + ".run_metadata.json").read_text())
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--scale", type=int, default=2, help="input size multiplier (2: 2048² images, 64x256x256 volumes)")
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nca-memory-") as tmp:
        tmp = Path(tmp)
        for name in args.cases:
            spec, kind = CASES[name]
            model, nca = make_model(spec, tmp)
            image = make_input(kind, tmp, args.scale)
            for impl, dtype in NCA_RUNS if nca else [("window", "float32")]:
                extra = ["--impl", impl, "--state-dtype", dtype] if nca else []
                ext = ".png" if kind == "rgb" else ".nii.gz"
                meta = measure(model, image, tmp / f"out_{impl}_{dtype}{ext}", extra)
                row = {"model": name, "impl": meta.get("impl", impl), "state": dtype if nca else "-",
                       "input": image.name, **{k: meta.get(k) for k in ("predicted_peak_bytes", "peak_memory_bytes",
                                                                      "baseline_rss_bytes", "megapixels",
                                                                      "wall_seconds", "error")}}
                if row["predicted_peak_bytes"] and row["peak_memory_bytes"]:
                    row["ratio"] = row["peak_memory_bytes"] / row["predicted_peak_bytes"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    lines = ["| model | impl | state | input | predicted MiB | measured MiB | measured / predicted | start RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['model']} | {r['impl']} | {r['state']} | {r['input']} | - | - | {r['error']} | - |")
            continue
        lines.append(f"| {r['model']} | {r['impl']} | {r['state']} | {r['input']} | {r['predicted_peak_bytes'] / 2**20:.0f} "
                     f"| {r['peak_memory_bytes'] / 2**20:.0f} | {r['ratio']:.3f} | {r['baseline_rss_bytes'] / 2**20:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from nca_cli.core.files import write_text
        from nca_cli.core.machine import cpu_name

        write_text(args.out, f"# Memory model: predicted vs measured peak of `nca segment`\n\nCPU: {cpu_name()}. "
                             f"Command: `python benchmarks/memory_model.py --scale {args.scale}`.\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
