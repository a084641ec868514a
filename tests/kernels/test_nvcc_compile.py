"""The CUDA launcher compiles with nvcc for sm_80 and sm_90 (compile only, no GPU needed).

The source is compiled the way nca_cli/kernels/build.py compiles uncommon shapes: a file
that lists the shapes and includes nca_cuda.cu; two shapes (2D IN=3, 3D IN=1, every
storage type) keep the compile short."""
import shutil
import subprocess
from pathlib import Path

import pytest

from nca_cli.kernels.build import _cuda_instantiations

CUDA_DIR = Path(__file__).resolve().parents[2] / "cuda"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_nvcc_compiles_for_sm80_and_sm90(tmp_path):
    ((name, text),) = _cuda_instantiations(((2, 16, 64, 3, 3), (3, 16, 64, 1, 3))).items()
    src = tmp_path / name
    src.write_text(text)
    procs = {}
    for arch in ("sm_80", "sm_90"):
        obj = tmp_path / f"nca_cuda_{arch}.o"
        cmd = ["nvcc", "-std=c++17", "-O3", f"-arch={arch}", f"-I{CUDA_DIR}", "-c", str(src), "-o", str(obj)]
        procs[arch] = (obj, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for arch, (obj, proc) in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{arch}:\n{out}"
        assert obj.stat().st_size > 0
