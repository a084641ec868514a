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
// Ring planes are blocked: per row, blocks of LANES cells, per block C aligned vectors (one
// per channel, one lane per cell), with one extra block at each end of the row holding the
// reflected border. A neighbour at offset dx is an aligned load of the block, or a lane
// shift of it and the block beside it; every perception load is aligned and a fixed offset
// from one pointer per neighbour row.
//
// Cells of a row are perceived LANES at a time; the cells that fire are packed into a
// queue of LANES cells and fc0 / ReLU / fc1 run on full queues, so cells that do not fire
// cost no matrix work.
//
// BatchNorm (Cfg::BN) normalises with the statistics of the whole batch of the current
// state, so a step takes two sweeps. The statistics sweep only reads: every thread
// perceives every cell of its band (all cells: the fire mask plays no part) straight from
// the state (the ring serves as conversion scratch, no halos are needed), computes fc0 and
// adds each hidden unit's z and z^2, in double-vector lanes, to per-plane sums. After a
// barrier the per-plane sums are added in plane order (so the result does not depend on the
// number of threads), turned into alpha, beta (nca::batch_norm_affine), and after a second
// barrier the update sweep runs as above. The only extra memory is 2 * HIDDEN doubles per
// plane of the batch.
#pragma once

#include <omp.h>
#include <stdint.h>
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
};

template <class Cfg, class S>
class Band {
    using raw = typename S::raw;
    static constexpr int C = Cfg::C, K = Cfg::K, KZ = Cfg::KZ, P = Cfg::P, R = 2 * P + 1;
    static constexpr int FEAT = Cfg::FEAT, IN = Cfg::IN, OUT = Cfg::OUT, HIDDEN = Cfg::HIDDEN;
    static constexpr bool D3 = Cfg::DIMS == 3;
    static_assert(P <= LANES, "kernel too large for the lane shifts");
    // Whole cells move as LANES x LANES transposed blocks when C is a multiple of LANES.
    static constexpr bool BLOCKED = C % LANES == 0;
    static constexpr int BLK = C * LANES;  // floats per block of LANES cells

  public:
    Band(const float* weights, const Problem& pb, int64_t a0, int64_t a1)
        : w_(weights), pb_(pb), a0_(a0), a1_(a1) {
        nouter_ = D3 ? pb.size[0] : pb.size[1];
        rows_ = D3 ? pb.size[1] : 1;
        W_ = pb.size[2];
        nblk_ = (W_ + LANES - 1) / LANES;
        row_floats_ = (nblk_ + 2) * BLK;
        plane_floats_ = rows_ * row_floats_;
        raw_plane_ = rows_ * W_ * C;
        size_t ring_bytes = sizeof(float) * plane_floats_ * R;
        size_t halo_bytes = (sizeof(raw) * raw_plane_ * 2 * P + 63) / 64 * 64;
        buf_ = static_cast<float*>(aligned_alloc(64, ring_bytes + halo_bytes));
        if (buf_ == nullptr) return;
        for (int i = 0; i < R; ++i) ring_[i] = buf_ + i * plane_floats_;
        raw* halo = reinterpret_cast<raw*>(buf_ + R * plane_floats_);
        for (int i = 0; i < 2 * P; ++i) halo_[i] = halo + i * raw_plane_;
        memset(queue_, 0, sizeof(queue_));
        full_ = pb.threshold >= (1u << 24);
    }
    ~Band() { free(buf_); }
    Band(const Band&) = delete;
    Band& operator=(const Band&) = delete;

    bool ok() const { return buf_ != nullptr; }

    // Select the batch item and step; copy the planes outside the band this band reads.
    void begin(raw* item, uint32_t key) {
        item_ = item;
        key_ = key;
        reading_ = false;
        for (int i = 0; i < R; ++i) tag_[i] = -1;
        for (int i = 0; i < P; ++i) {
            int64_t lo = a0_ - P + i, hi = a1_ + i;
            if (lo >= 0) memcpy(halo_[i], item_ + lo * raw_plane_, sizeof(raw) * raw_plane_);
            if (hi < nouter_) memcpy(halo_[P + i], item_ + hi * raw_plane_, sizeof(raw) * raw_plane_);
        }
    }

