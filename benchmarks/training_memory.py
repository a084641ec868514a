"""Peak memory of one training step of the baselines and the NCAs, at equal patch and batch.

Each configuration runs in a fresh Python process: build the network, the data and an Adam
optimiser, reset the peak counter, run one step (forward, loss, backward, optimiser step),
read the peak. On the CPU the peak is the process's resident-set high-water mark (VmHWM,
reset through /proc/self/clear_refs; ``ru_maxrss`` where that is unavailable); on CUDA it is
``torch.cuda.max_memory_allocated``. "step" is the peak minus the memory held just before
the step (weights, optimiser, data, the Python runtime).

Configurations, for a patch P and the meU-net expanded patch E = 1.5 P (multiple of 16):

    unet@P         U-net with the meU-net widths, standard patch only
    unet@E         the same U-net at the expanded patch
    meunet@P+E     meU-net step: P through the whole network + E with the first level frozen
    segresnet@P    SegResMamba without its Mamba blocks
    segresmamba@P  SegResMamba
    unet3d@P       the UNet baseline of the NCA papers (package ``unet`` UNet3D, 19,071,297
                   parameters), one class, BCE + Dice
    octree@P       OctreeNCA, recipes/octree_radiology.yaml (5 levels), the whole patch through
                   every level (no crop), BCE + Dice, backpropagation through all steps
    m3d@P          M3D-NCA, recipes/m3d_radiology_3levels.yaml, the same way
    octree@P-crop  OctreeNCA as its recipe trains: the two finest levels on a random crop of
                   P/4 per axis (the recipe's 6x80x80 crop of 24x320x320 volumes), the coarser
                   levels on the whole patch; loss on the crop
    m3d@P-crop     M3D-NCA the same way (its recipe crops the two finest levels too)

    python benchmarks/training_memory.py --patch 64 --batch 1 [--device cuda] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

CONFIGS = ("unet@P", "unet@E", "meunet@P+E", "segresnet@P", "segresmamba@P", "unet3d@P", "octree@P", "m3d@P",
           "octree@P-crop", "m3d@P-crop")
NUM_CLASSES = 2
NCA_RECIPES = {"octree@P": "octree_radiology.yaml", "m3d@P": "m3d_radiology_3levels.yaml",
               "octree@P-crop": "octree_radiology.yaml", "m3d@P-crop": "m3d_radiology_3levels.yaml"}
RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


def run_config(name: str, patch: int, batch: int, device: str) -> dict:
    """One training step of ``name``; returns its memory figures (bytes)."""
    import torch
    import torch.nn.functional as F

    from nca_cli.models.baselines.meunet import MeUNet, UNetBody, expanded_size, meunet_loss, meunet_training_loss
    from nca_cli.models.baselines.segresmamba import SegResMamba

    torch.manual_seed(0)
    big = expanded_size((patch,) * 3)[0]
    size = big if name == "unet@E" else patch
    if name in NCA_RECIPES:
        from nca_cli.models import build_model
        from nca_cli.recipes import load_recipe

        model = build_model(load_recipe(os.path.join(RECIPES, NCA_RECIPES[name])).model)
    elif name == "unet3d@P":
        from nca_cli.models import build_model

        model = build_model({"architecture": "unet", "dims": 3, "input_channels": 1, "output_channels": 1})
    elif name.startswith("unet"):
        model = UNetBody(1, NUM_CLASSES)
    elif name.startswith("meunet"):
        model = MeUNet(1, NUM_CLASSES)
    else:
        model = SegResMamba(1, NUM_CLASSES, use_mamba=name.startswith("segresmamba"))
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=9e-4)
    if name.startswith("meunet"):
        volume = torch.randn(batch, 1, big, big, big)
        labels = torch.randint(0, NUM_CLASSES, (batch, big, big, big))
        generator = torch.Generator().manual_seed(0)
    else:
        volume = torch.randn(batch, 1, size, size, size, device=device)
        labels = torch.randint(0, NUM_CLASSES, (batch, size, size, size), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if name.startswith("meunet"):
            loss = meunet_training_loss(model, volume, labels, patch, generator)
        elif name in NCA_RECIPES or name == "unet3d@P":
            from nca_cli.training.losses import bce_dice_loss

            target = labels[:, None].float()
            if name in NCA_RECIPES:
                crop = (patch // 4,) * 3 if name.endswith("-crop") else None
                logits, region = model(volume, seed=0, patch=crop, crop_levels=2 if crop else 0,
                                       generator=torch.Generator().manual_seed(0))
                target = target[(slice(None), slice(None), *region)] if region else target
            else:
                logits = model(volume)
            loss = bce_dice_loss(logits, target)
        elif name.startswith("unet"):
            loss = meunet_loss(model(volume), labels)
        else:
            loss = F.cross_entropy(model(volume), labels)
        loss.backward()
        optimizer.step()

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak, method = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        from nca_cli.core.machine import proc_status_bytes, reset_peak_rss

        before = proc_status_bytes("VmRSS") or 0
        if reset_peak_rss() and proc_status_bytes("VmHWM") is not None:
            step()
            peak, method = proc_status_bytes("VmHWM"), "VmHWM"
        else:
            step()
            peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    return {
        "config": name,
        "patch": f"{patch}^3+{big}^3" if name.startswith("meunet") else
                 f"{size}^3, crop {patch // 4}^3" if name.endswith("-crop") else f"{size}^3",
        "batch": batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_bytes": peak,
        "before_bytes": before,
        "step_bytes": peak - before,
        "method": method,
        "device": device,
    }


def measure(configs: list[str], patch: int, batch: int, device: str) -> list[dict]:
    """Run each configuration in its own process."""
    results = []
    for name in configs:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name,
               "--patch", str(patch), "--batch", str(batch), "--device", device]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            results.append({"config": name, "error": tail[0]})
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def table_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["config"], "", "", "", "failed: " + r["error"], ""])
            continue
        rows.append([r["config"], r["patch"], str(r["batch"]), f"{r['parameters']:,}",
                     _mib(r["step_bytes"]), _mib(r["peak_bytes"])])
    return rows


HEADER = ["configuration", "patch", "batch", "parameters", "step peak MiB", "process peak MiB"]


def print_markdown(rows: list[list[str]]) -> None:
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join("---" for _ in HEADER) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def print_rich(rows: list[list[str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, h in enumerate(HEADER):
        table.add_column(h, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def ratios(results: list[dict]) -> dict[str, float]:
    """Step-memory ratios of the pairs the papers compare."""
    by = {r["config"]: r for r in results if "error" not in r}
    pairs = {"meunet@P+E / unet@E": ("meunet@P+E", "unet@E"),
             "meunet@P+E / unet@P": ("meunet@P+E", "unet@P"),
             "segresmamba@P / segresnet@P": ("segresmamba@P", "segresnet@P"),
             "octree@P / unet3d@P": ("octree@P", "unet3d@P"),
             "m3d@P / unet3d@P": ("m3d@P", "unet3d@P"),
             "octree@P-crop / unet3d@P": ("octree@P-crop", "unet3d@P"),
             "m3d@P-crop / unet3d@P": ("m3d@P-crop", "unet3d@P"),
             "octree@P / meunet@P+E": ("octree@P", "meunet@P+E")}
    return {k: by[a]["step_bytes"] / by[b]["step_bytes"] for k, (a, b) in pairs.items() if a in by and b in by}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=64, help="standard patch side (multiple of 32)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table instead of a rich one")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.patch % 32:
        parser.error("--patch must be a multiple of 32 (SegResMamba's input divisor)")
    if args.worker:
        print(json.dumps(run_config(args.worker, args.patch, args.batch, args.device)))
        return
    results = measure(args.configs, args.patch, args.batch, args.device)
    rows = table_rows(results)
    title = f"Training-step peak memory, patch {args.patch}^3, batch {args.batch}, {args.device}"
    if args.markdown:
        print(title + "\n")
        print_markdown(rows)
    else:
        print_rich(rows, title)
    for name, value in ratios(results).items():
        print(f"{name}: {value:.2f}")
    if args.json:
        from nca_cli.core.files import write_json

        write_json(args.json, {"patch": args.patch, "batch": args.batch, "device": args.device,
                               "results": results, "ratios": ratios(results)})


if __name__ == "__main__":
    main()
