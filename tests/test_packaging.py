"""The package works as an installed wheel, not only from a checkout: kernel sources and recipes
ship inside it, and a fused segmentation runs from a folder outside the repository."""
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_segments_with_the_fused_kernel_outside_the_checkout(tmp_path):
    from nca_cli.kernels import fused_available
    from nca_cli.models import NCAConfig, OctreeNCA, checkpoint

    src = tmp_path / "src"
    src.mkdir()
    for name in ("nca_cli", "cuda", "recipes"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(dist)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(dist.glob("nca-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies (torch, ...) come from this environment, the package only from the wheel
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(purelib, "nca-test-deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    located = subprocess.run([str(python), "-c", "import nca_cli, nca_cli.core.resources as r; "
                              "print(nca_cli.__file__); print(r.kernel_source_dir()); print(r.recipes_dir())"],
                             capture_output=True, text=True, check=True, cwd=outside, env=env).stdout.split()
    assert all(p.startswith(purelib) for p in located), located

    dry = subprocess.run([str(venv / "bin" / "nca"), "train", "octree_pathology", "--dry-run"], capture_output=True,
                         text=True, cwd=outside, env=env)
    assert dry.returncode == 0 and "parameters: 15520" in dry.stdout, dry.stderr

    torch.manual_seed(0)
    model = OctreeNCA(NCAConfig(dims=2, input_channels=3, output_channels=1, levels=3, steps=[2, 2, 3]))
    checkpoint.save_model(outside / "model.pt", model, None)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(outside / "a.png")
    proc = subprocess.run([str(venv / "bin" / "nca"), "segment", "a.png", "-o", "a_mask.png", "-m", "model.pt",
                           "--impl", "fused", "-q"], capture_output=True, text=True, cwd=outside, env=env)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((outside / "a_mask.run_metadata.json").read_text())
    if fused_available("cpu"):
        assert meta["impl"] == "fused", proc.stderr
    assert np.array(Image.open(outside / "a_mask.png")).shape == (40, 50)
