// Python binding of the CPU launcher (nca_cpu.h) and the FMA throughput probe.
// The model shapes compiled in are registered by generated instantiation files
// (nca_cli/kernels/build.py), each calling nca_cpu::add<Cfg, Storage>().
//
// torch/csrc/utils/pybind.h (pybind11 with the at::Tensor caster) instead of the whole of
// torch/extension.h: it is all this file needs and compiles in a third of the time.
#include <torch/csrc/utils/pybind.h>

#include <chrono>
#include <map>
#include <string>
#include <new>
#include <utility>

#include "nca_cpu.h"

namespace nca_cpu {

std::map<Key, RunFn>& registry() {
    static std::map<Key, RunFn> r;
    return r;
}

std::pair<double, double> fma_peak(int threads, int64_t iters) {
    // Independent FMA chains held in registers: enough of them to cover the FMA latency
    // on every FMA port (32 vector registers with AVX-512, 16 otherwise).
#if defined(__AVX512F__)
    constexpr int CHAINS = 16;
#else
    constexpr int CHAINS = 10;
#endif
    threads = std::max(1, threads);
    float sink = 0.0f;
    auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
        vf acc[CHAINS];
        const vf a = vf{} + 0.9999999f;
        const vf b = vf{} + 1e-7f;
        for (int j = 0; j < CHAINS; ++j) acc[j] = vf{} + static_cast<float>(omp_get_thread_num() + j);
        for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
            for (int j = 0; j < CHAINS; ++j) acc[j] = acc[j] * a + b;
        }
        vf s = {};
        for (int j = 0; j < CHAINS; ++j) s += acc[j];
        for (int l = 0; l < LANES; ++l) sink += s[l];
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    volatile float keep = sink;
    (void)keep;
    return {2.0 * LANES * CHAINS * static_cast<double>(iters) * threads, secs};
}

}  // namespace nca_cpu

