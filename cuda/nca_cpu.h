// CPU launcher for the fused NCA step: OpenMP threads, state updated in place.
//
// State layout: channels last, [B, H, W, C] (2D) or [B, D, H, W, C] (3D), storage type
// float / half / bfloat16. The outermost spatial axis (H in 2D, D in 3D) is split into one
// band per thread; a "plane" is one index of that axis (a row in 2D, a slice in 3D).
// Each thread keeps
//   - raw copies of the 2P planes just outside its band, taken before any thread writes;
//   - a ring of 2P + 1 float32 copies of the planes around the plane being updated, each
//     made just before its first use, so before this thread overwrites that plane.
// Extra memory per step is therefore 4P + 1 planes per thread, not a second state.
//
// 3D planes larger than STRIP_BYTES are swept in strips of rows (strip_rows): for each strip
// every plane of the band, so the ring holds 2P + 1 strips (plus P rows each side), which
// stay in cache, instead of whole planes. The P rows above a strip were updated with the
// strip before; their original values are saved, per plane of the band, when the plane is
// copied into the ring for that strip (P raw rows per plane of the band).
//
// Ring planes are blocked: per row, blocks of LANES cells, per block C aligned vectors (one
// per channel, one lane per cell), with one extra block at each end of the row holding the
// reflected border. A neighbour at offset dx is an aligned load of the block, or a lane
// shift of it and the block beside it; every perception load is aligned and a fixed offset
// from one pointer per neighbour row.
//
// Cells of a row are perceived LANES at a time; the cells that fire are packed into a
// queue of LANES cells and fc0 / ReLU / fc1 run on full queues, so cells that do not fire
// cost no matrix work. 3D depthwise perception takes 8 rows of a plane at once
// (nca::perceive_depthwise_rows): each neighbour row is loaded and lane-shifted once for all
// the output rows it serves. The rows left at the end of a strip go in groups of 4, 2 and 1,
// which sum every cell in the same order, so strips never change a bit.
//
// BatchNorm (Cfg::BN) normalises with the statistics of the whole batch of the current
// state, so a step takes two sweeps. The statistics sweep only reads: the planes of the
// batch are cut into fixed groups (stats_group_planes: about STATS_GROUP_CELLS cells, at
// most STATS_MAX_GROUPS per item, whatever the number of threads), the groups are shared
// out among the threads, and every cell of a group is perceived straight from the state
// (all cells: the fire mask plays no part; the ring serves as conversion scratch, no halos
// are needed). A thread sweeps its groups strip by strip, each group's moments carried in
// its record (GROUP_DOUBLES) from one strip to the next, so each plane is converted once
// per strip, not once per group. Instead of fc0 per cell (FEAT x HIDDEN multiply-adds) the sweep takes the
// moments of the features about a reference cell: blocks of features are buffered, their
// sums and pairwise products added up as a small matrix product in float32 over at most
// 256 cells per lane and then in double, and at the end of a group nca::moment_sums turns
// them, in double, into the group's sums of z and z^2 per hidden unit (FEAT (FEAT + 1) / 2
// multiply-adds per cell instead of FEAT x HIDDEN). After a barrier the group sums are added
// in group order (so the result does not depend on the number of threads), turned into
// alpha, beta (nca::batch_norm_affine), and after a second barrier the update sweep runs as
// above. The extra memory is 2 * HIDDEN + GROUP_DOUBLES doubles per group and, per thread,
// the feature buffer, the float products and W0 in double (tens of KiB).
//
// With Problem::keep the statistics sweep also stores its conv outputs (float32, NCONV * C
// vectors per block of cells, keep_floats per item) and the update sweep reads them back
// instead of perceiving again: it needs no neighbours then, only the cell itself, so it
// reads no ring, halos or strips. Same result, bit for bit; half the perception work, for
// C * NCONV floats per cell more memory (the models keep it for coarse levels only, in pages
// the finer levels fill later: nca_cli/inference/octree.py, keeps_perception).
#pragma once

#include <omp.h>
#include <stdint.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <array>
#include <map>
#include <new>
#include <utility>
#include <vector>

#include "nca_cell.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace nca_cpu {

#if defined(__AVX512F__)
constexpr int LANES = 16;
#elif defined(__AVX__)
constexpr int LANES = 8;
#else
constexpr int LANES = 4;
#endif
typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));
typedef uint32_t vu __attribute__((vector_size(LANES * sizeof(uint32_t))));
typedef uint16_t vh __attribute__((vector_size(LANES * sizeof(uint16_t))));
constexpr int DLANES = LANES / 2;  // doubles per vector of LANES / 2 floats converted
typedef float vfh __attribute__((vector_size(DLANES * sizeof(float))));
typedef double vd __attribute__((vector_size(DLANES * sizeof(double))));
typedef uint16_t lanemask;  // bit i: lane i

// BatchNorm statistics groups (see the top of this file); exported to Python by nca_cpu.cpp
// (constants, statistics_groups, workspace_bytes).
constexpr int64_t STATS_GROUP_CELLS = int64_t(1) << 15;
constexpr int64_t STATS_MAX_GROUPS = 1024;

// Planes (outer-axis indices) per statistics group of a state with `nouter` planes of
// `plane_cells` cells.
inline int64_t stats_group_planes(int64_t nouter, int64_t plane_cells) {
    const int64_t by_cells = (STATS_GROUP_CELLS + plane_cells - 1) / std::max<int64_t>(1, plane_cells);
    const int64_t by_count = (nouter + STATS_MAX_GROUPS - 1) / STATS_MAX_GROUPS;
    return std::max<int64_t>(1, std::min<int64_t>(nouter, std::max(by_cells, by_count)));
}

// Ring size above which 3D planes are swept in strips of rows; exported to Python by
// nca_cpu.cpp (constants, strip_rows, workspace_bytes). NCA_CPU_STRIP_ROWS overrides the
// strip height (tests).
constexpr int64_t STRIP_BYTES = int64_t(1) << 20;

// Rows per strip for ring rows of `row_bytes` and kernel radius `p` (`rows`: whole planes).
inline int64_t strip_rows(int64_t rows, int64_t row_bytes, int p) {
    const int64_t ring = (2 * p + 1) * row_bytes;
    int64_t s = STRIP_BYTES / std::max<int64_t>(1, ring) - 2 * p;
    s = (std::max<int64_t>(s, std::max(4 * p, 8)) + 7) / 8 * 8;   // whole groups of 8 rows (Band::NR)
    if (const char* env = getenv("NCA_CPU_STRIP_ROWS")) s = std::max<int64_t>(std::max(4 * p, 1), atoll(env));
    return s >= rows ? rows : s;
}

