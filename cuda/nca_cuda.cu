// CUDA launcher for the fused NCA step; see nca_cuda.h.
//
// NCA_CUDA_SHAPES(X) lists the compiled model shapes as
// X(dims, channels, hidden, in, kernel, perception, normalization) (the arguments of nca::Cfg);
// a file that includes this one may define it first (nca_cli/kernels/build.py does). Every
// shape is compiled for float32, float16 and bfloat16 storage.
#include "nca_cell.h"
#include "nca_cuda.h"

// The one launch macro and the dynamic shared memory of a kernel; the CPU emulator
// (cuda/emu/cuda_emu.h) defines its own versions, so the same source runs there.
#ifndef NCA_LAUNCH
#define NCA_LAUNCH(kernel, grid, block, shared, stream, ...) kernel<<<grid, block, shared, stream>>>(__VA_ARGS__)
#endif
#ifndef NCA_DYNAMIC_SHARED
#define NCA_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#ifndef NCA_CUDA_SHAPES
#define NCA_CUDA_SHAPES(X) \
    X(2, 16, 64, 1, 3, 0, 0) X(2, 16, 64, 3, 3, 0, 0) X(3, 16, 64, 1, 3, 0, 0) X(3, 16, 64, 3, 3, 0, 0)
#endif

namespace nca_cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSharedBytes = 48 * 1024;
// Blocks of the statistics kernel: at most this many, each looping over cells; the block
// count (and so the order of the double sums) depends only on the number of cells. The
// emulated tests compile fewer, so that small states make the blocks loop.
#ifndef NCA_CUDA_STAT_BLOCKS
#define NCA_CUDA_STAT_BLOCKS 1024
#endif
constexpr int kStatBlocks = NCA_CUDA_STAT_BLOCKS;
// Hidden units reduced per warp at once: their 16 sums and 16 sums of squares, one per lane.
constexpr int kUnits = 16;

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

// The neighbourhood of `cell` (an index over batch and space); its coordinates in z, y, x.
template <class Cfg, class S>
__device__ __forceinline__ Neighbours<Cfg, S> neighbours(const typename S::raw* in, const Geometry& g, int64_t cell,
                                                         int64_t* z, int64_t* y, int64_t* x) {
    constexpr int C = Cfg::C, K = Cfg::K, P = Cfg::P;
    *x = cell % g.nx;
    *y = (cell / g.nx) % g.ny;
    *z = (cell / (g.nx * g.ny)) % g.nz;
    const int64_t b = cell / (g.nx * g.ny * g.nz);
    Neighbours<Cfg, S> nb;
    nb.base = in + b * g.nz * g.ny * g.nx * C;
    for (int d = 0; d < Cfg::KZ; ++d) nb.zoff[d] = Cfg::KZ == 1 ? 0 : nca::reflect(*z + d - P, g.nz) * g.ny * g.nx * C;
    for (int d = 0; d < K; ++d) {
        nb.yoff[d] = nca::reflect(*y + d - P, g.ny) * g.nx * C;
        nb.xoff[d] = nca::reflect(*x + d - P, g.nx) * C;
    }
    return nb;
}

// Floats of shared memory the step kernel uses when SHARED: weights, then alpha, beta.
template <class Cfg>
constexpr int step_shared_floats() {
    return Cfg::NWEIGHTS + (Cfg::BN ? 2 * Cfg::HIDDEN : 0);
}

// The weights (and BatchNorm's alpha, beta) the step kernels read: copied to shared memory
// by the block when SHARED, else read from global memory.
template <class Cfg, bool SHARED>
__device__ __forceinline__ void step_weights(const float* weights, const float* norm, const float** w,
                                             const float** nrm) {
    NCA_DYNAMIC_SHARED(shared);
    float* shared_weights = reinterpret_cast<float*>(shared);
    *w = weights;
    *nrm = norm;
    if (SHARED) {
        for (int i = threadIdx.x; i < Cfg::NWEIGHTS; i += blockDim.x) shared_weights[i] = weights[i];
        if constexpr (Cfg::BN) {
            for (int i = threadIdx.x; i < 2 * Cfg::HIDDEN; i += blockDim.x) shared_weights[Cfg::NWEIGHTS + i] = norm[i];
        }
        __syncthreads();
        *w = shared_weights;
        *nrm = shared_weights + Cfg::NWEIGHTS;
    }
}