namespace {

int storage_code(const at::Tensor& t) {
    switch (t.scalar_type()) {
        case at::kFloat: return nca::F32::code;
        case at::kHalf: return nca::F16::code;
        case at::kBFloat16: return nca::BF16::code;
        default: TORCH_CHECK(false, "state must be float32, float16 or bfloat16, got ", t.scalar_type());
    }
    return -1;
}

// Statistics groups of one batch item of a BatchNorm step (stats_group_planes).
int64_t statistics_groups(int64_t nouter, int64_t plane_cells) {
    const int64_t planes = nca_cpu::stats_group_planes(nouter, plane_cells);
    return (nouter + planes - 1) / planes;
}

int64_t strip_rows(int64_t rows, int64_t row_bytes, int64_t radius) {
    return nca_cpu::strip_rows(rows, row_bytes, static_cast<int>(radius));
}

int64_t keep_floats(int64_t nouter, int64_t rows, int64_t width, int64_t nconv_channels) {
    return nca_cpu::keep_floats(nouter, rows, width, static_cast<int>(nconv_channels));
}

nca_cpu::Key make_key(int64_t dims, int64_t channels, int64_t hidden, int64_t in, int64_t kernel, int64_t perception,
                      int64_t normalization, int64_t storage) {
    return nca_cpu::Key{static_cast<int>(dims),       static_cast<int>(channels),      static_cast<int>(hidden),
                        static_cast<int>(in),         static_cast<int>(kernel),        static_cast<int>(perception),
                        static_cast<int>(normalization), static_cast<int>(storage)};
}

bool has(int64_t dims, int64_t channels, int64_t hidden, int64_t in, int64_t kernel, int64_t perception,
         int64_t normalization, int64_t storage) {
    return nca_cpu::registry().count(make_key(dims, channels, hidden, in, kernel, perception, normalization, storage)) > 0;
}

// Packed weights of a model shape (layout: nca::Cfg in nca_cell.h).
int64_t weight_count(int64_t dims, int64_t channels, int64_t hidden, int64_t in, int64_t kernel, int64_t perception,
                     int64_t normalization) {
    const int64_t taps = (dims == 3 ? kernel : 1) * kernel * kernel;
    const int64_t convs = perception == nca::FULL2 ? 2 : 1;
    const int64_t conv = (perception == nca::FULL2 ? channels : 1) * channels * taps + channels;
    const int64_t bn = normalization == nca::BATCH_NORM ? 2 * hidden : 0;
    return convs * conv + hidden * (1 + convs) * channels + hidden + bn + (channels - in) * hidden;
}

void run(at::Tensor state, at::Tensor weights, int64_t dims, int64_t channels, int64_t hidden, int64_t in,
         int64_t kernel, int64_t perception, int64_t normalization, int64_t steps, int64_t seed, int64_t level,
         std::vector<int64_t> origin, int64_t threshold, int64_t threads, bool keep, at::Tensor kept) {
    TORCH_CHECK(state.device().is_cpu() && weights.device().is_cpu(), "state and weights must be on the CPU");
    TORCH_CHECK(state.is_contiguous(), "state must be contiguous (channels last)");
    TORCH_CHECK(state.dim() == dims + 2 && state.size(-1) == channels, "state must be [B, *spatial, C]");
    TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.dim() == 1,
                "weights must be a contiguous float32 vector");
    TORCH_CHECK(static_cast<int64_t>(origin.size()) == dims, "origin needs one entry per spatial axis");
    const int64_t nweights = weight_count(dims, channels, hidden, in, kernel, perception, normalization);
    TORCH_CHECK(weights.numel() == nweights, "expected ", nweights, " packed weights, got ", weights.numel());
    auto it = nca_cpu::registry().find(
        make_key(dims, channels, hidden, in, kernel, perception, normalization, storage_code(state)));
    TORCH_CHECK(it != nca_cpu::registry().end(), "no compiled kernel for this model shape and dtype");
    nca_cpu::Problem pb{};
    pb.batch = state.size(0);
    pb.size[0] = dims == 3 ? state.size(1) : 1;
    pb.size[1] = state.size(dims == 3 ? 2 : 1);
    pb.size[2] = state.size(dims == 3 ? 3 : 2);
    pb.origin[0] = dims == 3 ? origin[0] : 0;
    pb.origin[1] = origin[dims - 2];
    pb.origin[2] = origin[dims - 1];
    pb.seed = static_cast<uint64_t>(seed);
    pb.level = static_cast<uint32_t>(level);
    pb.steps = steps;
    pb.threshold = static_cast<uint32_t>(threshold);
    pb.threads = static_cast<int>(std::max<int64_t>(1, threads));
    pb.keep = keep;
    pb.kept_buffer = nullptr;
    if (keep && kept.numel() > 0) {
        const int64_t rows = dims == 3 ? pb.size[1] : 1;
        const int64_t convs = perception == nca::FULL2 ? 2 : 1;
        const int64_t nouter = dims == 3 ? pb.size[0] : pb.size[1];
        const int64_t need =
            pb.batch * nca_cpu::keep_floats(nouter, rows, pb.size[2], static_cast<int>(convs * channels));
        TORCH_CHECK(kept.device().is_cpu() && kept.scalar_type() == at::kFloat && kept.is_contiguous(),
                    "the kept-perception buffer must be a contiguous float32 CPU tensor");
        TORCH_CHECK(kept.numel() >= need, "the kept-perception buffer needs ", need, " floats, got ", kept.numel());
        TORCH_CHECK(reinterpret_cast<uintptr_t>(kept.data_ptr()) % 64 == 0,
                    "the kept-perception buffer must be 64-byte aligned");
        pb.kept_buffer = kept.data_ptr<float>();
    }
    if (state.numel() == 0 || steps <= 0) return;
    void* data = state.data_ptr();
    const float* w = weights.data_ptr<float>();
    nca_cpu::RunFn fn = it->second;
    {
        pybind11::gil_scoped_release release;
        fn(data, w, pb);
    }
}

