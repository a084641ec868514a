// A CPU emulator of the CUDA runtime features the kernels of nca_cuda.cu use, so that the
// very source nvcc compiles runs on a machine without a GPU (under AddressSanitizer and
// UBSan in the tests: tests/kernels/test_cuda_emulated.py).
//
// Compiled as C++ by g++, with this directory first on the include path: its
// cuda_runtime_api.h, cuda_fp16.h and cuda_bf16.h stand in for the toolkit's. This header
// defines __CUDACC__ and __CUDA_ARCH__, so nca_cell.h takes its device paths (fmaf, the
// __half / __nv_bfloat16 conversions, implemented here with round to nearest even).
//
// A launch (NCA_LAUNCH, the launcher's one launch macro) first checks the configuration as a
// device of compute capability 9.0 would (grid at most 2^31-1 x 65535 x 65535 blocks, at
// most 1024 threads per block and 1024 x 1024 x 64 per axis, dynamic shared memory at most
// 48 KiB unless cudaFuncSetAttribute opted in to more, up to 227 KiB); a bad one is reported
// by cudaGetLastError and nothing runs. Then the blocks run one after the other (first to last,
// or last to first with CUDA_EMU_BLOCK_ORDER=reverse: a device keeps no order); within a
// block every CUDA thread is a fiber (ucontext) of one CPU thread, with its own threadIdx.
// A fiber runs until it reaches __syncthreads (a barrier of the block), a warp shuffle (the
// 32 lanes of a warp exchange values through the warp's slots, all at once) or its end.
// Dynamic shared memory is one allocation of exactly the launch's size per block (so ASan
// sees any access beyond it); static __shared__ variables are not emulated (a compile error).
// Misuse a device would hang on or leave undefined aborts with a message: a __syncthreads
// some threads of the block never reach, a shuffle not every lane of the warp joins, a
// shuffle from a lane that does not exist.
#pragma once

#define NCA_CUDA_EMULATOR 1
#ifndef __CUDACC__
#define __CUDACC__ 1
#endif
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 900
#endif

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static_shared_memory_is_not_emulated_use_NCA_DYNAMIC_SHARED

// ---------------------------------------------------------------------------------------
// Runtime types.

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

enum cudaError_t : int {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;

// The thread's coordinates: set by the scheduler before a fiber resumes.
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
constexpr int warpSize = 32;

const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();

namespace cuda_emu {

// Device limits (compute capability 9.0).
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDim[3] = {1024, 1024, 64};
constexpr unsigned kMaxGridDim[3] = {0x7FFFFFFFu, 65535u, 65535u};
constexpr size_t kDefaultSharedBytes = 48 * 1024;
constexpr size_t kMaxOptInSharedBytes = 227 * 1024;

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);

// Checks the configuration, then runs body() once per CUDA thread of every block.
void run_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t shared,
              const std::function<void()>& body);

// This block's dynamic shared memory (the launch's size, 16-byte aligned).
unsigned char* dynamic_shared();

// Suspends the calling CUDA thread at a barrier of its block.
void syncthreads();

// Suspends the calling CUDA thread until every lane of its warp has offered a value; returns
// the value of lane `src` (the bits of a value of `bytes` bytes, at most 8).
uint64_t shuffle(uint32_t mask, uint64_t bits, int src, const char* op);

// What the launches of this process did (for the tests): per kernel name, launches, blocks
// run and the largest dynamic shared memory of a launch. Written as JSON.
void write_launch_log(FILE* out);

template <class T>
T shfl(uint32_t mask, T v, int src, const char* op) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    bits = shuffle(mask, bits, src, op);
    memcpy(&v, &bits, sizeof(T));
    return v;
}

template <class... P, class... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t shared, cudaStream_t,
            A&&... args) {
    // The arguments are copied once, as the device receives them, and every thread reads them.
    std::tuple<typename std::decay<P>::type...> params(std::forward<A>(args)...);
    run_grid(name, reinterpret_cast<const void*>(kernel), grid, block, shared,
             [&] { std::apply(kernel, params); });
}

}  // namespace cuda_emu