// One cell at (z, y, x) of its item: whether it fires, and if so its new channels IN..C-1 in
// dst (the other channels are left to the caller).
template <class Cfg, class S, class Nb>
__device__ __forceinline__ bool update_cell(const float* w, const float* nrm, const Nb& nb, const Geometry& g,
                                            int64_t z, int64_t y, int64_t x, uint32_t key, uint32_t threshold,
                                            typename S::raw* dst) {
    const uint32_t zc = Cfg::DIMS == 3 ? static_cast<uint32_t>(g.oz + z) : 0u;
    const uint32_t hrow = nca::row_hash(key, zc, static_cast<uint32_t>(g.oy + y));
    if (!nca::fires(hrow, static_cast<uint32_t>(g.ox + x), threshold)) return false;
    float feat[Cfg::FEAT];
    float delta[Cfg::OUT];
    nca::perceive<Cfg, float>(w, nb, feat);
    nca::update<Cfg, float>(w, feat, delta, nrm);
    for (int o = 0; o < Cfg::OUT; ++o) dst[Cfg::IN + o] = S::store(feat[Cfg::IN + o] + delta[o]);
    return true;
}

// Double-buffered step: one thread per cell reads `in`, writes `out`.
template <class Cfg, class S, bool SHARED>
__global__ void __launch_bounds__(kThreads)
step_kernel(const typename S::raw* __restrict__ in, typename S::raw* __restrict__ out,
            const float* __restrict__ weights, const float* __restrict__ norm, Geometry g, uint32_t key,
            uint32_t threshold) {
    constexpr int C = Cfg::C, IN = Cfg::IN;
    const float *w, *nrm;
    step_weights<Cfg, SHARED>(weights, norm, &w, &nrm);
    const int64_t cells = g.batch * g.nz * g.ny * g.nx;
    const int64_t cell = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (cell >= cells) return;
    const typename S::raw* src = in + cell * C;
    typename S::raw* dst = out + cell * C;
    int64_t z, y, x;
    const Neighbours<Cfg, S> nb = neighbours<Cfg, S>(in, g, cell, &z, &y, &x);
    const bool fired = update_cell<Cfg, S>(w, nrm, nb, g, z, y, x, key, threshold, dst);
    for (int c = 0; c < (fired ? IN : C); ++c) dst[c] = src[c];
}

// ---------------------------------------------------------------------------------------
// In-place step. The outer axis (z in 3D, y in 2D; its index a "plane") of every item is cut
// into bands, one block per band. Before the step, save_borders_kernel copies the P planes
// on each side of every band (which the neighbouring bands' blocks will overwrite) into
// `borders`. Then band_kernel sweeps its band plane by plane: it copies plane y into a ring
// of P + 1 planes (the original values of planes y - P .. y), waits for the whole block,
// updates every cell of plane y in the state, and waits again. A neighbour plane r is read
// from the borders when it lies outside the band, from the ring when r <= y (already
// overwritten, or being overwritten), else from the state. Side memory: 3P + 1 planes per
// band, not a second state; the same sums in the same order, so the same bits as step_kernel.

// Bands of the in-place step.
struct Bands {
    int64_t n;         // planes per item
    int64_t plane;     // cells per plane
    int64_t planes;    // planes per band (the last band of an item may have fewer)
    int64_t per_item;  // bands per item
    int64_t count;     // bands in all (= blocks)
};

// At most this many bands, and side buffers of at most 1 / kSideShare of the state. With
// fewer than kMinBands bands (blocks) the device would sit mostly idle: by default such
// states take the double-buffered step (in_place_by_default).
constexpr int64_t kMaxBands = 1024;
constexpr int64_t kSideShare = 8;
constexpr int64_t kMinBands = 128;

Bands bands_of(const Problem& p) {
    const int64_t radius = p.kernel / 2, side = 3 * radius + 1;
    Bands b{};
    b.n = p.dims == 3 ? p.size[0] : p.size[1];
    b.plane = p.dims == 3 ? p.size[1] * p.size[2] : p.size[2];
    int64_t planes = p.band_planes;
    if (planes <= 0) {
        int64_t want = p.batch * b.n / (kSideShare * side);
        want = want < 1 ? 1 : want > kMaxBands ? kMaxBands : want;
        const int64_t per_item = (want + p.batch - 1) / p.batch;
        planes = (b.n + per_item - 1) / per_item;
    }
    b.planes = planes < 1 ? 1 : planes > b.n ? b.n : planes;
    b.per_item = b.n == 0 ? 0 : (b.n + b.planes - 1) / b.planes;
    b.count = p.batch * b.per_item;
    return b;
}

