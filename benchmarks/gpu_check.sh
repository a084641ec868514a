#!/usr/bin/env bash
# One-shot check of the CUDA path on a GPU machine, within 10 minutes:
#
#   bash benchmarks/gpu_check.sh            (from the repository root)
#
# Needs a CUDA build of torch: it reuses .venv, else runs `make install` with
# TORCH=torch==2.14.1 (pip needs the network; on a machine without it, a python3 that already
# has a CUDA torch is used through the venv's system site packages), and nvcc (any layout:
# the build finds the toolkit behind wrappers and symlinks, or set CUDA_HOME).
#
# Stages, each under its own time limit so that a slow one cannot eat the others; each
# writes benchmarks/results/gpu_<stage>.md (command, device, time taken, exit code, output):
#   build     the three CUDA kernel libraries (octree, mednca, m3d)           240 s
#   tests     tests/kernels/test_fused_cuda.py (TF32 off, NCA_CUDA_SYNC=1)     120 s
#   step      one fused step in place / double buffered / PyTorch
#             (benchmarks/gpu_step_timing.py: time, extra memory, same bits)    60 s
#   kernel    nca benchmark --kernel: fused step and whole Med-NCA forward
#             passes against the PyTorch path                                   60 s
#   pathology largest single pass per 24 GiB, OctreeNCA / Med-NCA / UNet        50 s
#   surgery   largest single pass per 24 GiB, video                             50 s
# That is 580 s at most, plus `make install` when .venv is missing.
# Paper (OctreeNCA, Table 2, RTX 4090, 24 GiB): 184.9 MP at 77.36 MP/s; 76.2 s of video at
# 453 FPS. Override a limit with e.g. LIMIT_build=300.
set -u
cd "$(dirname "$0")/.."
OUT=benchmarks/results
mkdir -p "$OUT"
export TORCH="${TORCH:-torch==2.14.1}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

if [ ! -x .venv/bin/python ]; then
    timeout 300 make install || echo "make install failed; trying the python3 of this machine"
fi
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "this python has no CUDA torch or sees no GPU: install a CUDA build (TORCH=torch==2.14.1 make install)" >&2
    exit 1
fi
DEVICE="$("$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}')")"
echo "device: $DEVICE"

# stage NAME LIMIT_S COMMAND...: runs the command under its limit and writes gpu_NAME.md.
stage() {
    local name=$1 default=$2
    shift 2
    local var="LIMIT_$name" limit
    limit="${!var:-$default}"
    local start=$SECONDS log
    log="$(mktemp)"
    echo "== $name (limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    {
        echo "# GPU check: $name"
        echo
        echo "Command: \`$*\` (from \`benchmarks/gpu_check.sh\`)"
        echo
        echo "Device: $DEVICE; $(date -u +%Y-%m-%dT%H:%MZ); $took s of a ${limit} s limit; exit code $rc$([ $rc -eq 124 ] && echo ' (timed out)')."
        echo
        echo '```'
        tail -c 20000 "$log"
        echo '```'
    } >"$OUT/gpu_$name.md.partial" && mv "$OUT/gpu_$name.md.partial" "$OUT/gpu_$name.md"
    rm -f "$log"
    echo "   exit code $rc after $took s -> $OUT/gpu_$name.md"
}

stage build 240 "$PY" -c "
import time
from nca_cli.kernels import kernel_module
from nca_cli.kernels.build import LIBRARIES
for name, shapes in LIBRARIES.items():
    t = time.time()
    kernel_module('cuda', shapes[0])
    print(f'{name}: built or loaded in {time.time() - t:.1f} s', flush=True)
"
NCA_CUDA_SYNC=1 stage tests 120 "$PY" -m pytest tests/kernels/test_fused_cuda.py -q -x -p no:cacheprovider
stage step 60 "$PY" benchmarks/gpu_step_timing.py --out "$OUT/gpu_step_table.md"
stage kernel 60 "$PY" -m nca_cli benchmark --kernel --task pathology --device cuda --json "$OUT/gpu_kernel.json"
stage pathology 50 "$PY" -m nca_cli benchmark --max-size --task pathology --memory-budget 24GiB --device cuda \
    --json "$OUT/gpu_max_size_pathology.json"
stage surgery 50 "$PY" -m nca_cli benchmark --max-size --task surgery --memory-budget 24GiB --device cuda \
    --json "$OUT/gpu_max_size_surgery.json"
echo "done: $OUT/gpu_*.md"