template <class T>
cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
    return cuda_emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
}

inline void __syncthreads() { cuda_emu::syncthreads(); }

template <class T>
T __shfl_xor_sync(uint32_t mask, T v, int lane_mask, int width = 32) {
    const int lane = static_cast<int>(threadIdx.x % 32);
    return cuda_emu::shfl(mask, v, (lane & ~(width - 1)) + ((lane ^ lane_mask) & (width - 1)), "__shfl_xor_sync");
}
template <class T>
T __shfl_sync(uint32_t mask, T v, int src, int width = 32) {
    const int lane = static_cast<int>(threadIdx.x % 32);
    return cuda_emu::shfl(mask, v, (lane & ~(width - 1)) + (src & (width - 1)), "__shfl_sync");
}
template <class T>
T __shfl_down_sync(uint32_t mask, T v, unsigned delta, int width = 32) {
    const int lane = static_cast<int>(threadIdx.x % 32), in = (lane & (width - 1)) + static_cast<int>(delta);
    return cuda_emu::shfl(mask, v, in < width ? lane + static_cast<int>(delta) : lane, "__shfl_down_sync");
}

// ---------------------------------------------------------------------------------------
// Device math and bit casts used by the kernels.

inline uint32_t __float_as_uint(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// 16-bit storage types: the raw bits, converted with round to nearest even as CUDA does.
struct __half {
    uint16_t bits;
};
struct __nv_bfloat16 {
    uint16_t bits;
};

inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }

inline float __half2float(__half h) {
    const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
    uint32_t exp = (h.bits >> 10) & 0x1Fu, man = h.bits & 0x3FFu;
    if (exp == 0x1F) return __uint_as_float(sign | 0x7F800000u | (man << 13));   // inf, nan
    if (exp == 0) {
        if (man == 0) return __uint_as_float(sign);
        // Subnormal: normalise the mantissa.
        int e = -1;
        do {
            ++e;
            man <<= 1;
        } while ((man & 0x400u) == 0);
        return __uint_as_float(sign | ((112u - e) << 23) | ((man & 0x3FFu) << 13));
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// float -> half, round to nearest even (integer arithmetic on the bits).
inline __half __float2half_rn(float f) {
    const uint32_t u = __float_as_uint(f), sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return __half{static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu))};  // nan
    const int exp = static_cast<int>(a >> 23) - 127;
    if (exp > 15) return __half{static_cast<uint16_t>(sign | 0x7C00u)};                                 // inf
    uint32_t man = (a & 0x7FFFFFu) | (a >= 0x00800000u ? 0x800000u : 0u);  // with the hidden bit
    // Bits to drop: 13 for a normal half, more below 2^-14 (half subnormals).
    const int shift = exp >= -14 ? 13 : 13 + (-14 - exp);
    if (shift > 24 + 1) return __half{static_cast<uint16_t>(sign)};
    uint32_t kept = man >> shift;
    const uint32_t rest = man & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (kept & 1u))) ++kept;
    uint32_t out;
    if (exp >= -14) out = (static_cast<uint32_t>(exp + 15) << 10) + (kept - 0x400u);  // carries into the exponent
    else out = kept;  // may carry into the smallest normal
    return __half{static_cast<uint16_t>(sign | out)};
}

inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float(static_cast<uint32_t>(h.bits) << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    const uint32_t u = __float_as_uint(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
    const uint32_t rest = u & 0xFFFFu, kept = u >> 16;
    const uint32_t up = rest > 0x8000u || (rest == 0x8000u && (kept & 1u));
    return __nv_bfloat16{static_cast<uint16_t>(kept + up)};
}

// ---------------------------------------------------------------------------------------
// The launcher's macros (nca_cuda.cu defines the nvcc versions when these are absent).

#define NCA_LAUNCH(kernel, grid, block, shared, stream, ...) \
    cuda_emu::launch(#kernel, kernel, grid, block, shared, stream, __VA_ARGS__)
#define NCA_DYNAMIC_SHARED(name) unsigned char* name = cuda_emu::dynamic_shared()