// Raw elements of the side buffers of the in-place step: borders, then the rings.
int64_t side_elements(const Problem& p, const Bands& b) {
    return b.count * (3 * (p.kernel / 2) + 1) * b.plane * p.channels;
}

// First plane of a band within its item.
__device__ __forceinline__ int64_t band_start(const Bands& b, int64_t band) {
    return (band % b.per_item) * b.planes;
}

template <class Cfg, class S>
__global__ void __launch_bounds__(kThreads)
save_borders_kernel(const typename S::raw* __restrict__ state, typename S::raw* __restrict__ borders, Bands b) {
    constexpr int C = Cfg::C, P = Cfg::P;
    const int64_t band = blockIdx.x, item = band / b.per_item, y0 = band_start(b, band);
    const int64_t y1 = y0 + b.planes < b.n ? y0 + b.planes : b.n, len = b.plane * C;
    for (int j = 0; j < 2 * P; ++j) {
        const int64_t r = j < P ? y0 - P + j : y1 + j - P;
        if (r < 0 || r >= b.n) continue;
        const typename S::raw* src = state + (item * b.n + r) * len;
        typename S::raw* dst = borders + (band * 2 * P + j) * len;
        for (int64_t i = threadIdx.x; i < len; i += blockDim.x) dst[i] = src[i];
    }
}

// Neighbour values of one cell of the in-place step: per tap along the outer axis, the
// plane it reads (state, ring or borders), and the in-plane offsets.
template <class Cfg, class S>
struct BandNeighbours {
    const typename S::raw* plane[Cfg::K];
    int64_t yoff[Cfg::DIMS == 3 ? Cfg::K : 1], xoff[Cfg::K];
    __device__ __forceinline__ float operator()(int c, int dz, int dy, int dx) const {
        if constexpr (Cfg::DIMS == 3) return S::load(plane[dz][yoff[dy] + xoff[dx] + c]);
        return S::load(plane[dy][xoff[dx] + c]);
    }
};

template <class Cfg, class S, bool SHARED>
__global__ void __launch_bounds__(kThreads)
band_kernel(typename S::raw* __restrict__ state, const typename S::raw* __restrict__ borders,
            typename S::raw* __restrict__ rings, const float* __restrict__ weights, const float* __restrict__ norm,
            Geometry g, Bands b, uint32_t key, uint32_t threshold) {
    using raw = typename S::raw;
    constexpr int C = Cfg::C, K = Cfg::K, P = Cfg::P;
    const float *w, *nrm;
    step_weights<Cfg, SHARED>(weights, norm, &w, &nrm);
    const int64_t band = blockIdx.x, item = band / b.per_item, y0 = band_start(b, band);
    const int64_t y1 = y0 + b.planes < b.n ? y0 + b.planes : b.n, len = b.plane * C;
    raw* items = state + item * b.n * len;
    raw* ring = rings + band * (P + 1) * len;
    const raw* border = borders + band * 2 * P * len;
    const int64_t nin = Cfg::DIMS == 3 ? g.ny : 1;  // rows per plane
    for (int64_t y = y0; y < y1; ++y) {
        raw* slot = ring + (y % (P + 1)) * len;
        raw* here = items + y * len;
        for (int64_t i = threadIdx.x; i < len; i += blockDim.x) slot[i] = here[i];
        __syncthreads();
        BandNeighbours<Cfg, S> nb;
        for (int d = 0; d < K; ++d) {
            const int64_t r = nca::reflect(y + d - P, b.n);
            nb.plane[d] = r < y0   ? border + (r - (y0 - P)) * len
                          : r >= y1 ? border + (P + r - y1) * len
                          : r <= y  ? ring + (r % (P + 1)) * len
                                    : items + r * len;
        }
        for (int64_t cell = threadIdx.x; cell < b.plane; cell += blockDim.x) {
            const int64_t x = cell % g.nx, row = cell / g.nx;
            for (int d = 0; d < K; ++d) {
                if constexpr (Cfg::DIMS == 3) nb.yoff[d] = nca::reflect(row + d - P, nin) * g.nx * C;
                nb.xoff[d] = nca::reflect(x + d - P, g.nx) * C;
            }
            raw* dst = here + cell * C;
            if constexpr (Cfg::DIMS == 3) update_cell<Cfg, S>(w, nrm, nb, g, y, row, x, key, threshold, dst);
            else update_cell<Cfg, S>(w, nrm, nb, g, 0, y, x, key, threshold, dst);
        }
        __syncthreads();
    }
}