inline vf loadu(const float* p) {
    vf v;
    memcpy(&v, p, sizeof(vf));
    return v;
}

inline void storeu(float* p, vf v) { memcpy(p, &v, sizeof(vf)); }

inline vu iota() {
    vu v;
    for (int i = 0; i < LANES; ++i) v[i] = static_cast<uint32_t>(i);
    return v;
}

// LANES consecutive stored values <-> one float vector (round to nearest even on store).
template <class S>
struct VecIO;

template <>
struct VecIO<nca::F32> {
    static inline vf load(const float* p) { return loadu(p); }
    static inline void store(float* p, vf v) { storeu(p, v); }
};

template <>
struct VecIO<nca::BF16> {
    static inline vf load(const uint16_t* p) {
        vh h;
        memcpy(&h, p, sizeof(vh));
        vu u = __builtin_convertvector(h, vu) << 16;
        vf v;
        memcpy(&v, &u, sizeof(vf));
        return v;
    }
    static inline void store(uint16_t* p, vf v) {
        vu u;
        memcpy(&u, &v, sizeof(vu));
        vu rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        vu quiet = (u >> 16) | 0x40u;
        vu r = (u & 0x7FFFFFFFu) > 0x7F800000u ? quiet : rounded;
        vh h = __builtin_convertvector(r, vh);
        memcpy(p, &h, sizeof(vh));
    }
};

template <>
struct VecIO<nca::F16> {
    static inline vf load(const uint16_t* p) {
#if defined(__AVX512F__)
        return (vf)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(__F16C__) && defined(__AVX__) && !defined(__AVX512F__)
        return (vf)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
        vf v;
        for (int i = 0; i < LANES; ++i) v[i] = nca::half_bits_to_float(p[i]);
        return v;
#endif
    }
    static inline void store(uint16_t* p, vf v) {
#if defined(__AVX512F__)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT));
#elif defined(__F16C__) && defined(__AVX__) && !defined(__AVX512F__)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT));
#else
        for (int i = 0; i < LANES; ++i) p[i] = nca::float_to_half_bits(v[i]);
#endif
    }
};

// One stage of a LANES x LANES transpose: swap the off-diagonal D x D blocks.
template <int D>
inline void transpose_stage(vf* m) {
    vi lo, hi;
    for (int l = 0; l < LANES; ++l) {
        lo[l] = (l & D) ? LANES + l - D : l;
        hi[l] = (l & D) ? LANES + l : l + D;
    }
    for (int i = 0; i < LANES; ++i) {
        if (i & D) continue;
        vf a = m[i], b = m[i + D];
        m[i] = __builtin_shuffle(a, b, lo);
        m[i + D] = __builtin_shuffle(a, b, hi);
    }
}

// In place: m[r][c] -> m[c][r] for a square block of LANES vectors.
inline void transpose(vf* m) {
    transpose_stage<1>(m);
    transpose_stage<2>(m);
    if constexpr (LANES > 4) transpose_stage<4>(m);
    if constexpr (LANES > 8) transpose_stage<8>(m);
}

// Bit i set when cell i of the block fires (x: absolute x coordinate of lane 0).
inline lanemask fire_bits(uint32_t hrow, uint32_t x, uint32_t threshold) {
    vu h = nca::mix<vu>(hrow ^ (iota() + x)) >> 8;
#if defined(__AVX512F__)
    return _mm512_cmplt_epu32_mask((__m512i)h, _mm512_set1_epi32(static_cast<int>(threshold)));
#else
    lanemask m = 0;
    for (int i = 0; i < LANES; ++i) m |= static_cast<lanemask>(h[i] < threshold) << i;
    return m;
#endif
}

// Two neighbouring blocks of cells perceived together: they share the weight loads and the
// vector between them.
struct vf2 {
    vf a, b;
};
inline vf2 operator+(vf2 x, vf2 y) { return {x.a + y.a, x.b + y.b}; }

}  // namespace nca_cpu

namespace nca {
template <>
struct Lane<nca_cpu::vf> {
    using V = nca_cpu::vf;
    static inline V set1(float v) { return V{} + v; }
    static inline V relu(V x) {
        V z = {};
        return x < z ? z : x;  // NaN stays NaN, as torch.relu
    }
    static inline V madd(float w, V x, V acc) { return acc + w * x; }
    // Keep x in a register: otherwise the compiler may re-read it from memory for every
    // multiply-add, which doubles the loads and makes fc1 load-bound.
    static inline V hold(V x) {
#if defined(__AVX__)
        __asm__("" : "+v"(x));
#endif
        return x;
    }
};
template <>
struct Lane<nca_cpu::vf2> {
    using V = nca_cpu::vf2;
    static inline V set1(float v) { return {Lane<nca_cpu::vf>::set1(v), Lane<nca_cpu::vf>::set1(v)}; }
    static inline V madd(float w, V x, V acc) { return {acc.a + w * x.a, acc.b + w * x.b}; }
    static inline V hold(V x) { return {Lane<nca_cpu::vf>::hold(x.a), Lane<nca_cpu::vf>::hold(x.b)}; }
};
}  // namespace nca

