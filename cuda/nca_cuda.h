// CUDA launcher for the fused NCA step (plain CUDA C++, no torch).
//
// One thread per cell runs the cell update of nca_cell.h in registers: it reads the
// K^DIMS neighbourhood of the input buffer and writes the new cell to the output buffer
// (double buffering: two states in memory, nothing else). Weights live in shared memory.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace nca_cuda {

enum Storage : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct Problem {
    int dims;          // 2 or 3
    int channels;      // C
    int hidden;        // hidden units of fc0
    int in_channels;   // IN, constant channels at the front of the state
    int kernel;        // perception kernel size (odd)
    int storage;       // Storage
    int64_t batch;
    int64_t size[3];    // z, y, x extents; 2D: size[0] = 1
    int64_t origin[3];  // absolute coordinate of the first cell along z, y, x (2D: z unused)
    uint64_t seed;
    uint32_t level;
    uint32_t threshold;  // nca_cli.firemask.threshold(fire_rate); 2^24: every cell fires
};

// Whether this library was compiled for the problem's shape and storage type.
bool supported(const Problem& p);

// Number of packed float32 weights the problem expects (layout: nca::Cfg in nca_cell.h).
int64_t weight_count(const Problem& p);

// Run `steps` steps on the channels-last state in `a` ([B, *spatial, C]), using `b` (same
// size) as the second buffer. `weights` is a device pointer. `*result` is set to a or b,
// whichever holds the final state. Launches asynchronously on `stream`.
cudaError_t run(const Problem& p, void* a, void* b, const float* weights, int64_t steps, cudaStream_t stream,
                void** result);

}  // namespace nca_cuda