// Sum of x[0..32) over the 32 lanes of a warp; lane L returns the sum of element L. The
// additions follow a fixed pattern (recursive halving), so the result does not vary from
// run to run; 31 shuffles for 32 sums.
__device__ __forceinline__ double warp_reduce_scatter(double (&x)[32]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) {
        const bool upper = (lane & o) != 0;
#pragma unroll
        for (int i = 0; i < o; ++i) {
            const double send = upper ? x[i] : x[i + o];
            const double keep = upper ? x[i + o] : x[i];
            x[i] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, o);
        }
    }
    return x[0];
}

// Receives the pre-activations of kUnits hidden units of every cell of a warp; lane L
// adds the warp's sum of z (L < 16) or z^2 (L >= 16) of unit j0 + L % 16 to its own slot
// of the warp's sums, sums[0 .. H) of z and sums[H .. 2H) of z^2.
template <class Cfg>
struct WarpStatistics {
    double* sums;
    bool valid;  // this lane's cell exists
    __device__ __forceinline__ void operator()(int j0, const float* z, int count) const {
        double x[32];
#pragma unroll
        for (int i = 0; i < kUnits; ++i) {
            double v = 0.0;
            if (valid && i < count) v = static_cast<double>(z[i]);
            x[i] = v;
            x[kUnits + i] = v * v;  // exact: a float's square fits in a double
        }
        const double total = warp_reduce_scatter(x);
        const int lane = threadIdx.x & 31, unit = j0 + lane % kUnits;
        if (unit < Cfg::HIDDEN) sums[(lane < kUnits ? 0 : Cfg::HIDDEN) + unit] += total;
    }
};

// Shared memory of the statistics kernel besides the weights: the warps' sums (first, so
// the doubles are aligned; the weights follow when they fit).
template <class Cfg>
__host__ __device__ constexpr int statistics_sums_bytes() {
    return kWarps * 2 * Cfg::HIDDEN * static_cast<int>(sizeof(double));
}

// BatchNorm, first pass: block b writes partial[b][0 .. H) = sums of z, partial[b][H .. 2H) =
// sums of z^2 over its cells (blocks stride over all cells of the batch, fire mask ignored).
template <class Cfg, class S, bool SHARED>
__global__ void __launch_bounds__(kThreads)
statistics_kernel(const typename S::raw* __restrict__ in, const float* __restrict__ weights, Geometry g,
                  double* __restrict__ partial) {
    constexpr int H = Cfg::HIDDEN;
    NCA_DYNAMIC_SHARED(shared);
    double (*warp_sums)[2 * H] = reinterpret_cast<double (*)[2 * H]>(shared);
    float* shared_weights = reinterpret_cast<float*>(shared + statistics_sums_bytes<Cfg>());
    const float* w = weights;
    if (SHARED) {
        for (int i = threadIdx.x; i < Cfg::NWEIGHTS; i += blockDim.x) shared_weights[i] = weights[i];
        w = shared_weights;
    }
    for (int i = threadIdx.x; i < kWarps * 2 * H; i += blockDim.x) (&warp_sums[0][0])[i] = 0.0;
    __syncthreads();
    const int64_t cells = g.batch * g.nz * g.ny * g.nx;
    WarpStatistics<Cfg> sink{warp_sums[threadIdx.x / 32], false};
    // Every thread of a block runs the same iterations: the shuffles need the whole warp.
    for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x; base < cells;
         base += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t cell = base + threadIdx.x;
        sink.valid = cell < cells;
        float feat[Cfg::FEAT];
        if (sink.valid) {
            int64_t z, y, x;
            nca::perceive<Cfg, float>(w, neighbours<Cfg, S>(in, g, cell, &z, &y, &x), feat);
        } else {
            for (int k = 0; k < Cfg::FEAT; ++k) feat[k] = 0.0f;
        }
        nca::pre_activations<Cfg, float, kUnits>(w, feat, sink);
    }
    __syncthreads();
    for (int t = threadIdx.x; t < 2 * H; t += blockDim.x) {
        double s = 0.0;
        for (int v = 0; v < kWarps; ++v) s += warp_sums[v][t];
        partial[static_cast<int64_t>(blockIdx.x) * 2 * H + t] = s;
    }
}