namespace nca_cpu {

struct Problem {
    int64_t batch;
    int64_t size[3];    // z, y, x extents; 2D: size[0] = 1
    int64_t origin[3];  // absolute coordinate of the first cell along z, y, x (2D: z unused)
    uint64_t seed;
    uint32_t level;
    int64_t steps;
    uint32_t threshold;  // nca_cli.firemask.threshold(fire_rate)
    int threads;
    bool keep;          // BatchNorm: keep the statistics sweep's perception for the update sweep
    float* kept_buffer;  // ... in this buffer (64-byte aligned, keep_floats per item), or allocate one
};

// Floats of the kept perception of one batch item (keep_floats): per row of cells, the conv
// outputs of every block of LANES cells, NCONV * C vectors each.
inline int64_t keep_floats(int64_t nouter, int64_t rows, int64_t width, int nconv_channels) {
    return nouter * rows * ((width + LANES - 1) / LANES) * nconv_channels * LANES;
}

template <class Cfg, class S>
class Band {
    using raw = typename S::raw;
    static constexpr int C = Cfg::C, K = Cfg::K, KZ = Cfg::KZ, P = Cfg::P, R = 2 * P + 1;
    static constexpr int FEAT = Cfg::FEAT, IN = Cfg::IN, OUT = Cfg::OUT, HIDDEN = Cfg::HIDDEN;
    static constexpr bool D3 = Cfg::DIMS == 3;
    static_assert(P <= LANES, "kernel too large for the lane shifts");
    // 3D depthwise perception runs NR rows of a plane at once (nca::perceive_depthwise_rows),
    // reading NR + K - 1 neighbour rows per tap plane; the rows left over go in groups of 4, 2, 1.
    static constexpr int NR = D3 && Cfg::PERCEPTION == nca::DEPTHWISE ? 8 : 1;
    // Whole cells move as LANES x LANES transposed blocks when C is a multiple of LANES.
    static constexpr bool BLOCKED = C % LANES == 0;
    static constexpr int BLK = C * LANES;  // floats per block of LANES cells
    // BatchNorm moments: features padded to a multiple of 4, blocks buffered per flush,
    // register tile of the product matrix.
    static constexpr int FEATP = (FEAT + 3) / 4 * 4;
    static constexpr int NB = 256 / LANES;
    static constexpr int SPILL = 16;  // flushes summed in float before the products go to double
    static constexpr int TA = 4, TB = LANES >= 16 ? 4 : 2;

  public:
    Band(const float* weights, const Problem& pb, int64_t a0, int64_t a1, float* kept = nullptr)
        : w_(weights), pb_(pb), a0_(a0), a1_(a1), kept_base_(kept) {
        nouter_ = D3 ? pb.size[0] : pb.size[1];
        rows_ = D3 ? pb.size[1] : 1;
        W_ = pb.size[2];
        nblk_ = (W_ + LANES - 1) / LANES;
        row_floats_ = (nblk_ + 2) * BLK;
        strip_ = D3 ? strip_rows(rows_, static_cast<int64_t>(sizeof(float)) * row_floats_, P) : 1;
        plane_floats_ = std::min<int64_t>(rows_, strip_ + 2 * P) * row_floats_;   // one ring slot
        raw_plane_ = rows_ * W_ * C;
        raw_row_ = W_ * C;
        const int64_t saved_rows = strip_ < rows_ ? P * std::max<int64_t>(0, a1_ - a0_) : 0;
        // What this constructor and run() allocate is stated by workspace_bytes (nca_cpu.cpp).
        size_t ring_bytes = sizeof(float) * plane_floats_ * R;
        size_t halo_bytes = (sizeof(raw) * raw_plane_ * 2 * P + 63) / 64 * 64;
        size_t saved_bytes = sizeof(raw) * raw_row_ * saved_rows;
        buf_ = static_cast<float*>(aligned_alloc(64, ring_bytes + halo_bytes + saved_bytes + 64));
        if (buf_ == nullptr) return;
        for (int i = 0; i < R; ++i) ring_[i] = buf_ + i * plane_floats_;
        raw* halo = reinterpret_cast<raw*>(buf_ + R * plane_floats_);
        for (int i = 0; i < 2 * P; ++i) halo_[i] = halo + i * raw_plane_;
        saved_ = reinterpret_cast<raw*>(reinterpret_cast<char*>(halo) + halo_bytes);
        memset(queue_, 0, sizeof(queue_));
        full_ = pb.threshold >= (1u << 24);
        if constexpr (Cfg::BN) {
            // features buffer, float products, W0^T in double, scratch
            const size_t floats = (static_cast<size_t>(NB) * FEATP + static_cast<size_t>(FEATP) * FEATP) * LANES;
            const size_t doubles = static_cast<size_t>(FEAT) * HIDDEN + HIDDEN;
            mom_ = static_cast<float*>(aligned_alloc(64, (sizeof(float) * floats + sizeof(double) * doubles + 63) / 64 * 64));
            if (mom_ == nullptr) {
                free(buf_);
                buf_ = nullptr;
                return;
            }
            memset(mom_, 0, sizeof(float) * floats);
            fbuf_ = reinterpret_cast<vf*>(mom_);
            mgf_ = fbuf_ + NB * FEATP;
            wt_ = reinterpret_cast<double*>(mom_ + floats);
            scratch_ = wt_ + static_cast<size_t>(FEAT) * HIDDEN;
            const float* w0 = weights + Cfg::OFF_W0;
            for (int j = 0; j < HIDDEN; ++j)
                for (int a = 0; a < FEAT; ++a) wt_[a * HIDDEN + j] = w0[j * FEAT + a];
        }
    }
    ~Band() {
        free(buf_);
        free(mom_);
    }
    Band(const Band&) = delete;
    Band& operator=(const Band&) = delete;

    bool ok() const { return buf_ != nullptr; }

    // Select the batch item and step; copy the planes outside the band this band reads.
    void begin(raw* item, uint32_t key, int64_t index = 0) {
        item_ = item;
        key_ = key;
        reading_ = false;
        select_kept(index);
        for (int i = 0; i < R; ++i) tag_[i] = -1;
        if (kept_ != nullptr) return;   // the update sweep reads no neighbours
        for (int i = 0; i < P; ++i) {
            int64_t lo = a0_ - P + i, hi = a1_ + i;
            if (lo >= 0) memcpy(halo_[i], item_ + lo * raw_plane_, sizeof(raw) * raw_plane_);
            if (hi < nouter_) memcpy(halo_[P + i], item_ + hi * raw_plane_, sizeof(raw) * raw_plane_);
        }
    }

    // Update every plane of the band in place. norm: BatchNorm's alpha, beta of this step.
    void run(const float* norm = nullptr) {
        norm_ = norm;
        if (kept_ != nullptr) sweep_kept();
        else for_strips([this] { sweep_strip<false>(a0_, a1_); });
        if (qn_ > 0) flush(qn_);
        qn_ = 0;
    }

    // Doubles of one statistics group's record: sums, products, reference, flush count and
    // whether the reference is set.
    static constexpr int64_t GROUP_DOUBLES = 2 * FEATP + static_cast<int64_t>(FEATP) * FEATP + 2;

