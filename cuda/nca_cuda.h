// CUDA launcher for the fused NCA step (plain CUDA C++, no torch).
//
// One thread per cell runs the cell update of nca_cell.h in registers: it reads the
// K^DIMS neighbourhood of the input buffer and writes the new cell to the output buffer
// (double buffering), or, in place, one block per band of planes sweeps its band with the
// original values of the planes it still needs kept aside (border planes and a ring). Weights live in shared memory.
// With BatchNorm every step first runs a statistics kernel over the whole batch (each
// thread computes its cell's fc0 pre-activations; the sums of z and z^2 per hidden unit are
// reduced in double precision, per block, in a fixed order) and a one-block kernel that
// turns them into the step's alpha, beta; the hidden layer is never stored.
#pragma once

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

namespace nca_cuda {

enum Storage : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct Problem {
    int dims;           // 2 or 3
    int channels;       // C
    int hidden;         // hidden units of fc0
    int in_channels;    // IN, constant channels at the front of the state
    int kernel;         // perception kernel size (odd)
    int perception;     // nca::Perception (0 depthwise, 1 two full convolutions)
    int normalization;  // nca::Normalization (0 none, 1 BatchNorm with the batch's statistics)
    int storage;        // Storage
    int64_t batch;
    int64_t size[3];    // z, y, x extents; 2D: size[0] = 1
    int64_t origin[3];  // absolute coordinate of the first cell along z, y, x (2D: z unused)
    uint64_t seed;
    uint32_t level;
    uint32_t threshold;  // nca_cli.firemask.threshold(fire_rate); 2^24: every cell fires
    int in_place;        // 1: update the state in place (b unused), with side buffers in the workspace
    int64_t band_planes; // in place: planes (outer-axis indices) per band; 0 picks (see nca_cuda.cu)
};

// Whether this library was compiled for the problem's shape and storage type.
bool supported(const Problem& p);

// Number of packed float32 weights the problem expects (layout: nca::Cfg in nca_cell.h).
int64_t weight_count(const Problem& p);

// Bytes of device scratch memory `run` needs besides the state(s): BatchNorm's per-block sums
// and the step's alpha, beta; in place, the border planes of every band and a ring of P + 1
// planes per band (3P + 1 planes per band, the bands chosen so that this stays within 1/8 of
// the state unless band_planes says otherwise).
size_t workspace_bytes(const Problem& p);

// Whether the in-place step is the better default for this problem: it needs no second
// state, but its bands (one block each) must be enough to keep a GPU busy (128 or more; large
// 2D images have them, 3D volumes of few large planes do not).
bool in_place_by_default(const Problem& p);

// What `run` reports: cudaSuccess, or the error and the kernel it came from (nullptr when
// no kernel was launched, e.g. a shape not compiled in).
struct Status {
    cudaError_t error;
    const char* kernel;
};

// Run `steps` steps on the channels-last state in `a` ([B, *spatial, C]), using `b` (same
// size) as the second buffer, or in place when p.in_place (b unused, may be null), and
// `workspace` (workspace_bytes, 256-byte aligned) as scratch. `weights` is a device pointer.
// `*result` is set to a or b, whichever holds the final state (a when in place). Both ways
// give the same bits. Launches asynchronously on `stream`; every launch is checked, and with
// `sync` the stream is synchronised after each kernel, so a fault inside a kernel names it.
Status run(const Problem& p, void* a, void* b, const float* weights, void* workspace, int64_t steps,
           cudaStream_t stream, bool sync, void** result);

}  // namespace nca_cuda