// BatchNorm, second pass (one block): the blocks' sums, added in block order, give each
// hidden unit's alpha, beta (norm[0 .. H), norm[H .. 2H)) for the step kernel.
template <class Cfg>
__global__ void normalisation_kernel(const double* __restrict__ partial, int blocks, double count,
                                     const float* __restrict__ weights, float* __restrict__ norm) {
    constexpr int H = Cfg::HIDDEN;
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
        double s = 0.0, q = 0.0;
        for (int b = 0; b < blocks; ++b) {
            s += partial[static_cast<int64_t>(b) * 2 * H + j];
            q += partial[static_cast<int64_t>(b) * 2 * H + H + j];
        }
        nca::batch_norm_affine<Cfg>(s, q, count, weights[Cfg::OFF_BN + j], weights[Cfg::OFF_BN + H + j], &norm[j],
                                    &norm[H + j]);
    }
}

// Bytes of the BatchNorm scratch at the start of the workspace (per-block sums, alpha, beta),
// rounded up to 256 so that the side buffers of the in-place step that follow are aligned.
size_t statistics_bytes(const Problem& p) {
    if (p.normalization != nca::BATCH_NORM) return 0;
    const size_t bytes =
        static_cast<size_t>(kStatBlocks) * 2 * p.hidden * sizeof(double) + 2 * p.hidden * sizeof(float);
    return (bytes + 255) / 256 * 256;
}

// After a launch: its own error and, with `sync`, the kernel's run (so a fault names its
// kernel instead of surfacing at a later call). False, with *status set, on failure.
bool launched(const char* kernel, cudaStream_t stream, bool sync, Status* status) {
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess && sync) err = cudaStreamSynchronize(stream);
    if (err == cudaSuccess) return true;
    *status = Status{err, kernel};
    return false;
}

template <class Cfg, class S>
Status run_shape(const Problem& p, void* a, void* b, const float* weights, void* workspace, int64_t steps,
                 cudaStream_t stream, bool sync, void** result) {
    using raw = typename S::raw;
    Geometry g{p.batch, p.size[0], p.size[1], p.size[2], p.origin[0], p.origin[1], p.origin[2]};
    const int64_t cells = g.batch * g.nz * g.ny * g.nx;
    Status status{cudaSuccess, nullptr};
    *result = a;
    if (cells == 0 || steps <= 0) return status;
    const int64_t blocks = (cells + kThreads - 1) / kThreads;
    if (blocks > 0x7FFFFFFF) return Status{cudaErrorInvalidConfiguration, "step_kernel"};
    constexpr bool kShared = step_shared_floats<Cfg>() * sizeof(float) <= kMaxSharedBytes;
    const size_t shared = kShared ? step_shared_floats<Cfg>() * sizeof(float) : 0;
    constexpr bool kStatShared = Cfg::NWEIGHTS * sizeof(float) + statistics_sums_bytes<Cfg>() <= kMaxSharedBytes;
    const size_t stat_shared = statistics_sums_bytes<Cfg>() + (kStatShared ? Cfg::NWEIGHTS * sizeof(float) : 0);
    const int stat_blocks = static_cast<int>(blocks < kStatBlocks ? blocks : kStatBlocks);
    double* partial = static_cast<double*>(workspace);
    float* norm = Cfg::BN ? reinterpret_cast<float*>(partial + kStatBlocks * 2 * Cfg::HIDDEN) : nullptr;
    raw* cur = static_cast<raw*>(a);
    raw* nxt = static_cast<raw*>(b);
    const auto statistics = statistics_kernel<Cfg, S, kStatShared>;
    const auto normalisation = normalisation_kernel<Cfg>;
    const auto step = step_kernel<Cfg, S, kShared>;
    const auto save_borders = save_borders_kernel<Cfg, S>;
    const auto band_step = band_kernel<Cfg, S, kShared>;
    const Bands bands = bands_of(p);
    if (p.in_place && bands.count > 0x7FFFFFFF) return Status{cudaErrorInvalidConfiguration, "band_kernel"};
    raw* borders = p.in_place ? reinterpret_cast<raw*>(static_cast<char*>(workspace) + statistics_bytes(p)) : nullptr;
    raw* rings = p.in_place ? borders + bands.count * 2 * Cfg::P * bands.plane * Cfg::C : nullptr;
    for (int64_t t = 0; t < steps; ++t) {
        const uint32_t key = nca::step_key(p.seed, p.level, static_cast<uint32_t>(t));
        if constexpr (Cfg::BN) {
            NCA_LAUNCH(statistics, stat_blocks, kThreads, stat_shared, stream, cur, weights, g, partial);
            if (!launched("statistics_kernel", stream, sync, &status)) return status;
            NCA_LAUNCH(normalisation, 1, kThreads, 0, stream, partial, stat_blocks, static_cast<double>(cells),
                       weights, norm);
            if (!launched("normalisation_kernel", stream, sync, &status)) return status;
        }
        if (p.in_place) {
            if (Cfg::P > 0) {
                NCA_LAUNCH(save_borders, static_cast<unsigned>(bands.count), kThreads, 0, stream, cur, borders, bands);
                if (!launched("save_borders_kernel", stream, sync, &status)) return status;
            }
            NCA_LAUNCH(band_step, static_cast<unsigned>(bands.count), kThreads, shared, stream, cur, borders, rings,
                       weights, norm, g, bands, key, p.threshold);
            if (!launched("band_kernel", stream, sync, &status)) return status;
            continue;
        }
        NCA_LAUNCH(step, static_cast<unsigned>(blocks), kThreads, shared, stream, cur, nxt, weights, norm, g, key,
                   p.threshold);
        if (!launched("step_kernel", stream, sync, &status)) return status;
        raw* tmp = cur;
        cur = nxt;
        nxt = tmp;
    }
    *result = cur;
    return status;
}
bool same_shape(const Problem& p, int dims, int c, int hidden, int in, int k, int perception, int normalization) {
    return p.dims == dims && p.channels == c && p.hidden == hidden && p.in_channels == in && p.kernel == k &&
           p.perception == perception && p.normalization == normalization;
}

}  // namespace