    // Statistics of groups [g0, g1) of one batch item, group g = planes [g gplanes, (g + 1)
    // gplanes) (reads only; no thread may write meanwhile): for each group, out[j] = sum of z_j
    // over its cells, out[HIDDEN + j] = sum of z_j^2 (out advances 2 HIDDEN per group); rec:
    // GROUP_DOUBLES per group. Strips are the outer loop, so the ring slides through all the
    // groups' planes once per strip; each group's moments carry over from strip to strip in
    // its record.
    void statistics(raw* item, int64_t index, int64_t g0, int64_t g1, int64_t gplanes, double* rec, double* out) {
        if (item != item_ || !reading_)
            for (int i = 0; i < R; ++i) tag_[i] = -1;
        item_ = item;
        reading_ = true;
        select_kept(index);
        fn_ = 0;
        for (int i = 0; i < FEATP * FEATP; ++i) mgf_[i] = vf{};
        for (int64_t i = 0; i < (g1 - g0) * GROUP_DOUBLES; ++i) rec[i] = 0.0;
        for_strips([&] {
            for (int64_t g = g0; g < g1; ++g) {
                double* r = rec + (g - g0) * GROUP_DOUBLES;
                ms_ = r;
                mg_ = r + FEATP;
                double* extra = mg_ + FEATP * FEATP;   // reference, flushes, have_ref
                for (int a = 0; a < FEATP; ++a) ref_[a] = static_cast<float>(extra[a]);
                flushes_ = static_cast<int>(extra[FEATP]);
                have_ref_ = extra[FEATP + 1] != 0.0;
                sweep_strip<true>(g * gplanes, std::min(nouter_, (g + 1) * gplanes));
                moments_flush(true);
                for (int a = 0; a < FEATP; ++a) extra[a] = ref_[a];
                extra[FEATP] = flushes_;
                extra[FEATP + 1] = have_ref_ ? 1.0 : 0.0;
            }
        });
#if defined(__AVX512F__)
        if (kept_ != nullptr) _mm_sfence();   // the streaming stores of keep_block, before the barrier
#endif
        for (int64_t g = g0; g < g1; ++g) {
            const double* r = rec + (g - g0) * GROUP_DOUBLES;
            const double* extra = r + FEATP + FEATP * FEATP;
            for (int a = 0; a < FEATP; ++a) ref_[a] = static_cast<float>(extra[a]);
            const int64_t planes = std::min(nouter_, (g + 1) * gplanes) - g * gplanes;
            const double n = static_cast<double>(planes) * rows_ * W_;
            nca::moment_sums<Cfg>(wt_, w_ + Cfg::OFF_B0, ref_, r, r + FEATP, FEATP, n, out + (g - g0) * 2 * HIDDEN,
                                  scratch_);
        }
    }

    // Back to updating: the ring must be refilled from the band's own planes and halos.
    void end_statistics() {
        reading_ = false;
        for (int i = 0; i < R; ++i) tag_[i] = -1;
    }

  private:
    static constexpr int NK = FEAT - C;   // conv outputs per cell (kept perception)

    void select_kept(int64_t index) {
        kept_ = kept_base_ == nullptr ? nullptr : kept_base_ + index * keep_floats(nouter_, rows_, W_, NK);
    }

    // Kept perception of row y of plane a (nullptr when not kept).
    float* kept_row(int64_t a, int64_t y) const {
        return kept_ == nullptr ? nullptr : kept_ + (a * rows_ + y) * nblk_ * NK * LANES;
    }

    // The update sweep from the kept perception: cell by cell, no neighbours (each row is
    // converted into ring slot 0 before any of its cells is written).
    void sweep_kept() {
        float* buf = ring_[0];
        vf feat[FEAT];
        for (int64_t a = a0_; a < a1_; ++a) {
            for (int64_t y = 0; y < rows_; ++y) {
                raw* dst = item_ + (a * rows_ + y) * W_ * C;
                convert_row(dst, buf);
                const float* kp = kept_row(a, y);
                const uint32_t zc = D3 ? static_cast<uint32_t>(pb_.origin[0] + a) : 0;
                const uint32_t yc = static_cast<uint32_t>(pb_.origin[1] + (D3 ? y : a));
                const uint32_t hrow = nca::row_hash(key_, zc, yc);
                for (int64_t b = 0; b < nblk_; ++b) {
                    const float* blk = buf + (b + 1) * BLK;
                    for (int c = 0; c < C; ++c) feat[c] = *reinterpret_cast<const vf*>(blk + c * LANES);
                    for (int k = 0; k < NK; ++k) feat[C + k] = *reinterpret_cast<const vf*>(kp + (b * NK + k) * LANES);
                    block(b, feat, hrow, dst);
                }
            }
        }
    }

    // The statistics sweep keeps the perception of block b of a row (kp: kept_row).
    // Streaming stores: the update sweep reads them back only after the whole statistics sweep.
    inline void keep_block(float* kp, int64_t b, const vf* feat) {
        if (kp == nullptr) return;
        for (int k = 0; k < NK; ++k) {
            float* dst = kp + (b * NK + k) * LANES;
#if defined(__AVX512F__)
            _mm512_stream_ps(dst, (__m512)feat[C + k]);
#else
            *reinterpret_cast<vf*>(dst) = feat[C + k];
#endif
        }
    }

    // each() once per strip of rows [y0_, y1_), the ring emptied between strips.
    template <class F>
    void for_strips(F&& each) {
        for (y0_ = 0; y0_ < rows_; y0_ += strip_) {
            y1_ = std::min(rows_, y0_ + strip_);
            lo_ = std::max<int64_t>(0, y0_ - P);   // first row a ring slot holds
            if (strip_ < rows_)
                for (int i = 0; i < R; ++i) tag_[i] = -1;
            each();
        }
        y0_ = 0;
    }

    // Rows [y0_, y1_) of planes [p0, p1).
    template <bool STATS>
    void sweep_strip(int64_t p0, int64_t p1) {
        for (int64_t a = p0; a < p1; ++a) {
            const float* pl[K];
            for (int d = 0; d < K; ++d) pl[d] = plane(nca::reflect(a + d - P, nouter_));
            if constexpr (NR > 1) {
                // groups of NR rows, then of 4, 2 and 1: each cell's sum in the same order
                int64_t y = y0_;
                for (; y + NR <= y1_; y += NR) row_group<STATS, NR>(pl, a, y);
                if (y + 4 <= y1_) row_group<STATS, 4>(pl, a, y), y += 4;
                if (y + 2 <= y1_) row_group<STATS, 2>(pl, a, y), y += 2;
                if (y < y1_) row_group<STATS, 1>(pl, a, y);
            } else {
                for (int64_t y = y0_; y < y1_; ++y) {
                    const float* rp[KZ * K];
                    uint32_t zc, yc;
                    if (D3) {
                        for (int dz = 0; dz < K; ++dz)
                            for (int dy = 0; dy < K; ++dy)
                                rp[dz * K + dy] = pl[dz] + (nca::reflect(y + dy - P, rows_) - lo_) * row_floats_;
                        zc = static_cast<uint32_t>(pb_.origin[0] + a);
                        yc = static_cast<uint32_t>(pb_.origin[1] + y);
                    } else {
                        for (int dy = 0; dy < K; ++dy) rp[dy] = pl[dy];
                        zc = 0;
                        yc = static_cast<uint32_t>(pb_.origin[1] + a);
                    }
                    if constexpr (STATS) row<true>(rp, 0, nullptr, kept_row(a, y));
                    else row<false>(rp, nca::row_hash(key_, zc, yc), item_ + (a * rows_ + y) * W_ * C, nullptr);
                }
            }
        }
    }

