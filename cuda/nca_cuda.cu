// CUDA launcher for the fused NCA step; see nca_cuda.h.
//
// NCA_CUDA_SHAPES(X) lists the compiled model shapes as X(dims, channels, hidden, in, kernel);
// a file that includes this one may define it first (nca_cli/kernels/build.py does, for
// uncommon shapes). Every shape is compiled for float32, float16 and bfloat16 storage.
#include "nca_cell.h"
#include "nca_cuda.h"

#ifndef NCA_CUDA_SHAPES
#define NCA_CUDA_SHAPES(X) X(2, 16, 64, 1, 3) X(2, 16, 64, 3, 3) X(3, 16, 64, 1, 3) X(3, 16, 64, 3, 3)
#endif

namespace nca_cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxSharedBytes = 48 * 1024;

struct Geometry {
    int64_t batch, nz, ny, nx;
    int64_t oz, oy, ox;
};

// Neighbour values of one cell, read from the input buffer with reflected indices.
template <class Cfg, class S>
struct Neighbours {
    const typename S::raw* base;  // start of this cell's batch item
    int64_t zoff[Cfg::KZ], yoff[Cfg::K], xoff[Cfg::K];
    __device__ __forceinline__ float operator()(int c, int dz, int dy, int dx) const {
        return S::load(base[zoff[dz] + yoff[dy] + xoff[dx] + c]);
    }
};

template <class Cfg, class S, bool SHARED>
__global__ void __launch_bounds__(kThreads)
step_kernel(const typename S::raw* __restrict__ in, typename S::raw* __restrict__ out,
            const float* __restrict__ weights, Geometry g, uint32_t key, uint32_t threshold) {
    constexpr int C = Cfg::C, K = Cfg::K, P = Cfg::P, IN = Cfg::IN, OUT = Cfg::OUT;
    extern __shared__ float shared_weights[];
    const float* w = weights;
    if (SHARED) {
        for (int i = threadIdx.x; i < Cfg::NWEIGHTS; i += blockDim.x) shared_weights[i] = weights[i];
        __syncthreads();
        w = shared_weights;
    }
    const int64_t cells = g.batch * g.nz * g.ny * g.nx;
    const int64_t cell = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (cell >= cells) return;
    const int64_t x = cell % g.nx;
    const int64_t y = (cell / g.nx) % g.ny;
    const int64_t z = (cell / (g.nx * g.ny)) % g.nz;
    const int64_t b = cell / (g.nx * g.ny * g.nz);
    const typename S::raw* src = in + cell * C;
    typename S::raw* dst = out + cell * C;

    const uint32_t zc = Cfg::DIMS == 3 ? static_cast<uint32_t>(g.oz + z) : 0u;
    const uint32_t hrow = nca::row_hash(key, zc, static_cast<uint32_t>(g.oy + y));
    if (!nca::fires(hrow, static_cast<uint32_t>(g.ox + x), threshold)) {
        for (int c = 0; c < C; ++c) dst[c] = src[c];
        return;
    }
    Neighbours<Cfg, S> nb;
    nb.base = in + b * g.nz * g.ny * g.nx * C;
    for (int d = 0; d < Cfg::KZ; ++d) nb.zoff[d] = Cfg::KZ == 1 ? 0 : nca::reflect(z + d - P, g.nz) * g.ny * g.nx * C;
    for (int d = 0; d < K; ++d) {
        nb.yoff[d] = nca::reflect(y + d - P, g.ny) * g.nx * C;
        nb.xoff[d] = nca::reflect(x + d - P, g.nx) * C;
    }
    float feat[Cfg::FEAT];
    float delta[OUT];
    nca::perceive<Cfg, float>(w, nb, feat);
    nca::update<Cfg, float>(w, feat, delta);
    for (int c = 0; c < IN; ++c) dst[c] = src[c];
    for (int o = 0; o < OUT; ++o) dst[IN + o] = S::store(feat[IN + o] + delta[o]);
}

template <class Cfg, class S>
cudaError_t run_shape(const Problem& p, void* a, void* b, const float* weights, int64_t steps, cudaStream_t stream,
                      void** result) {
    using raw = typename S::raw;
    Geometry g{p.batch, p.size[0], p.size[1], p.size[2], p.origin[0], p.origin[1], p.origin[2]};
    const int64_t cells = g.batch * g.nz * g.ny * g.nx;
    *result = a;
    if (cells == 0 || steps <= 0) return cudaSuccess;
    const int64_t blocks = (cells + kThreads - 1) / kThreads;
    if (blocks > 0x7FFFFFFF) return cudaErrorInvalidConfiguration;
    constexpr bool kShared = Cfg::NWEIGHTS * sizeof(float) <= kMaxSharedBytes;
    const size_t shared = kShared ? Cfg::NWEIGHTS * sizeof(float) : 0;
    raw* cur = static_cast<raw*>(a);
    raw* nxt = static_cast<raw*>(b);
    for (int64_t t = 0; t < steps; ++t) {
        const uint32_t key = nca::step_key(p.seed, p.level, static_cast<uint32_t>(t));
        step_kernel<Cfg, S, kShared><<<static_cast<unsigned>(blocks), kThreads, shared, stream>>>(
            cur, nxt, weights, g, key, p.threshold);
        cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) return err;
        raw* tmp = cur;
        cur = nxt;
        nxt = tmp;
    }
    *result = cur;
    return cudaSuccess;
}

bool same_shape(const Problem& p, int dims, int c, int hidden, int in, int k) {
    return p.dims == dims && p.channels == c && p.hidden == hidden && p.in_channels == in && p.kernel == k;
}

}  // namespace

bool supported(const Problem& p) {
    if (p.storage < kFloat32 || p.storage > kBFloat16) return false;
#define NCA_CUDA_MATCH(D, C, H, I, K) \
    if (same_shape(p, D, C, H, I, K)) return true;
    NCA_CUDA_SHAPES(NCA_CUDA_MATCH)
#undef NCA_CUDA_MATCH
    return false;
}

int64_t weight_count(const Problem& p) {
    const int64_t taps = (p.dims == 3 ? p.kernel : 1) * p.kernel * p.kernel;
    const int64_t c = p.channels, h = p.hidden;
    return c * taps + c + h * 2 * c + h + (c - p.in_channels) * h;
}

cudaError_t run(const Problem& p, void* a, void* b, const float* weights, int64_t steps, cudaStream_t stream,
                void** result) {
#define NCA_CUDA_DISPATCH(D, C, H, I, K)                                                             \
    if (same_shape(p, D, C, H, I, K)) {                                                              \
        using Cfg = nca::Cfg<D, C, H, I, K>;                                                         \
        if (p.storage == kFloat32) return run_shape<Cfg, nca::F32>(p, a, b, weights, steps, stream, result);  \
        if (p.storage == kFloat16) return run_shape<Cfg, nca::F16>(p, a, b, weights, steps, stream, result);  \
        if (p.storage == kBFloat16) return run_shape<Cfg, nca::BF16>(p, a, b, weights, steps, stream, result); \
    }
    NCA_CUDA_SHAPES(NCA_CUDA_DISPATCH)
#undef NCA_CUDA_DISPATCH
    return cudaErrorInvalidValue;
}

}  // namespace nca_cuda
