"""``make demo``: synthetic pathology data → a short OctreeNCA training → Dice on held-out
slides → one-pass segmentation of a ≥ 100 MP synthetic slide, with MP/s and peak memory.

Run as ``python -m nca_cli.demo [--out demo_out] [--side 10240]``. Every step goes through the
same code as the CLI; the big slide is segmented by ``nca segment`` in a fresh process so its
peak memory is the segmentation's own.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

RECIPE = "demo_pathology"


def held_out_dice(model_path: Path, dataset: Path, impl: str = "auto") -> tuple[float, int]:
    import numpy as np
    import torch

    from .data.dataset import PreparedDataset
    from .inference.outputs import mean_dice, whole
    from .inference.predictors import predictor_for
    from .models.checkpoint import load_model

    model, _ = load_model(model_path)
    predictor = predictor_for(model, impl=impl, state_dtype="float16")
    test = PreparedDataset(dataset, "test")

    def case(i: int):
        x = torch.from_numpy(test.to_float(np.asarray(test.image(i)))).movedim(-1, 0)[None]
        y = torch.from_numpy(np.ascontiguousarray(test.to_masks(np.asarray(test.label(i))), dtype=np.float32))
        return x, y.movedim(-1, 0)[None]

    cases = (case(i) for i in range(len(test)))
    return mean_dice(cases, whole(lambda x: predictor.masks(predictor.logits(x)))), len(test)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo_out"))
    ap.add_argument("--side", type=int, default=10240, help="side of the big synthetic slide (10240 = 105 MP)")
    ap.add_argument("--epochs", type=int, default=None)
    args = ap.parse_args(argv)

    from .data.prepare import prepare
    from .data.synthetic import make_synthetic_slide
    from .recipes import load_recipe
    from .training.trainer import train

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "dataset.yaml").exists():
        print("1/4 preparing a synthetic pathology dataset (PESO layout)…", flush=True)
        prepare("synthetic", None, data, kind="pathology", cases=8, size=1024, seed=0)
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)
    print("2/4 training the OctreeNCA pathology model (15,520 parameters) on the CPU…", flush=True)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 96x96 patches: one thread per process beats two synchronising ones
    recipe = load_recipe(RECIPE, [f"data.dataset={data.resolve()}"])
    train(recipe, run, epochs=args.epochs, quiet=False)
    torch.set_num_threads(threads)
    dice, n = held_out_dice(run / "model.pt", data)
    print(f"3/4 held-out Dice on {n} synthetic test slide(s): {dice:.3f}", flush=True)

    slide = out / f"slide_{args.side}.tif"
    if not slide.exists():
        print(f"4/4 writing a {args.side}x{args.side} ({args.side ** 2 / 1e6:.0f} MP) synthetic slide and segmenting it "
              f"in one pass…", flush=True)
        make_synthetic_slide(slide, args.side, args.side, seed=7)
    else:
        print("4/4 segmenting the big synthetic slide in one pass…", flush=True)
    mask = out / "slide_mask.tif"
    cmd = [sys.executable, "-m", "nca_cli", "segment", str(slide), "-o", str(mask), "--model", str(run / "model.pt"),
           "--state-dtype", "float16", "--tiling", "off", "--preview", str(out / "preview.png")]
    subprocess.run(cmd, check=True)
    meta = json.loads((out / "slide_mask.run_metadata.json").read_text())
    print()
    print("demo summary")
    print(f"  held-out Dice (synthetic test slides) : {dice:.3f}")
    print(f"  slide                                  : {meta['megapixels']:.1f} MP, one pass ({meta['mode']}), "
          f"impl {meta['impl']}, state {meta['state_dtype']}")
    print(f"  throughput                             : {meta['megapixels_per_second']:.2f} MP/s "
          f"({meta['wall_seconds']:.1f} s)")
    print(f"  peak memory                            : {meta['peak_memory_bytes'] / 2 ** 30:.2f} GiB "
          f"= {meta['peak_memory_bytes_per_pixel']:.1f} bytes/pixel")
    print(f"  outputs                                : {mask}, {out / 'preview.png'}, "
          f"{out / 'slide_mask.run_metadata.json'}")
    print(f"  total time                             : {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