    // Rows [y, y + N) of plane a (pl: its K neighbour planes in the ring), N rows at once.
    template <bool STATS, int N>
    void row_group(const float* const* pl, int64_t a, int64_t y) {
        constexpr int NY = N + K - 1;
        const float* rp[KZ * NY];
        for (int dz = 0; dz < K; ++dz)
            for (int yy = 0; yy < NY; ++yy)
                rp[dz * NY + yy] = pl[dz] + (nca::reflect(y + yy - P, rows_) - lo_) * row_floats_;
        if constexpr (STATS) {
            rows<true, N>(rp, nullptr, nullptr, kept_row(a, y));
        } else {
            uint32_t hrows[N];
            raw* dsts[N];
            const uint32_t zc = static_cast<uint32_t>(pb_.origin[0] + a);
            for (int r = 0; r < N; ++r) {
                hrows[r] = nca::row_hash(key_, zc, static_cast<uint32_t>(pb_.origin[1] + y + r));
                dsts[r] = item_ + (a * rows_ + y + r) * W_ * C;
            }
            rows<false, N>(rp, hrows, dsts, nullptr);
        }
    }

    // Channel c of the neighbours at (dz-P, dy-P, dx-P) of the LANES cells of one block
    // (rp: NY neighbour rows per dz).
    template <int NY>
    struct SrcRows {
        const float* const* rp;
        int64_t off;  // offset of the block within a row
        inline vf operator()(int c, int dz, int dy, int dx) const {
            const float* p = rp[dz * NY + dy] + off + c * LANES;
#if defined(__AVX__)
            if constexpr (NY > K) __asm__("" : "+r"(p));  // reload rather than keep rows live
#endif
            vf cur = *reinterpret_cast<const vf*>(p);
            if (dx == P) return cur;
            if (dx < P) return shift(*reinterpret_cast<const vf*>(p - BLK), cur, LANES - (P - dx));
            return shift(cur, *reinterpret_cast<const vf*>(p + BLK), dx - P);
        }
    };

    using Src = SrcRows<K>;

    // The same for two neighbouring blocks (off: offset of the first).
    struct Src2 {
        const float* const* rp;
        int64_t off;
        inline vf2 operator()(int c, int dz, int dy, int dx) const {
            const float* p = rp[dz * K + dy] + off + c * LANES;
            vf cur0 = *reinterpret_cast<const vf*>(p), cur1 = *reinterpret_cast<const vf*>(p + BLK);
            if (dx == P) return {cur0, cur1};
            if (dx < P) {
                const int sh = LANES - (P - dx);
                return {shift(*reinterpret_cast<const vf*>(p - BLK), cur0, sh), shift(cur0, cur1, sh)};
            }
            return {shift(cur0, cur1, dx - P), shift(cur1, *reinterpret_cast<const vf*>(p + 2 * BLK), dx - P)};
        }
    };

    // Lanes sh .. sh + LANES - 1 of the concatenation [a, b], 0 < sh < LANES; sh is a
    // constant once the perception loops are unrolled, and the dispatch folds away.
    template <int SH = 1>
    static inline vf shift(vf a, vf b, int sh) {
        if constexpr (SH < LANES - 1) {
            if (sh != SH) return shift<SH + 1>(a, b, sh);
        }
#if defined(__AVX512F__)
        return (vf)_mm512_alignr_epi32((__m512i)b, (__m512i)a, SH);
#else
        vi idx;
        for (int l = 0; l < LANES; ++l) idx[l] = l + SH;
        return __builtin_shuffle(a, b, idx);
#endif
    }

    // Perceive the blocks of one row; STATS: add their statistics, else update them.
    // kp: the row's kept perception (statistics sweep; nullptr: not kept).
    template <bool STATS>
    __attribute__((noinline)) void row(const float* const* rp, uint32_t hrow, raw* dst, float* kp) {
        int64_t b = 0;
        for (; b + 1 < nblk_; b += 2) {
            vf2 both[FEAT];
            perceive(Src2{rp, (b + 1) * BLK}, both);
            vf feat[FEAT];
            for (int half = 0; half < 2; ++half) {
                for (int k = 0; k < FEAT; ++k) feat[k] = half == 0 ? both[k].a : both[k].b;
                if constexpr (STATS) {
                    moments_block(b + half, feat);
                    keep_block(kp, b + half, feat);
                } else {
                    block(b + half, feat, hrow, dst);
                }
            }
        }
        if (b < nblk_) {
            vf feat[FEAT];
            perceive(Src{rp, (b + 1) * BLK}, feat);
            if constexpr (STATS) {
                moments_block(b, feat);
                keep_block(kp, b, feat);
            } else {
                block(b, feat, hrow, dst);
            }
        }
    }

    // N rows of a 3D plane at once (rp: N + K - 1 neighbour rows per dz, from the first output
    // row minus P); STATS: add their statistics, else update them (hrows, dsts: per output row).
    // kp: the first row's kept perception (statistics sweep; nullptr: not kept).
    template <bool STATS, int N>
    __attribute__((noinline)) void rows(const float* const* rp, const uint32_t* hrows, raw* const* dsts, float* kp) {
        const int64_t kept_rows = nblk_ * NK * LANES;
        for (int64_t b = 0; b < nblk_; ++b) {
            vf feat[N * FEAT];
            perceive_rows<N>(SrcRows<N + K - 1>{rp, (b + 1) * BLK}, feat);
            for (int r = 0; r < N; ++r) {
                if constexpr (STATS) {
                    moments_block(b, feat + r * FEAT);
                    keep_block(kp == nullptr ? nullptr : kp + r * kept_rows, b, feat + r * FEAT);
                } else {
                    block(b, feat + r * FEAT, hrows[r], dsts[r]);
                }
            }
        }
    }

