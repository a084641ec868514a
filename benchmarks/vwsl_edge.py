"""The edge cost of VWSL: peak memory and seconds per epoch of `nca finetune-vwsl` at the
paper's setting, 256x256 chest X-rays, on this machine's CPU cores.

The model is the Med-NCA of ``recipes/mednca_xray_vwsl.yaml`` (26,432 parameters, 64 steps
per level, the fine level fine-tuned on a 64x64 crop, batch 4), with random weights: memory
and time do not depend on them. ``--images`` synthetic 256x256 X-rays (``nca prepare
synthetic --kind xray``) are the unlabeled folder. Each setting runs ``nca finetune-vwsl`` in
a fresh process and reads its VmHWM (the peak resident memory of the whole process: Python,
torch, the images, the cached targets, the weights and one training step) and the epoch
times it writes to ``adapted.vwsl-metrics.jsonl``.

    python benchmarks/vwsl_edge.py --out benchmarks/results/vwsl_edge_cpu.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

RUN = r"""
import json, sys, torch
from nca_cli.vwsl.finetune import finetune
from nca_cli.vwsl.options import FinetuneOptions
torch.set_num_threads(int(sys.argv[4]))
res = finetune(FinetuneOptions(unlabeled=sys.argv[1], model=sys.argv[2], output=sys.argv[3], epochs=int(sys.argv[5]),
                               device="cpu", quiet=True))
from nca_cli.core.machine import peak_rss_bytes
res["vmhwm_kib"] = peak_rss_bytes() // 1024
print(json.dumps(res))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vwsl_edge_cpu.md")
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()

    from nca_cli.core.machine import cpu_name
    from nca_cli.data.synthetic import make_synthetic
    from nca_cli.models import build_model, checkpoint, count_parameters
    from nca_cli.recipes import load_recipe

    with tempfile.TemporaryDirectory(prefix="vwsl-edge-") as tmp:
        work = Path(tmp)
        raw = make_synthetic("xray", work / "raw", cases=args.images, size=256, seed=0)
        unlabeled = work / "unlabeled"
        unlabeled.mkdir()
        for i, png in enumerate(sorted((raw / "images").glob("*.png"))):
            Image.fromarray(np.asarray(Image.open(png).convert("L"))).save(unlabeled / f"x{i:02d}.png")
        recipe = load_recipe("mednca_xray_vwsl")
        torch.manual_seed(0)
        model = build_model(recipe.model)
        model_file = work / "model.pt"
        checkpoint.save_model(model_file, model, recipe.to_dict())
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", RUN, str(unlabeled), str(model_file), str(work / "adapted.pt"),
                               str(args.threads), str(args.epochs)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        epochs = [json.loads(line) for line in (work / "adapted.vwsl-metrics.jsonl").read_text().splitlines()]
    per_epoch = [r["seconds"] for r in epochs]
    train_images = args.images - res["selection_images"] if res["selection_held_out"] else args.images
    batches = -(-train_images // recipe.vwsl.batch_size)
    text = "\n".join([
        "# VWSL fine-tuning cost at the paper's setting (256x256 X-rays) on a CPU",
        "",
        f"Command: `python benchmarks/vwsl_edge.py --images {args.images} --epochs {args.epochs} --threads "
        f"{args.threads}`, on {cpu_name()} ({os.cpu_count()} cores, {args.threads} torch threads; load average at the "
        f"end {os.getloadavg()[0]:.1f}); torch {torch.__version__}.",
        "",
        f"Model: `recipes/mednca_xray_vwsl.yaml`, {count_parameters(model):,} parameters (random weights), 64 steps "
        f"per level, fine level on a 64x64 crop, batch {recipe.vwsl.batch_size}; {args.images} unlabeled "
        f"256x256 images ({train_images} trained on, {res['selection_images']} held out to choose the epoch), "
        f"{res['predictions']} predictions per image for the targets.",
        "",
        "| peak memory (VmHWM, whole process) | seconds per epoch | batches per epoch | s per batch of 4 "
        "| whole run (targets, epochs, selection) |",
        "|---|---|---|---|---|",
        f"| {res['vmhwm_kib'] / 1024:.0f} MiB | {np.median(per_epoch):.1f} (median of {len(per_epoch)}) | {batches} "
        f"| {np.median(per_epoch) / batches:.1f} | {wall:.0f} s |",
        "",
        "An epoch is one pass over the training images: per batch two stochastic forward passes with "
        "gradients (every level, 64 steps each) and one backward pass; after it the held-out images are "
        "scored (two passes each, no gradients). The paper's setting of 50 images and 100 epochs scales "
        f"the epoch time by 50 / {train_images} images: about "
        f"{np.median(per_epoch) / max(train_images, 1) * 50 * 100 / 3600:.1f} h on this CPU.",
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
