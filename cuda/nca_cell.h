// One NCA cell update, shared by the CPU (OpenMP) and CUDA launchers.
//
// The function computed is the one of nca_cli/models/backbone.py (BackboneNCA.step):
//
//   p     = perception of the state, with bias, reflect borders (reflect_index):
//             DEPTHWISE: feat = [s, conv(s)], one depthwise K^DIMS conv (groups = C)
//             FULL2:     feat = [s, conv0(s), conv1(s)], two full C -> C K^DIMS convs
//   z     = W0 feat + b0                  W0: HIDDEN x FEAT
//   h     = relu(z)                       without normalisation
//         = relu(alpha z + beta)          BATCH_NORM: alpha, beta from the batch's statistics
//   delta = W1 h                          W1: (C - IN) x HIDDEN, no bias
//   s[IN:] += delta  where the cell fires (counter-based hash of nca_cli/firemask.py)
//
// With BATCH_NORM a launcher first sweeps every cell of the batch for the sums of z and z^2
// per hidden unit in double precision: either from z itself (pre_activations below; the
// CUDA launcher) or from the moments of the features, which give the same sums without
// fc0 per cell (moment_sums; the CPU launcher). batch_norm_affine turns the sums into the
// per-unit alpha, beta of the update sweep (the CPU launcher may keep the perception of the
// statistics sweep for it). Nothing of the hidden layer is ever stored. An
// fc1 with all C outputs (Med-NCA) needs no variant: the updates of the input channels are
// discarded, so only its rows IN..C-1 are packed.
//
// The math is templated on a lane type V: V = float computes one cell (one CUDA thread);
// on the CPU V is a SIMD vector holding one value per cell of a block of cells, so the
// same code evaluates a block across the lanes. Arithmetic is float32 whatever the
// storage type of the state (float, IEEE half, bfloat16); storage conversions round to
// nearest even. Results equal the PyTorch reference up to the order of float32 sums (see
// nca_cli/kernels/__init__.py for what that means with 16-bit storage).
//
// Weights are one packed float32 array, laid out as described by Cfg (conv weights are
// torch's, taps (dz,) dy, dx row-major):
//   DEPTHWISE: pw [C][K^DIMS], pb [C]
//   FULL2:     p0w [C][C][K^DIMS], p0b [C], p1w [C][C][K^DIMS], p1b [C]
//   then w0 [HIDDEN][FEAT], b0 [HIDDEN], BATCH_NORM only: gamma [HIDDEN], beta [HIDDEN],
//   then w1 [C-IN][HIDDEN].
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define NCA_HD __host__ __device__ __forceinline__
#define NCA_UNROLL _Pragma("unroll")
#define NCA_NO_UNROLL _Pragma("unroll 1")
#else
#define NCA_HD inline __attribute__((always_inline))
#define NCA_UNROLL _Pragma("GCC unroll 64")
#define NCA_NO_UNROLL _Pragma("GCC unroll 1")
#endif