    // With BatchNorm both sweeps call the same out-of-line copy.
    template <int N>
    __attribute__((noinline)) void perceive_rows(const SrcRows<N + K - 1>& src, vf* feat) const {
        NCA_NO_UNROLL
        for (int c = 0; c < C; ++c) nca::perceive_depthwise_rows<Cfg, vf, N>(w_, src, feat, c);
    }

    // Perception of a block (V = vf) or of two neighbouring blocks (V = vf2). With BatchNorm
    // both sweeps perceive: one out-of-line copy serves both (halves the compile time).
    template <class V, class Source>
    void perceive(const Source& src, V* feat) const {
        if constexpr (Cfg::BN) perceive_out_of_line(src, feat);
        else nca::perceive<Cfg, V>(w_, src, feat);
    }
    template <class V, class Source>
    __attribute__((noinline)) void perceive_out_of_line(const Source& src, V* feat) const {
        nca::perceive<Cfg, V>(w_, src, feat);
    }

    // Buffers the features of the valid cells of block b, minus the reference (lanes past
    // the row end hold border copies and are zeroed); a full buffer is added to the moments.
    __attribute__((noinline)) void moments_block(int64_t b, const vf* feat) {
        const int n = static_cast<int>(std::min<int64_t>(LANES, W_ - b * LANES));
        if (!have_ref_) {
            for (int a = 0; a < FEAT; ++a) ref_[a] = feat[a][0];
            have_ref_ = true;
        }
        const vi valid = (vi)iota() < n;
        vf* dst = fbuf_ + fn_ * FEATP;
        for (int a = 0; a < FEAT; ++a) {
            vf v = feat[a] - ref_[a];
            dst[a] = n < LANES ? (vf)((vi)v & valid) : v;
        }
        if (++fn_ == NB) moments_flush();
    }

    // Lane sum of a float vector in double, in a fixed order.
    static inline double hsum(vf v) {
        vd d = __builtin_convertvector(low_half(v), vd) + __builtin_convertvector(high_half(v), vd);
        double r = 0.0;
        for (int l = 0; l < DLANES; ++l) r += d[l];
        return r;
    }

    // One TA x TB tile (rows a0.., columns b0..) of the buffered blocks' feature products,
    // added to the float products; `spill` moves those to double.
    __attribute__((noinline)) void moments_tile(int a0, int b0, bool spill) {
        vf acc[TA][TB];
        for (int p = 0; p < TA; ++p)
            for (int q = 0; q < TB; ++q) acc[p][q] = vf{};
        for (int i = 0; i < fn_; ++i) {
            const vf* f = fbuf_ + i * FEATP;
            vf x[TA], y[TB];
            for (int p = 0; p < TA; ++p) x[p] = f[a0 + p];
            for (int q = 0; q < TB; ++q) y[q] = f[b0 + q];
            for (int p = 0; p < TA; ++p)
                for (int q = 0; q < TB; ++q) acc[p][q] += x[p] * y[q];
        }
        for (int p = 0; p < TA; ++p)
            for (int q = 0; q < TB; ++q) {
                const int e = (a0 + p) * FEATP + b0 + q;
                mgf_[e] += acc[p][q];
                if (spill) {
                    mg_[e] += hsum(mgf_[e]);
                    mgf_[e] = vf{};
                }
            }
    }

    // Adds the buffered blocks to the sums and (a <= b) products, then empties the buffer;
    // every SPILL-th flush (and the last of a group) moves the float products to double.
    void moments_flush(bool last = false) {
        const bool spill = last || ++flushes_ % SPILL == 0;
        for (int a = 0; a < FEAT; ++a) {
            vf acc = {};
            for (int i = 0; i < fn_; ++i) acc += fbuf_[i * FEATP + a];
            ms_[a] += hsum(acc);
        }
        for (int a0 = 0; a0 < FEATP; a0 += TA)
            for (int b0 = a0 / TB * TB; b0 < FEATP; b0 += TB) moments_tile(a0, b0, spill);
        fn_ = 0;
    }

    static inline vfh low_half(vf v) {
        vfh h;
        memcpy(&h, &v, sizeof(vfh));
        return h;
    }
    static inline vfh high_half(vf v) {
        vfh h;
        memcpy(&h, reinterpret_cast<const char*>(&v) + sizeof(vfh), sizeof(vfh));
        return h;
    }

    // The rest of the step for the perceived block b of a row.
    __attribute__((noinline)) void block(int64_t b, const vf* feat, uint32_t hrow, raw* dst) {
        const int64_t x0 = b * LANES;
        const int n = static_cast<int>(std::min<int64_t>(LANES, W_ - x0));
        raw* cells = dst + x0 * C;
        if (full_) {
            vf delta[OUT];
            mlp(feat, delta);
            write(feat, delta, n, [cells](int i) { return cells + i * C; });
            return;
        }
        lanemask m = fire_bits(hrow, static_cast<uint32_t>(pb_.origin[2]) + static_cast<uint32_t>(x0), pb_.threshold);
        if (n < LANES) m &= static_cast<lanemask>((1u << n) - 1u);
        if (m) enqueue(feat, m, cells);
    }

    // One out-of-line copy of the (large, fully unrolled) matrix code.
    __attribute__((noinline)) void mlp(const vf* feat, vf* delta) const {
        nca::update<Cfg, vf>(w_, feat, delta, norm_);
    }

    // Append the firing lanes of a perceived block to the queue; run full queues. The queue
    // holds whole vectors (lane j = slot j), so it is only read and written with aligned
    // full-vector accesses.
    void enqueue(const vf* feat, lanemask m, raw* cells) {
        const int count = __builtin_popcount(m);
        const int first = std::min(count, LANES - qn_);  // slots left in this queue
        vf* q = queue_[cur_];
        vf* next = queue_[1 - cur_];
#if defined(__AVX512F__)
        const __mmask16 into = static_cast<__mmask16>(((1u << first) - 1u) << qn_);
        const __mmask16 rest = static_cast<__mmask16>(((1u << count) - 1u) & ~((1u << first) - 1u));
        for (int k = 0; k < FEAT; ++k) {
            __m512 packed = _mm512_maskz_compress_ps(m, (__m512)feat[k]);
            q[k] = (vf)_mm512_mask_expand_ps((__m512)q[k], into, packed);
            if (rest) next[k] = (vf)_mm512_maskz_compress_ps(rest, packed);
        }
#else
        for (int k = 0; k < FEAT; ++k) {
            int j = qn_;
            for (lanemask b = m; b; b &= b - 1, ++j) {
                if (j < LANES) q[k][j] = feat[k][__builtin_ctz(b)];
                else next[k][j - LANES] = feat[k][__builtin_ctz(b)];
            }
        }
#endif
        int j = qn_;
        for (lanemask b = m; b; b &= b - 1) qdst_[j++] = cells + __builtin_ctz(b) * C;
        qn_ += count;
        if (qn_ >= LANES) {
            flush(LANES);
            cur_ = 1 - cur_;
            qn_ -= LANES;
            for (int i = 0; i < qn_; ++i) qdst_[i] = qdst_[LANES + i];
        }
    }