bool supported(const Problem& p) {
    if (p.storage < kFloat32 || p.storage > kBFloat16) return false;
#define NCA_CUDA_MATCH(D, C, H, I, K, PE, NO) \
    if (same_shape(p, D, C, H, I, K, PE, NO)) return true;
    NCA_CUDA_SHAPES(NCA_CUDA_MATCH)
#undef NCA_CUDA_MATCH
    return false;
}

int64_t weight_count(const Problem& p) {
    const int64_t taps = (p.dims == 3 ? p.kernel : 1) * p.kernel * p.kernel;
    const int64_t c = p.channels, h = p.hidden;
    const int64_t convs = p.perception == nca::FULL2 ? 2 : 1;
    const int64_t conv = (p.perception == nca::FULL2 ? c : 1) * c * taps + c;
    const int64_t bn = p.normalization == nca::BATCH_NORM ? 2 * h : 0;
    return convs * conv + h * (1 + convs) * c + h + bn + (c - p.in_channels) * h;
}

bool in_place_by_default(const Problem& p) {
    const int64_t n = p.dims == 3 ? p.size[0] : p.size[1], side = 3 * (p.kernel / 2) + 1;
    return p.batch * n / (kSideShare * side) >= kMinBands;  // the bands bands_of picks, about
}

size_t workspace_bytes(const Problem& p) {
    const size_t elem = p.storage == kFloat32 ? 4 : 2;
    const size_t side = p.in_place ? static_cast<size_t>(side_elements(p, bands_of(p))) * elem : 0;
    return statistics_bytes(p) + side;
}

Status run(const Problem& p, void* a, void* b, const float* weights, void* workspace, int64_t steps,
           cudaStream_t stream, bool sync, void** result) {
#define NCA_CUDA_DISPATCH(D, C, H, I, K, PE, NO)                                                        \
    if (same_shape(p, D, C, H, I, K, PE, NO)) {                                                         \
        using Cfg = nca::Cfg<D, C, H, I, K, PE, NO>;                                                    \
        if (p.storage == kFloat32) return run_shape<Cfg, nca::F32>(p, a, b, weights, workspace, steps, stream, sync, result);  \
        if (p.storage == kFloat16) return run_shape<Cfg, nca::F16>(p, a, b, weights, workspace, steps, stream, sync, result);  \
        if (p.storage == kBFloat16) return run_shape<Cfg, nca::BF16>(p, a, b, weights, workspace, steps, stream, sync, result); \
    }
    NCA_CUDA_SHAPES(NCA_CUDA_DISPATCH)
#undef NCA_CUDA_DISPATCH
    return Status{cudaErrorInvalidValue, nullptr};
}

}  // namespace nca_cuda
