"""The CUDA launcher compiles with nvcc for sm_80 and sm_90 (compile only, no GPU needed).

The source is compiled the way nca_cli/kernels/build.py compiles a library: a file that
lists the shapes and includes nca_cuda.cu. The shapes cover every kernel variant once
(every storage type each): OctreeNCA 2D IN=3 and 3D IN=1 (depthwise, kernel 3), Med-NCA
pathology's kernel 7 with BatchNorm (statistics kernels, rolled tap rows), the VWSL Med-NCA
(two full convolutions, hidden 128) and M3D-NCA's 3D kernel 7 with BatchNorm."""
import shutil
import subprocess
from pathlib import Path

import pytest

from nca_cli.kernels.build import _cuda_instantiations

CUDA_DIR = Path(__file__).resolve().parents[2] / "cuda"
SHAPES = ((2, 16, 64, 3, 3), (3, 16, 64, 1, 3), (2, 16, 64, 3, 7, 0, 1), (2, 16, 128, 1, 3, 1, 1),
          (3, 16, 64, 1, 7, 0, 1))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_nvcc_compiles_for_sm80_and_sm90(tmp_path):
    ((name, text),) = _cuda_instantiations(SHAPES).items()
    src = tmp_path / name
    src.write_text(text)
    procs = {}
    for arch in ("sm_80", "sm_90"):
        obj = tmp_path / f"nca_cuda_{arch}.o"
        cmd = ["nvcc", "-std=c++17", "-O3", f"-arch={arch}", f"-I{CUDA_DIR}", "-c", str(src), "-o", str(obj)]
        procs[arch] = (obj, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for arch, (obj, proc) in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{arch}:\n{out}"
        assert obj.stat().st_size > 0