    // fc0 / ReLU / fc1 on the first n queued cells, and write their new state.
    void flush(int n) {
        const vf* q = queue_[cur_];
        vf delta[OUT];
        mlp(q, delta);
        write(q, delta, n, [this](int i) { return qdst_[i]; });
    }

    // New state of n cells (lanes 0..n-1): channels IN.. get state + delta; cell(i) -> its C values.
    template <class CellPtr>
    void write(const vf* feat, const vf* delta, int n, CellPtr cell) {
        if constexpr (BLOCKED) {
            for (int c0 = 0; c0 < C; c0 += LANES) {
                vf m[LANES];
                for (int c = 0; c < LANES; ++c)
                    m[c] = c0 + c < IN ? feat[c0 + c] : feat[c0 + c] + delta[c0 + c - IN];
                transpose(m);
                for (int i = 0; i < n; ++i) VecIO<S>::store(cell(i) + c0, m[i]);
            }
        } else {
            for (int i = 0; i < n; ++i) {
                raw* d = cell(i);
                for (int o = 0; o < OUT; ++o) d[IN + o] = S::store(feat[IN + o][i] + delta[o][i]);
            }
        }
    }

    // Blocked float copy of one row (see the top of this file): block b at (b + 1) * BLK,
    // cells past the row end hold the reflected border for P cells, then zeros.
    void convert_row(const raw* src, float* dst) const {
        float* blocks = dst + BLK;
        if constexpr (BLOCKED) {
            for (int64_t b = 0; b < nblk_; ++b) {
                const int64_t x0 = b * LANES;
                const int n = static_cast<int>(std::min<int64_t>(LANES, W_ - x0));
                for (int c0 = 0; c0 < C; c0 += LANES) {
                    vf m[LANES];
                    for (int i = 0; i < LANES; ++i) m[i] = i < n ? VecIO<S>::load(src + (x0 + i) * C + c0) : vf{};
                    transpose(m);
                    for (int c = 0; c < LANES; ++c) storeu(blocks + b * BLK + (c0 + c) * LANES, m[c]);
                }
            }
        } else {
            memset(blocks + (nblk_ - 1) * BLK, 0, sizeof(float) * BLK);
            for (int64_t x = 0; x < W_; ++x)
                for (int c = 0; c < C; ++c) blocks[x / LANES * BLK + c * LANES + x % LANES] = S::load(src[x * C + c]);
        }
        memset(dst, 0, sizeof(float) * BLK);
        memset(blocks + nblk_ * BLK, 0, sizeof(float) * BLK);
        // Border cells: x in [-P, 0) and [W, W + P) read the reflected cell.
        auto at = [&](int64_t x, int c) -> float& { return blocks[(x + LANES) / LANES * BLK - BLK + c * LANES + (x + LANES) % LANES]; };
        for (int c = 0; c < C; ++c) {
            for (int64_t x = -P; x < 0; ++x) at(x, c) = at(nca::reflect(x, W_), c);
            for (int64_t x = W_; x < W_ + P; ++x) at(x, c) = at(nca::reflect(x, W_), c);
        }
    }

    // Original (pre-step) blocked copy of the strip's rows [lo_, min(rows_, y1_ + P)) of plane
    // s, |s - a| <= P for the plane a being updated. While reading_ (statistics sweep) nothing
    // is written, so every plane is read in place. A plane of the band has its rows above the
    // strip updated already: they come from saved_, and its last P rows of this strip are
    // saved for the next strip before the plane itself is updated.
    const float* plane(int64_t s) {
        int slot = static_cast<int>(s % R);
        if (tag_[slot] != s) {
            const bool own = !reading_ && s >= a0_ && s < a1_;
            const raw* src = reading_ || own ? item_ + s * raw_plane_
                             : s < a0_ ? halo_[s - (a0_ - P)] : halo_[P + (s - a1_)];
            const int64_t hi = std::min<int64_t>(rows_, y1_ + P);
            raw* saved = own && strip_ < rows_ ? saved_ + (s - a0_) * P * raw_row_ : nullptr;
            for (int64_t y = lo_; y < hi; ++y) {
                const raw* r = saved != nullptr && y < y0_ ? saved + (y - (y0_ - P)) * raw_row_ : src + y * raw_row_;
                convert_row(r, ring_[slot] + (y - lo_) * row_floats_);
            }
            if (saved != nullptr && y1_ < rows_)
                memcpy(saved, src + (y1_ - P) * raw_row_, sizeof(raw) * P * raw_row_);
            tag_[slot] = s;
        }
        return ring_[slot];
    }

    const float* w_;
    Problem pb_;
    int64_t a0_, a1_;
    float* kept_base_ = nullptr;  // kept perception of the whole batch (nullptr: recomputed)
    float* kept_ = nullptr;       // ... of the selected batch item
    int64_t nouter_, rows_, W_, nblk_, row_floats_, plane_floats_, raw_plane_, raw_row_;
    int64_t strip_ = 1, y0_ = 0, y1_ = 1, lo_ = 0;  // strip height; the strip being swept: rows [y0_, y1_)
    raw* saved_ = nullptr;                          // P original rows per plane of the band
    bool full_ = false;
    float* buf_ = nullptr;
    float* ring_[R];
    raw* halo_[2 * P > 0 ? 2 * P : 1];
    int64_t tag_[R];
    raw* item_ = nullptr;
    uint32_t key_ = 0;
    vf queue_[2][FEAT];  // queued cells (feature k of slot j: queue_[cur_][k][j]) and the overflow
    int cur_ = 0;
    raw* qdst_[2 * LANES];
    int qn_ = 0;
    // BatchNorm: this step's alpha, beta; the statistics sweep's feature buffer (fn_ blocks),
    // reference, moments, W0^T in double and scratch (all in mom_).
    const float* norm_ = nullptr;
    bool reading_ = false;
    float* mom_ = nullptr;
    vf* fbuf_ = nullptr;
    vf* mgf_ = nullptr;
    int fn_ = 0, flushes_ = 0;
    bool have_ref_ = false;
    float ref_[FEATP] = {};
    double* ms_ = nullptr;
    double* mg_ = nullptr;
    double* wt_ = nullptr;
    double* scratch_ = nullptr;
};

// A large buffer: 2 MiB aligned and, on Linux, backed by transparent huge pages where the
// system allows them, so that touching it the first time costs few page faults. free() frees it.
inline void* alloc_large(size_t bytes) {
    constexpr size_t HUGE_PAGE = size_t(1) << 21;
    const size_t rounded = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    void* p = aligned_alloc(HUGE_PAGE, rounded);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p != nullptr) madvise(p, rounded, MADV_HUGEPAGE);
#endif
    return p;
}