namespace nca {

// ---------------------------------------------------------------------------------------
// Model shape, fixed at compile time.

enum Perception : int { DEPTHWISE = 0, FULL2 = 1 };
enum Normalization : int { NO_NORM = 0, BATCH_NORM = 1 };

template <int DIMS_, int C_, int HIDDEN_, int IN_, int K_, int PERCEPTION_ = DEPTHWISE, int NORM_ = NO_NORM>
struct Cfg {
    static_assert(DIMS_ == 2 || DIMS_ == 3, "DIMS must be 2 or 3");
    static_assert(K_ % 2 == 1, "kernel size must be odd");
    static_assert(IN_ > 0 && IN_ < C_, "input channels must lie in 1..C-1");
    static_assert(PERCEPTION_ == DEPTHWISE || PERCEPTION_ == FULL2, "unknown perception");
    static_assert(NORM_ == NO_NORM || NORM_ == BATCH_NORM, "unknown normalisation");
    static constexpr int DIMS = DIMS_;
    static constexpr int C = C_;
    static constexpr int HIDDEN = HIDDEN_;
    static constexpr int IN = IN_;
    static constexpr int K = K_;
    static constexpr int PERCEPTION = PERCEPTION_;
    static constexpr bool BN = NORM_ == BATCH_NORM;
    static constexpr int OUT = C_ - IN_;
    static constexpr int P = K_ / 2;
    static constexpr int KZ = DIMS_ == 3 ? K_ : 1;            // taps along z (1 in 2D)
    static constexpr int TAPS = KZ * K_ * K_;
    static constexpr int NCONV = PERCEPTION_ == FULL2 ? 2 : 1;  // perception convs
    static constexpr int CONV_W = (PERCEPTION_ == FULL2 ? C_ : 1) * C_ * TAPS;  // weights of one conv
    static constexpr int FEAT = (1 + NCONV) * C_;
    static constexpr int OFF_PW = 0;                          // conv i: weight at i * (CONV_W + C)
    static constexpr int OFF_PB = OFF_PW + CONV_W;            // conv i: bias at the same + CONV_W
    static constexpr int OFF_W0 = NCONV * (CONV_W + C_);
    static constexpr int OFF_B0 = OFF_W0 + HIDDEN_ * FEAT;
    static constexpr int OFF_BN = OFF_B0 + HIDDEN_;           // gamma [HIDDEN], beta [HIDDEN]
    static constexpr int OFF_W1 = OFF_BN + (BN ? 2 * HIDDEN_ : 0);
    static constexpr int NWEIGHTS = OFF_W1 + OUT * HIDDEN_;
    // BatchNorm: torch's default eps; alpha [HIDDEN], beta [HIDDEN] per step (see update).
    static constexpr double BN_EPS = 1e-5;
};

// ---------------------------------------------------------------------------------------
// Fire mask: the counter-based hash of nca_cli/firemask.py (uint32, wrapping).

// U is uint32_t, or a SIMD vector of uint32 lanes (one cell per lane).
template <class U>
NCA_HD U mix(U x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x5BD1E995u;
    x ^= x >> 16;
    return x;
}

NCA_HD uint32_t step_key(uint64_t seed, uint32_t level, uint32_t step) {
    return mix<uint32_t>(mix<uint32_t>(mix<uint32_t>(static_cast<uint32_t>(seed) ^ 0x9E3779B9u) ^ level) ^ step);
}

// Hash prefix of a row: mix(mix(key ^ z) ^ y); 2D uses z = 0.
NCA_HD uint32_t row_hash(uint32_t key, uint32_t z, uint32_t y) { return mix<uint32_t>(mix<uint32_t>(key ^ z) ^ y); }

// threshold = nca_cli.firemask.threshold(fire_rate) = round(fire_rate * 2^24); 2^24 always fires.
NCA_HD bool fires(uint32_t row, uint32_t x, uint32_t threshold) {
    return (mix<uint32_t>(row ^ x) >> 8) < threshold;
}

// ---------------------------------------------------------------------------------------
// Reflect borders exactly as reflect_index: -1 reads 1, n reads n-2, folded as often as
// needed, a size-1 axis reads 0.

NCA_HD int64_t reflect(int64_t i, int64_t n) {
    if (n == 1) return 0;
    if (i >= 0 && i < n) return i;
    int64_t period = 2 * (n - 1);
    i %= period;
    if (i < 0) i += period;
    return i >= n ? period - i : i;
}

// ---------------------------------------------------------------------------------------
// Storage types: float32, IEEE half, bfloat16 (raw 16-bit patterns); arithmetic in float.

NCA_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
#endif
}

NCA_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

// IEEE binary16 -> float (exact).
NCA_HD float half_bits_to_float(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t em = h & 0x7FFFu;
    if (em >= 0x7C00u) return bits_f32(sign | 0x7F800000u | ((em & 0x3FFu) << 13));   // inf, nan
    if (em >= 0x0400u) return bits_f32(sign | ((em << 13) + (112u << 23)));          // normal
    float v = static_cast<float>(em) * 5.9604644775390625e-8f;                           // subnormal: em * 2^-24
    return bits_f32(sign | f32_bits(v));
}