    // Update every plane of the band in place. norm: BatchNorm's alpha, beta of this step.
    void run(const float* norm = nullptr) {
        norm_ = norm;
        sweep<false>();
        if (qn_ > 0) flush(qn_);
        qn_ = 0;
    }

    // Statistics sweep of one batch item (reads only; no thread may write meanwhile): for
    // each plane a of the band, sums[a * 2 * HIDDEN + j] = sum of z_j over the plane's
    // cells, sums[(a * 2 + 1) * HIDDEN + j] = sum of z_j^2.
    void statistics(raw* item, double* sums) {
        item_ = item;
        sums_ = sums;
        reading_ = true;
        for (int i = 0; i < R; ++i) tag_[i] = -1;
        for (int j = 0; j < HIDDEN; ++j) acc_sum_[j] = acc_sq_[j] = vd{};
        sweep<true>();
    }

  private:
    template <bool STATS>
    void sweep() {
        for (int64_t a = a0_; a < a1_; ++a) {
            const float* pl[K];
            for (int d = 0; d < K; ++d) pl[d] = plane(nca::reflect(a + d - P, nouter_));
            for (int64_t y = 0; y < rows_; ++y) {
                const float* rp[KZ * K];
                uint32_t zc, yc;
                if (D3) {
                    for (int dz = 0; dz < K; ++dz)
                        for (int dy = 0; dy < K; ++dy)
                            rp[dz * K + dy] = pl[dz] + nca::reflect(y + dy - P, rows_) * row_floats_;
                    zc = static_cast<uint32_t>(pb_.origin[0] + a);
                    yc = static_cast<uint32_t>(pb_.origin[1] + y);
                } else {
                    for (int dy = 0; dy < K; ++dy) rp[dy] = pl[dy];
                    zc = 0;
                    yc = static_cast<uint32_t>(pb_.origin[1] + a);
                }
                if constexpr (STATS) row<true>(rp, 0, nullptr);
                else row<false>(rp, nca::row_hash(key_, zc, yc), item_ + (a * rows_ + y) * W_ * C);
            }
            if constexpr (STATS) plane_sums(sums_ + a * 2 * HIDDEN);
        }
    }