// BatchNorm between the two sweeps of a step: thread t of T turns the group sums of
// hidden units t, t + T, ... (added in batch and group order) into alpha, beta.
template <class Cfg>
void normalisation(const float* weights, const double* sums, int64_t groups, double count, float* norm, int t,
                   int T) {
    constexpr int H = Cfg::HIDDEN;
    for (int j = t; j < H; j += T) {
        double s = 0.0, q = 0.0;
        for (int64_t a = 0; a < groups; ++a) {
            s += sums[a * 2 * H + j];
            q += sums[a * 2 * H + H + j];
        }
        nca::batch_norm_affine<Cfg>(s, q, count, weights[Cfg::OFF_BN + j], weights[Cfg::OFF_BN + H + j], &norm[j],
                                    &norm[H + j]);
    }
}

// Run pb.steps steps in place on `state` ([B, *spatial, C], storage S).
template <class Cfg, class S>
void run(void* state, const float* weights, const Problem& pb) {
    using raw = typename S::raw;
    std::vector<float> w(weights, weights + Cfg::NWEIGHTS);
    const int64_t nouter = Cfg::DIMS == 3 ? pb.size[0] : pb.size[1];
    const int64_t item = pb.size[0] * pb.size[1] * pb.size[2] * Cfg::C;
    const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(pb.threads, nouter)));
    // BatchNorm: per-group sums of z and z^2 for the batch, and the step's alpha, beta.
    const int64_t plane_cells = Cfg::DIMS == 3 ? pb.size[1] * pb.size[2] : pb.size[2];
    const int64_t gplanes = stats_group_planes(nouter, plane_cells);
    const int64_t groups = (nouter + gplanes - 1) / gplanes, all_groups = pb.batch * groups;
    std::vector<double> sums(Cfg::BN ? all_groups * 2 * Cfg::HIDDEN : 0);
    std::vector<double> records(Cfg::BN ? all_groups * Band<Cfg, S>::GROUP_DOUBLES : 0);  // moments per group
    std::vector<float> norm(Cfg::BN ? 2 * Cfg::HIDDEN : 0);
    const double count = static_cast<double>(pb.batch) * pb.size[0] * pb.size[1] * pb.size[2];
    // BatchNorm with pb.keep: the statistics sweep's conv outputs, read back by the update sweep.
    float* kept = Cfg::BN && pb.keep ? pb.kept_buffer : nullptr;
    float* own_kept = nullptr;
    if (Cfg::BN && pb.keep && kept == nullptr) {
        const int64_t rows = Cfg::DIMS == 3 ? pb.size[1] : 1;
        const size_t bytes = sizeof(float) * pb.batch * keep_floats(nouter, rows, pb.size[2], Cfg::FEAT - Cfg::C);
        kept = own_kept = static_cast<float*>(alloc_large(bytes));
        if (kept == nullptr) throw std::bad_alloc();
    }
    bool failed = false;
#pragma omp parallel num_threads(nt)
    {
        const int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
        Band<Cfg, S> band(w.data(), pb, nouter * t / T, nouter * (t + 1) / T, kept);
        if (!band.ok()) {
#pragma omp atomic write
            failed = true;
        }
#pragma omp barrier
        bool stop;
#pragma omp atomic read
        stop = failed;
        if (!stop) {
            for (int64_t step = 0; step < pb.steps; ++step) {
                uint32_t key = nca::step_key(pb.seed, pb.level, static_cast<uint32_t>(step));
                if constexpr (Cfg::BN) {
                    const int64_t ga = all_groups * t / T, gb = all_groups * (t + 1) / T;
                    for (int64_t g = ga; g < gb;) {   // this thread's groups, item by item
                        const int64_t b = g / groups, end = std::min(gb, (b + 1) * groups);
                        band.statistics(static_cast<raw*>(state) + b * item, b, g - b * groups, end - b * groups,
                                        gplanes, &records[g * Band<Cfg, S>::GROUP_DOUBLES],
                                        &sums[g * 2 * Cfg::HIDDEN]);
                        g = end;
                    }
                    band.end_statistics();
#pragma omp barrier
                    normalisation<Cfg>(w.data(), sums.data(), all_groups, count, norm.data(),
                                       static_cast<int>(t), static_cast<int>(T));
#pragma omp barrier
                }
                for (int64_t b = 0; b < pb.batch; ++b) {
                    band.begin(static_cast<raw*>(state) + b * item, key, b);
#pragma omp barrier
                    band.run(norm.data());
#pragma omp barrier
                }
            }
        }
    }
    free(own_kept);
    if (failed) throw std::bad_alloc();
}

using RunFn = void (*)(void*, const float*, const Problem&);
// dims, channels, hidden, in, kernel, perception, normalisation, storage code
using Key = std::array<int, 8>;

std::map<Key, RunFn>& registry();

template <class Cfg, class S>
bool add() {
    const int norm = Cfg::BN ? nca::BATCH_NORM : nca::NO_NORM;
    registry()[Key{Cfg::DIMS, Cfg::C, Cfg::HIDDEN, Cfg::IN, Cfg::K, Cfg::PERCEPTION, norm, S::code}] = &run<Cfg, S>;
    return true;
}

// Float32 FMA throughput probe: `iters` rounds of independent FMA chains on `threads`
// threads; returns (FLOPs done, wall seconds).
std::pair<double, double> fma_peak(int threads, int64_t iters);

}  // namespace nca_cpu