// What run() allocates beside the state, in bytes, derived from the same constants and
// helpers as the allocations themselves (nca_cpu.h: Band's constructor and run()): per thread
// (one band of the outer axis each) the ring of 2P + 1 float32 strips of blocked rows, the 2P
// raw halo planes and, when planes are swept in strips, P saved raw rows per plane of its band;
// with BatchNorm each thread's moment buffers (features, float products, W0 in double) and, per
// statistics group of the batch, its sums (2 HIDDEN doubles) and record (GROUP_DOUBLES). The
// kept perception is not included: see keep_floats.
int64_t workspace_bytes(int64_t dims, int64_t channels, int64_t hidden, int64_t kernel, int64_t perception,
                        int64_t normalization, int64_t storage_bytes, int64_t batch, std::vector<int64_t> size,
                        int64_t threads) {
    TORCH_CHECK(static_cast<int64_t>(size.size()) == dims, "size needs one entry per spatial axis");
    using nca_cpu::LANES;
    const int64_t p = kernel / 2, ring_planes = 2 * p + 1;
    const int64_t nouter = size[0], rows = dims == 3 ? size[1] : 1, width = size[dims - 1];
    const int64_t nblk = (width + LANES - 1) / LANES;
    const int64_t row_floats = (nblk + 2) * channels * LANES;
    const int64_t strip = dims == 3 ? nca_cpu::strip_rows(rows, 4 * row_floats, static_cast<int>(p)) : 1;
    const int64_t plane_floats = std::min<int64_t>(rows, strip + 2 * p) * row_floats;
    const int64_t raw_row = width * channels, raw_plane = rows * raw_row;
    const int64_t ring = 4 * plane_floats * ring_planes;
    const int64_t halo = (storage_bytes * raw_plane * 2 * p + 63) / 64 * 64;
    const bool bn = normalization == nca::BATCH_NORM;
    const int64_t feat = (perception == nca::FULL2 ? 3 : 2) * channels, featp = (feat + 3) / 4 * 4;
    const int64_t moments = bn ? ((4 * (256 / LANES * featp + featp * featp) * LANES + 8 * (feat * hidden + hidden)
                                   + 63) / 64 * 64) : 0;
    const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, nouter));
    int64_t total = 0;
    for (int64_t t = 0; t < nt; ++t) {
        const int64_t band = nouter * (t + 1) / nt - nouter * t / nt;
        const int64_t saved = strip < rows ? storage_bytes * raw_row * p * band : 0;
        total += ring + halo + saved + 64 + moments;
    }
    if (bn) {
        const int64_t plane_cells = dims == 3 ? size[1] * size[2] : size[1];
        const int64_t groups = batch * statistics_groups(nouter, plane_cells);
        total += groups * (2 * hidden + 2 * featp + featp * featp + 2) * 8 + 2 * hidden * 4;
    }
    return total;
}

std::vector<std::vector<int64_t>> instances() {
    std::vector<std::vector<int64_t>> out;
    for (const auto& kv : nca_cpu::registry()) out.emplace_back(kv.first.begin(), kv.first.end());
    return out;
}

std::pair<double, double> fma_peak(int64_t threads, int64_t iters) {
    pybind11::gil_scoped_release release;
    return nca_cpu::fma_peak(static_cast<int>(threads), iters);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Fused NCA step on the CPU (OpenMP, in place).";
    m.def("run", &run, "Run steps of the fused NCA step in place on a channels-last state.");
    m.def("has", &has, "Whether a model shape and storage dtype is compiled in.");
    m.def("instances", &instances,
          "Compiled (dims, channels, hidden, in, kernel, perception, normalization, storage) tuples.");
    m.def("weight_count", &weight_count, "Packed float32 weights of a model shape.");
    m.def("fma_peak", &fma_peak, "Float32 FMA throughput probe: (FLOPs done, wall seconds).");
    m.def("lanes", []() { return nca_cpu::LANES; }, "Cells per SIMD vector.");
    m.def("constants", []() {
        return std::map<std::string, int64_t>{{"lanes", nca_cpu::LANES},
                                              {"stats_group_cells", nca_cpu::STATS_GROUP_CELLS},
                                              {"stats_max_groups", nca_cpu::STATS_MAX_GROUPS},
                                              {"strip_bytes", nca_cpu::STRIP_BYTES}};
    }, "The launcher's sizes: SIMD lanes, statistics-group cells and count limit, strip bytes.");
    m.def("statistics_groups", &statistics_groups,
          "Statistics groups per batch item of a BatchNorm step: (planes of the outer axis, cells per plane).");
    m.def("strip_rows", &strip_rows, "Rows per strip of the 3D sweep: (rows, float32 ring row bytes, radius).");
    m.def("keep_floats", &keep_floats,
          "Floats of one batch item's kept perception: (outer planes, rows, width, convs x channels).");
    m.def("workspace_bytes", &workspace_bytes,
          "Bytes run() allocates beside the state: (dims, channels, hidden, kernel, perception, normalization, "
          "storage bytes, batch, spatial size, threads).");
}