// float -> IEEE binary16, round to nearest even; overflow gives inf, nan stays nan (quiet).
NCA_HD uint16_t float_to_half_bits(float f) {
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7FFFFFFFu;
    uint32_t out;
    if (a >= 0x47800000u) {                      // |f| >= 65536, inf or nan
        out = a > 0x7F800000u ? 0x7E00u | ((a >> 13) & 0x3FFu) : 0x7C00u;
    } else if (a < 0x38800000u) {                // below 2^-14: half subnormal or zero
        // Adding 0.5 aligns the 10 subnormal mantissa bits at the bottom of the float's
        // mantissa; the float addition itself rounds to nearest even.
        float v = bits_f32(a) + 0.5f;
        out = f32_bits(v) - 0x3F000000u;
    } else {                                     // normal (may round up to inf)
        uint32_t odd = (a >> 13) & 1u;
        a += 0xC8000FFFu + odd;                  // rebias exponent by -112, add rounding bias
        out = a >> 13;
    }
    return static_cast<uint16_t>(out | sign);
}

NCA_HD float bf16_bits_to_float(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

// float -> bfloat16, round to nearest even; nan stays nan (quiet).
NCA_HD uint16_t float_to_bf16_bits(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

struct F32 {
    using raw = float;
    static constexpr int code = 0;
    NCA_HD static float load(raw v) { return v; }
    NCA_HD static raw store(float v) { return v; }
};

struct F16 {
    using raw = uint16_t;
    static constexpr int code = 1;
    NCA_HD static float load(raw v) {
#if defined(__CUDA_ARCH__)
        return __half2float(__ushort_as_half(v));
#else
        return half_bits_to_float(v);
#endif
    }
    NCA_HD static raw store(float v) {
#if defined(__CUDA_ARCH__)
        return __half_as_ushort(__float2half_rn(v));
#else
        return float_to_half_bits(v);
#endif
    }
};

struct BF16 {
    using raw = uint16_t;
    static constexpr int code = 2;
    NCA_HD static float load(raw v) {
#if defined(__CUDA_ARCH__)
        return __bfloat162float(__ushort_as_bfloat16(v));
#else
        return bf16_bits_to_float(v);
#endif
    }
    NCA_HD static raw store(float v) {
#if defined(__CUDA_ARCH__)
        return __bfloat16_as_ushort(__float2bfloat16_rn(v));
#else
        return float_to_bf16_bits(v);
#endif
    }
};

// ---------------------------------------------------------------------------------------
// Lane operations. The primary template is one cell (V = float); a launcher that evaluates
// a block of cells per SIMD vector specialises Lane for its vector type before using the
// templates below.

template <class V>
struct Lane {
    NCA_HD static V set1(float v) { return v; }
    NCA_HD static V relu(V x) { return x < 0.0f ? 0.0f : x; }  // NaN stays NaN, as torch.relu
    NCA_HD static V madd(float w, V x, V acc) {
#if defined(__CUDA_ARCH__)
        return fmaf(w, x, acc);
#else
        return acc + w * x;
#endif
    }
    // A value about to be reused by several multiply-adds (a register hint; identity here).
    NCA_HD static V hold(V x) { return x; }
};

// Depthwise conv taps of one tap row (dz, dy) of channel c: acc[dx] += w * neighbour.
template <class Cfg, class V, class Src>
NCA_HD void depthwise_row(const float* __restrict__ pw, const Src& src, V* __restrict__ acc, int c, int dz, int dy) {
    constexpr int K = Cfg::K, TAPS = Cfg::TAPS;
    NCA_UNROLL
    for (int dx = 0; dx < K; ++dx)
        acc[dx] = Lane<V>::madd(pw[c * TAPS + (dz * K + dy) * K + dx], src(c, dz, dy, dx), acc[dx]);
}

// Depthwise perception of channel c: feat[c] = the cell's state, feat[C + c] = conv with
// bias. One partial sum per dx keeps the chains of dependent multiply-adds short. Kernels
// of more than 27 taps keep the loop over tap rows rolled, so the code stays small (CPU
// instruction cache, compile time) and, on the GPU, feat stays in registers.
template <class Cfg, class V, class Src>
NCA_HD void perceive_depthwise(const float* __restrict__ w, const Src& src, V* __restrict__ feat, int c) {
    constexpr int C = Cfg::C, K = Cfg::K, KZ = Cfg::KZ, P = Cfg::P;
    const float* pw = w + Cfg::OFF_PW;
    const float* pb = w + Cfg::OFF_PB;
    V acc[K];
    NCA_UNROLL
    for (int dx = 0; dx < K; ++dx) acc[dx] = Lane<V>::set1(dx == 0 ? pb[c] : 0.0f);
    if constexpr (Cfg::TAPS <= 27) {
        NCA_UNROLL
        for (int dz = 0; dz < KZ; ++dz) {
            NCA_UNROLL
            for (int dy = 0; dy < K; ++dy) depthwise_row<Cfg, V>(pw, src, acc, c, dz, dy);
        }
    } else {
        NCA_NO_UNROLL
        for (int r = 0; r < KZ * K; ++r) depthwise_row<Cfg, V>(pw, src, acc, c, r / K, r % K);
    }
    NCA_UNROLL
    for (int dx = 1; dx < K; ++dx) acc[0] = acc[0] + acc[dx];
    feat[c] = src(c, KZ == 1 ? 0 : P, P, P);
    feat[C + c] = acc[0];
}

// Depthwise perception of channel c for NR consecutive output rows of one plane at once (the
// CPU launcher's 3D sweep): src(c, dz, yy, dx) is channel c of the neighbour at
// (dz-P, yy-P, dx-P) of the first output row's cells, yy in [0, NR + K - 1). Each neighbour
// row is loaded (and lane-shifted) once and feeds every output row it is a tap row of, up to
// K of them, instead of being loaded again for each; the NR accumulators are independent
// chains. The same sum as perceive_depthwise, in another order. feat: NR rows of FEAT.
template <class Cfg, class V, int NR, class Src>
NCA_HD void perceive_depthwise_rows(const float* __restrict__ w, const Src& src, V* __restrict__ feat, int c) {
    constexpr int C = Cfg::C, K = Cfg::K, KZ = Cfg::KZ, P = Cfg::P, TAPS = Cfg::TAPS, FEAT = Cfg::FEAT;
    const float* pw = w + Cfg::OFF_PW + c * TAPS;
    V acc[NR];
    NCA_UNROLL
    for (int r = 0; r < NR; ++r) acc[r] = Lane<V>::set1(w[Cfg::OFF_PB + c]);
    NCA_NO_UNROLL
    for (int dz = 0; dz < KZ; ++dz) {
        const float* wz = pw + dz * K * K;
        NCA_UNROLL
        for (int dx = 0; dx < K; ++dx) {
            float wy[K];
            NCA_UNROLL
            for (int dy = 0; dy < K; ++dy) wy[dy] = wz[dy * K + dx];
            NCA_UNROLL
            for (int yy = 0; yy < NR + K - 1; ++yy) {
                V x = Lane<V>::hold(src(c, dz, yy, dx));
                NCA_UNROLL
                for (int dy = 0; dy < K; ++dy) {
                    const int r = yy - dy;
                    if (r >= 0 && r < NR) acc[r] = Lane<V>::madd(wy[dy], x, acc[r]);
                }
            }
        }
    }
    NCA_UNROLL
    for (int r = 0; r < NR; ++r) {
        feat[r * FEAT + c] = src(c, KZ == 1 ? 0 : P, r + P, P);
        feat[r * FEAT + C + c] = acc[r];
    }
}

// Full perception, NO outputs o0 .. o0+NO of the two convs together (output o < C: conv0
// channel o, else conv1 channel o - C): every neighbour value loaded feeds NO accumulators.
// The loop over input channels stays rolled: its body already holds NO * K^DIMS
// multiply-adds.
template <class Cfg, class V, int NO, class Src>
NCA_HD void perceive_full_block(const float* __restrict__ w, const Src& src, V* __restrict__ feat, int o0) {
    constexpr int C = Cfg::C, K = Cfg::K, KZ = Cfg::KZ, TAPS = Cfg::TAPS;
    const float* wo[NO];
    V acc[NO];
    NCA_UNROLL
    for (int oo = 0; oo < NO; ++oo) {
        const int o = o0 + oo, conv = o / C, ch = o % C;
        const float* base = w + Cfg::OFF_PW + conv * (Cfg::CONV_W + C);
        wo[oo] = base + ch * C * TAPS;
        acc[oo] = Lane<V>::set1(base[Cfg::CONV_W + ch]);
    }
    NCA_NO_UNROLL
    for (int c = 0; c < C; ++c) {
        NCA_UNROLL
        for (int dz = 0; dz < KZ; ++dz) {
            NCA_UNROLL
            for (int dy = 0; dy < K; ++dy) {
                NCA_UNROLL
                for (int dx = 0; dx < K; ++dx) {
                    const int tap = (dz * K + dy) * K + dx;
                    V x = Lane<V>::hold(src(c, dz, dy, dx));
                    NCA_UNROLL
                    for (int oo = 0; oo < NO; ++oo) acc[oo] = Lane<V>::madd(wo[oo][c * TAPS + tap], x, acc[oo]);
                }
            }
        }
    }
    NCA_UNROLL
    for (int oo = 0; oo < NO; ++oo) feat[C + o0 + oo] = acc[oo];
}

// Perception: feat[0..C) = the cell's state, then the conv outputs (see Cfg).
// src(c, dz, dy, dx) returns channel c of the neighbour at offset (dz-P, dy-P, dx-P)
// (dz = 0 in 2D), already resolved for reflect borders.
template <class Cfg, class V, class Src>
NCA_HD void perceive(const float* __restrict__ w, const Src& src, V* __restrict__ feat) {
    constexpr int C = Cfg::C, KZ = Cfg::KZ, P = Cfg::P;
    if constexpr (Cfg::PERCEPTION == DEPTHWISE) {
        NCA_UNROLL
        for (int c = 0; c < C; ++c) perceive_depthwise<Cfg, V>(w, src, feat, c);
    } else {
        constexpr int NO = Cfg::NCONV * C, OB = 8, OFULL = NO / OB * OB;
        NCA_UNROLL
        for (int c = 0; c < C; ++c) feat[c] = src(c, KZ == 1 ? 0 : P, P, P);
        for (int o0 = 0; o0 < OFULL; o0 += OB) perceive_full_block<Cfg, V, OB>(w, src, feat, o0);
        if constexpr (OFULL < NO) perceive_full_block<Cfg, V, NO - OFULL>(w, src, feat, OFULL);
    }
}

// fc0 pre-activations of NJ hidden units starting at j0: z[jj] = W0[j0 + jj] feat + b0.
template <class Cfg, class V, int NJ>
NCA_HD void fc0_block(const float* __restrict__ w, const V* __restrict__ feat, V* __restrict__ z, int j0) {
    constexpr int FEAT = Cfg::FEAT;
    const float* w0 = w + Cfg::OFF_W0 + j0 * FEAT;
    const float* b0 = w + Cfg::OFF_B0 + j0;
    NCA_UNROLL
    for (int jj = 0; jj < NJ; ++jj) z[jj] = Lane<V>::set1(b0[jj]);
    NCA_UNROLL
    for (int k = 0; k < FEAT; ++k) {
        V f = Lane<V>::hold(feat[k]);
        NCA_UNROLL
        for (int jj = 0; jj < NJ; ++jj) z[jj] = Lane<V>::madd(w0[jj * FEAT + k], f, z[jj]);
    }
}

// fc0, normalisation (BATCH_NORM: norm = alpha [HIDDEN], beta [HIDDEN]) and ReLU for NJ
// hidden units starting at j0, into h[j0 .. j0+NJ).
template <class Cfg, class V, int NJ>
NCA_HD void hidden_block(const float* __restrict__ w, const V* __restrict__ feat, V* __restrict__ h, int j0,
                         const float* __restrict__ norm) {
    V acc[NJ];
    fc0_block<Cfg, V, NJ>(w, feat, acc, j0);
    if constexpr (Cfg::BN) {
        NCA_UNROLL
        for (int jj = 0; jj < NJ; ++jj)
            acc[jj] = Lane<V>::madd(norm[j0 + jj], acc[jj], Lane<V>::set1(norm[Cfg::HIDDEN + j0 + jj]));
    }
    NCA_UNROLL
    for (int jj = 0; jj < NJ; ++jj) h[j0 + jj] = Lane<V>::relu(acc[jj]);
}

// fc1 for NO outputs starting at o0: delta[o0 .. o0+NO).
template <class Cfg, class V, int NO>
NCA_HD void output_block(const float* __restrict__ w, const V* __restrict__ h, V* __restrict__ delta, int o0) {
    constexpr int HIDDEN = Cfg::HIDDEN;
    const float* w1 = w + Cfg::OFF_W1 + o0 * HIDDEN;
    V acc[NO];
    NCA_UNROLL
    for (int oo = 0; oo < NO; ++oo) acc[oo] = Lane<V>::set1(0.0f);
    NCA_UNROLL
    for (int j = 0; j < HIDDEN; ++j) {
        V x = Lane<V>::hold(h[j]);
        NCA_UNROLL
        for (int oo = 0; oo < NO; ++oo) acc[oo] = Lane<V>::madd(w1[oo * HIDDEN + j], x, acc[oo]);
    }
    NCA_UNROLL
    for (int oo = 0; oo < NO; ++oo) delta[o0 + oo] = acc[oo];
}

// delta = fc1(relu(norm(fc0(feat)))): the update of channels IN..C-1, before the fire mask.
// norm: BATCH_NORM only, alpha [HIDDEN] then beta [HIDDEN] (batch_norm_affine).
// JB / OB: hidden units / outputs accumulated at once (register blocking).
template <class Cfg, class V, int JB = 8, int OB = 8>
NCA_HD void update(const float* __restrict__ w, const V* __restrict__ feat, V* __restrict__ delta,
                   const float* __restrict__ norm = nullptr) {
    constexpr int HIDDEN = Cfg::HIDDEN, OUT = Cfg::OUT;
    constexpr int JFULL = HIDDEN / JB * JB, OFULL = OUT / OB * OB;
    V h[HIDDEN];
    for (int j0 = 0; j0 < JFULL; j0 += JB) hidden_block<Cfg, V, JB>(w, feat, h, j0, norm);
    if constexpr (JFULL < HIDDEN) hidden_block<Cfg, V, HIDDEN - JFULL>(w, feat, h, JFULL, norm);
    for (int o0 = 0; o0 < OFULL; o0 += OB) output_block<Cfg, V, OB>(w, h, delta, o0);
    if constexpr (OFULL < OUT) output_block<Cfg, V, OUT - OFULL>(w, h, delta, OFULL);
}

// The statistics sweep of BATCH_NORM: the fc0 pre-activations z of one cell (or lane block),
// JB hidden units at a time, handed to sink(j0, z, count) for z[0 .. count) = units
// j0 .. j0+count; the launcher sums them and their squares in double precision.
template <class Cfg, class V, int JB, class Sink>
NCA_HD void pre_activations(const float* __restrict__ w, const V* __restrict__ feat, Sink& sink) {
    constexpr int HIDDEN = Cfg::HIDDEN, JFULL = HIDDEN / JB * JB;
    for (int j0 = 0; j0 < JFULL; j0 += JB) {
        V z[JB];
        fc0_block<Cfg, V, JB>(w, feat, z, j0);
        sink(j0, z, JB);
    }
    if constexpr (JFULL < HIDDEN) {
        V z[HIDDEN - JFULL];
        fc0_block<Cfg, V, HIDDEN - JFULL>(w, feat, z, JFULL);
        sink(JFULL, z, HIDDEN - JFULL);
    }
}

// The sums of z and z^2 of n cells from the moments of their features, without fc0 per cell.
// The moments are taken about a reference feature vector r (any cell's features: it keeps
// the products small when the features have a large mean): s_a = sum of (f_a - r_a),
// g_ab = sum of (f_a - r_a)(f_b - r_b). With z_j = W0_j (f - r) + c_j, c_j = W0_j r + b0_j:
//   sum z_j   = W0_j s + n c_j
//   sum z_j^2 = W0_j^T g W0_j + 2 c_j (W0_j s) + n c_j^2
// wt: W0 transposed in double, wt[a * HIDDEN + j]; g: only a <= b is read, g[a * ld + b];
// out: sum z_j at out[j], sum z_j^2 at out[HIDDEN + j]; u: HIDDEN doubles of scratch.
// Everything is double; the loops over j are independent (they vectorise).
template <class Cfg>
inline void moment_sums(const double* __restrict__ wt, const float* __restrict__ b0, const float* __restrict__ ref,
                        const double* __restrict__ s, const double* __restrict__ g, int ld, double n,
                        double* __restrict__ out, double* __restrict__ u) {
    constexpr int H = Cfg::HIDDEN, FEAT = Cfg::FEAT;
    double* sum = out;
    double* sq = out + H;
    for (int j = 0; j < H; ++j) {
        sum[j] = 0.0;   // W0_j s
        sq[j] = 0.0;    // W0_j^T g W0_j
        u[j] = b0[j];   // c_j
    }
    for (int a = 0; a < FEAT; ++a) {
        const double* wa = wt + a * H;
        const double sa = s[a], ra = ref[a];
        for (int j = 0; j < H; ++j) {
            sum[j] += wa[j] * sa;
            u[j] += wa[j] * ra;
        }
    }
    for (int j = 0; j < H; ++j) {
        const double c = u[j], ws = sum[j];
        sum[j] = ws + n * c;
        sq[j] = 2.0 * c * ws + n * c * c;
    }
    for (int a = 0; a < FEAT; ++a) {
        for (int j = 0; j < H; ++j) u[j] = 0.0;   // u_j = sum over b of g_ab W0_jb
        for (int b = 0; b < FEAT; ++b) {
            const double gab = a <= b ? g[a * ld + b] : g[b * ld + a];
            const double* wb = wt + b * H;
            for (int j = 0; j < H; ++j) u[j] += gab * wb[j];
        }
        const double* wa = wt + a * H;
        for (int j = 0; j < H; ++j) sq[j] += wa[j] * u[j];
    }
}

// BatchNorm of one hidden unit from the batch's sums, as torch computes it with
// track_running_stats=False: mean and biased variance over the batch and every cell,
// invstd = 1 / sqrt(var + eps), then y = alpha z + beta with alpha = invstd * gamma and
// beta = bias - mean * alpha. The sums are double; var = E[z^2] - mean^2 in double (the
// z^2 of a float z is exact in double, so only the summation rounds).
template <class Cfg>
NCA_HD void batch_norm_affine(double sum, double sumsq, double count, float gamma, float bias, float* alpha,
                              float* beta) {
    const double mean = sum / count;
    double var = sumsq / count - mean * mean;
    if (var < 0.0) var = 0.0;
    const float invstd = static_cast<float>(1.0 / sqrt(var + Cfg::BN_EPS));
    *alpha = invstd * gamma;
    *beta = bias - static_cast<float>(mean) * *alpha;
}

}  // namespace nca