    // Channel c of the neighbours at (dz-P, dy-P, dx-P) of the LANES cells of one block.
    struct Src {
        const float* const* rp;
        int64_t off;  // offset of the block within a row
        inline vf operator()(int c, int dz, int dy, int dx) const {
            const float* p = rp[dz * K + dy] + off + c * LANES;
            vf cur = *reinterpret_cast<const vf*>(p);
            if (dx == P) return cur;
            if (dx < P) return shift(*reinterpret_cast<const vf*>(p - BLK), cur, LANES - (P - dx));
            return shift(cur, *reinterpret_cast<const vf*>(p + BLK), dx - P);
        }
    };

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
    template <bool STATS>
    __attribute__((noinline)) void row(const float* const* rp, uint32_t hrow, raw* dst) {
        int64_t b = 0;
        for (; b + 1 < nblk_; b += 2) {
            vf2 both[FEAT];
            perceive(Src2{rp, (b + 1) * BLK}, both);
            vf feat[FEAT];
            for (int k = 0; k < FEAT; ++k) feat[k] = both[k].a;
            if constexpr (STATS) statistics_block(b, feat);
            else block(b, feat, hrow, dst);
            for (int k = 0; k < FEAT; ++k) feat[k] = both[k].b;
            if constexpr (STATS) statistics_block(b + 1, feat);
            else block(b + 1, feat, hrow, dst);
        }
        if (b < nblk_) {
            vf feat[FEAT];
            perceive(Src{rp, (b + 1) * BLK}, feat);
            if constexpr (STATS) statistics_block(b, feat);
            else block(b, feat, hrow, dst);
        }
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

    // Adds z and z^2 of the valid cells of block b (lanes past the row end hold border
    // copies and are zeroed) to the double accumulators, two half vectors per hidden unit.
    __attribute__((noinline)) void statistics_block(int64_t b, const vf* feat) {
        const int n = static_cast<int>(std::min<int64_t>(LANES, W_ - b * LANES));
        const vi valid = (vi)iota() < n;
        auto sink = [&](int j0, const vf* z, int count) {
            for (int jj = 0; jj < count; ++jj) {
                vf v = n < LANES ? (vf)((vi)z[jj] & valid) : z[jj];
                vd lo = __builtin_convertvector(low_half(v), vd), hi = __builtin_convertvector(high_half(v), vd);
                acc_sum_[j0 + jj] += lo + hi;
                acc_sq_[j0 + jj] += lo * lo + hi * hi;
            }
        };
        nca::pre_activations<Cfg, vf, 8>(w_, feat, sink);
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

    // Lane sums of the accumulators into the plane's sums (fixed order), then reset.
    void plane_sums(double* out) {
        for (int j = 0; j < HIDDEN; ++j) {
            double s = 0.0, q = 0.0;
            for (int l = 0; l < DLANES; ++l) {
                s += acc_sum_[j][l];
                q += acc_sq_[j][l];
            }
            out[j] = s;
            out[HIDDEN + j] = q;
            acc_sum_[j] = acc_sq_[j] = vd{};
        }
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

    // Original (pre-step) blocked copy of plane s, |s - a| <= P for the plane a being updated.
    // While reading_ (statistics sweep) nothing is written, so every plane is read in place.
    const float* plane(int64_t s) {
        int slot = static_cast<int>(s % R);
        if (tag_[slot] != s) {
            const raw* src = reading_ || (s >= a0_ && s < a1_) ? item_ + s * raw_plane_
                             : s < a0_ ? halo_[s - (a0_ - P)] : halo_[P + (s - a1_)];
            for (int64_t y = 0; y < rows_; ++y) convert_row(src + y * W_ * C, ring_[slot] + y * row_floats_);
            tag_[slot] = s;
        }
        return ring_[slot];
    }

    const float* w_;
    Problem pb_;
    int64_t a0_, a1_, nouter_, rows_, W_, nblk_, row_floats_, plane_floats_, raw_plane_;
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
    // BatchNorm: this step's alpha, beta; the statistics sweep's plane sums and accumulators.
    const float* norm_ = nullptr;
    bool reading_ = false;
    double* sums_ = nullptr;
    vd acc_sum_[Cfg::BN ? HIDDEN : 1], acc_sq_[Cfg::BN ? HIDDEN : 1];
};

// BatchNorm between the two sweeps of a step: thread t of T turns the per-plane sums of
// hidden units t, t + T, ... (added in batch and plane order) into alpha, beta.
template <class Cfg>
void normalisation(const float* weights, const double* sums, int64_t planes, double count, float* norm, int t,
                   int T) {
    constexpr int H = Cfg::HIDDEN;
    for (int j = t; j < H; j += T) {
        double s = 0.0, q = 0.0;
        for (int64_t a = 0; a < planes; ++a) {
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
    // BatchNorm: per-plane sums of z and z^2 for the batch, and the step's alpha, beta.
    std::vector<double> sums(Cfg::BN ? pb.batch * nouter * 2 * Cfg::HIDDEN : 0);
    std::vector<float> norm(Cfg::BN ? 2 * Cfg::HIDDEN : 0);
    const double count = static_cast<double>(pb.batch) * pb.size[0] * pb.size[1] * pb.size[2];
    bool failed = false;
#pragma omp parallel num_threads(nt)
    {
        const int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
        Band<Cfg, S> band(w.data(), pb, nouter * t / T, nouter * (t + 1) / T);
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
                    for (int64_t b = 0; b < pb.batch; ++b)
                        band.statistics(static_cast<raw*>(state) + b * item, &sums[b * nouter * 2 * Cfg::HIDDEN]);
#pragma omp barrier
                    normalisation<Cfg>(w.data(), sums.data(), pb.batch * nouter, count, norm.data(),
                                       static_cast<int>(t), static_cast<int>(T));
#pragma omp barrier
                }
                for (int64_t b = 0; b < pb.batch; ++b) {
                    band.begin(static_cast<raw*>(state) + b * item, key);
#pragma omp barrier
                    band.run(norm.data());
#pragma omp barrier
                }
            }
        }
    }
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
