// One NCA cell update, shared by the CPU (OpenMP) and CUDA launchers.
//
// The function computed is the one of nca_cli/models/backbone.py (BackboneNCA.step):
//
//   p     = depthwise K^DIMS conv of the state, with bias, reflect borders (reflect_index)
//   h     = relu(W0 [s, p] + b0)          W0: HIDDEN x 2C
//   delta = W1 h                          W1: (C - IN) x HIDDEN, no bias
//   s[IN:] += delta  where the cell fires (counter-based hash of nca_cli/firemask.py)
//
// The math is templated on a lane type V: V = float computes one cell (one CUDA thread);
// on the CPU V is a SIMD vector holding one value per cell of a block of cells, so the
// same code evaluates a block across the lanes. Arithmetic is float32 whatever the
// storage type of the state (float, IEEE half, bfloat16); storage conversions round to
// nearest even. Results equal the PyTorch reference up to the order of float32 sums (see
// nca_cli/kernels/__init__.py for what that means with 16-bit storage).
//
// Weights are one packed float32 array, laid out as described by Cfg:
//   pw [C][K^DIMS] (conv weight, (dz,) dy, dx row-major), pb [C], w0 [HIDDEN][2C], b0 [HIDDEN],
//   w1 [C-IN][HIDDEN].
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define NCA_HD __host__ __device__ __forceinline__
#define NCA_UNROLL _Pragma("unroll")
#else
#define NCA_HD inline __attribute__((always_inline))
#define NCA_UNROLL _Pragma("GCC unroll 64")
#endif

namespace nca {

// ---------------------------------------------------------------------------------------
// Model shape, fixed at compile time.

template <int DIMS_, int C_, int HIDDEN_, int IN_, int K_>
struct Cfg {
    static_assert(DIMS_ == 2 || DIMS_ == 3, "DIMS must be 2 or 3");
    static_assert(K_ % 2 == 1, "kernel size must be odd");
    static_assert(IN_ > 0 && IN_ < C_, "input channels must lie in 1..C-1");
    static constexpr int DIMS = DIMS_;
    static constexpr int C = C_;
    static constexpr int HIDDEN = HIDDEN_;
    static constexpr int IN = IN_;
    static constexpr int K = K_;
    static constexpr int OUT = C_ - IN_;
    static constexpr int P = K_ / 2;
    static constexpr int KZ = DIMS_ == 3 ? K_ : 1;            // taps along z (1 in 2D)
    static constexpr int TAPS = KZ * K_ * K_;
    static constexpr int FEAT = 2 * C_;
    static constexpr int OFF_PW = 0;
    static constexpr int OFF_PB = OFF_PW + C_ * TAPS;
    static constexpr int OFF_W0 = OFF_PB + C_;
    static constexpr int OFF_B0 = OFF_W0 + HIDDEN_ * FEAT;
    static constexpr int OFF_W1 = OFF_B0 + HIDDEN_;
    static constexpr int NWEIGHTS = OFF_W1 + OUT * HIDDEN_;
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

// Perception: feat[0..C) = the cell's state, feat[C..2C) = depthwise conv with bias.
// src(c, dz, dy, dx) returns channel c of the neighbour at offset (dz-P, dy-P, dx-P)
// (dz = 0 in 2D), already resolved for reflect borders. One partial sum per dx keeps the
// chains of dependent multiply-adds short.
template <class Cfg, class V, class Src>
NCA_HD void perceive(const float* __restrict__ w, const Src& src, V* __restrict__ feat) {
    constexpr int C = Cfg::C, K = Cfg::K, KZ = Cfg::KZ, P = Cfg::P, TAPS = Cfg::TAPS;
    const float* pw = w + Cfg::OFF_PW;
    const float* pb = w + Cfg::OFF_PB;
    NCA_UNROLL
    for (int c = 0; c < C; ++c) {
        V acc[K];
        NCA_UNROLL
        for (int dx = 0; dx < K; ++dx) acc[dx] = Lane<V>::set1(dx == 0 ? pb[c] : 0.0f);
        NCA_UNROLL
        for (int dz = 0; dz < KZ; ++dz) {
            NCA_UNROLL
            for (int dy = 0; dy < K; ++dy) {
                NCA_UNROLL
                for (int dx = 0; dx < K; ++dx)
                    acc[dx] = Lane<V>::madd(pw[c * TAPS + (dz * K + dy) * K + dx], src(c, dz, dy, dx), acc[dx]);
            }
        }
        NCA_UNROLL
        for (int dx = 1; dx < K; ++dx) acc[0] = acc[0] + acc[dx];
        feat[c] = src(c, KZ == 1 ? 0 : P, P, P);
        feat[C + c] = acc[0];
    }
}

// fc0 for NJ hidden units starting at j0, ReLU, into h[j0 .. j0+NJ).
template <class Cfg, class V, int NJ>
NCA_HD void hidden_block(const float* __restrict__ w, const V* __restrict__ feat, V* __restrict__ h, int j0) {
    constexpr int FEAT = Cfg::FEAT;
    const float* w0 = w + Cfg::OFF_W0 + j0 * FEAT;
    const float* b0 = w + Cfg::OFF_B0 + j0;
    V acc[NJ];
    NCA_UNROLL
    for (int jj = 0; jj < NJ; ++jj) acc[jj] = Lane<V>::set1(b0[jj]);
    NCA_UNROLL
    for (int k = 0; k < FEAT; ++k) {
        V f = Lane<V>::hold(feat[k]);
        NCA_UNROLL
        for (int jj = 0; jj < NJ; ++jj) acc[jj] = Lane<V>::madd(w0[jj * FEAT + k], f, acc[jj]);
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

// delta = fc1(relu(fc0(feat))): the update of channels IN..C-1, before the fire mask.
// JB / OB: hidden units / outputs accumulated at once (register blocking).
template <class Cfg, class V, int JB = 8, int OB = 8>
NCA_HD void update(const float* __restrict__ w, const V* __restrict__ feat, V* __restrict__ delta) {
    constexpr int HIDDEN = Cfg::HIDDEN, OUT = Cfg::OUT;
    constexpr int JFULL = HIDDEN / JB * JB, OFULL = OUT / OB * OB;
    V h[HIDDEN];
    for (int j0 = 0; j0 < JFULL; j0 += JB) hidden_block<Cfg, V, JB>(w, feat, h, j0);
    if constexpr (JFULL < HIDDEN) hidden_block<Cfg, V, HIDDEN - JFULL>(w, feat, h, JFULL);
    for (int o0 = 0; o0 < OFULL; o0 += OB) output_block<Cfg, V, OB>(w, h, delta, o0);
    if constexpr (OFULL < OUT) output_block<Cfg, V, OUT - OFULL>(w, h, delta, OFULL);
}

}  // namespace nca
