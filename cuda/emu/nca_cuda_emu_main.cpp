// Command-line driver of the CUDA launcher under the CPU emulator (cuda_emu.h), for the tests
// (tests/kernels/test_cuda_emulated.py; nca_cli/kernels/emulator.py builds and runs it).
//
//   nca_cuda_emu RUN IN OUT   run nca_cuda::run on the problem in IN, write the state to OUT
//   nca_cuda_emu LIMITS       launch small kernels with good and bad configurations, print
//                             one line "name: error string" per launch
//   nca_cuda_emu DIVERGENT_SYNC | DIVERGENT_SHUFFLE
//                             misuse a device would hang on: the emulator aborts
//   nca_cuda_emu SHARED_OVERFLOW
//                             a write one byte past the dynamic shared memory: ASan aborts
//
// IN: one text line of integers
//   dims channels hidden in kernel perception normalization storage batch nz ny nx oz oy ox
//   seed level threshold steps in_place band_planes
// then the packed float32 weights (nca_cuda::weight_count) and the state (channels last,
// raw storage). Prints the launch log (JSON) on stdout; exit code 1 with one line on stderr
// when the launcher reports an error.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "cuda_emu.h"
#include "nca_cuda.h"

namespace {

__global__ void fill_ids(int* out) {
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    if (out != nullptr) out[block * threads + t] = static_cast<int>(t);
}

__global__ void divergent_sync(int* out) {
    if (threadIdx.x == 5) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void divergent_shuffle(int* out) {
    int v = static_cast<int>(threadIdx.x);
    if (threadIdx.x != 3) v = __shfl_xor_sync(0xFFFFFFFFu, v, 1);
    out[threadIdx.x] = v;
}

__global__ void shared_overflow(int bytes) {
    NCA_DYNAMIC_SHARED(shared);
    if (threadIdx.x == 0) shared[bytes] = 1;
}

void report(const char* name) { printf("%s: %s\n", name, cudaGetErrorString(cudaGetLastError())); }

int limits() {
    const auto k = fill_ids;
    cudaStream_t s = nullptr;
    std::vector<int> out(2 * 1024, -1);
    NCA_LAUNCH(k, 2, 1024, 0, s, out.data());
    report("block_1024");
    for (int i = 0; i < 2 * 1024; ++i)
        if (out[i] != i % 1024) {
            printf("block_1024_ids: wrong id at %d\n", i);
            return 1;
        }
    NCA_LAUNCH(k, 1, 1025, 0, s, nullptr);
    report("block_1025");
    NCA_LAUNCH(k, 1, dim3(32, 32, 2), 0, s, nullptr);
    report("block_32x32x2");
    NCA_LAUNCH(k, 1, dim3(1, 1, 65), 0, s, nullptr);
    report("block_z_65");
    NCA_LAUNCH(k, 0, 32, 0, s, nullptr);
    report("grid_0");
    NCA_LAUNCH(k, dim3(1, 65536), 32, 0, s, nullptr);
    report("grid_y_65536");
    NCA_LAUNCH(k, 1, 32, 48 * 1024, s, nullptr);
    report("shared_48k");
    NCA_LAUNCH(k, 1, 32, 48 * 1024 + 1, s, nullptr);
    report("shared_48k_plus_1");
    printf("opt_in_100k: %s\n", cudaGetErrorString(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                                        100 * 1024)));
    NCA_LAUNCH(k, 1, 32, 100 * 1024, s, nullptr);
    report("shared_100k_opted_in");
    NCA_LAUNCH(k, 1, 32, 100 * 1024 + 1, s, nullptr);
    report("shared_100k_plus_1_opted_in");
    printf("opt_in_228k: %s\n", cudaGetErrorString(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                                        228 * 1024)));
    return 0;
}

template <class T>
bool read_exact(FILE* f, std::vector<T>& v) {
    return fread(v.data(), sizeof(T), v.size(), f) == v.size();
}

int run(const char* in_path, const char* out_path) {
    FILE* f = fopen(in_path, "rb");
    if (f == nullptr) {
        fprintf(stderr, "cannot open %s\n", in_path);
        return 2;
    }
    long long v[21];
    for (long long& x : v)
        if (fscanf(f, "%lld", &x) != 1) {
            fprintf(stderr, "%s: bad header\n", in_path);
            return 2;
        }
    fgetc(f);  // the newline after the header
    nca_cuda::Problem p{};
    p.dims = static_cast<int>(v[0]);
    p.channels = static_cast<int>(v[1]);
    p.hidden = static_cast<int>(v[2]);
    p.in_channels = static_cast<int>(v[3]);
    p.kernel = static_cast<int>(v[4]);
    p.perception = static_cast<int>(v[5]);
    p.normalization = static_cast<int>(v[6]);
    p.storage = static_cast<int>(v[7]);
    p.batch = v[8];
    for (int i = 0; i < 3; ++i) {
        p.size[i] = v[9 + i];
        p.origin[i] = v[12 + i];
    }
    p.seed = static_cast<uint64_t>(v[15]);
    p.level = static_cast<uint32_t>(v[16]);
    p.threshold = static_cast<uint32_t>(v[17]);
    const int64_t steps = v[18];
    p.in_place = static_cast<int>(v[19]);
    p.band_planes = v[20];
    if (!nca_cuda::supported(p)) {
        fprintf(stderr, "no compiled CUDA kernel for this model shape and dtype\n");
        return 1;
    }
    const size_t elem = p.storage == nca_cuda::kFloat32 ? 4 : 2;
    const size_t bytes = static_cast<size_t>(p.batch * p.size[0] * p.size[1] * p.size[2] * p.channels) * elem;
    std::vector<float> weights(static_cast<size_t>(nca_cuda::weight_count(p)));
    // Exactly sized "device" buffers, so ASan catches any access beyond them.
    std::vector<unsigned char> a(bytes), b(p.in_place ? 0 : bytes), workspace(nca_cuda::workspace_bytes(p));
    if (!read_exact(f, weights) || !read_exact(f, a)) {
        fprintf(stderr, "%s: short file\n", in_path);
        return 2;
    }
    fclose(f);
    void* result = nullptr;
    const nca_cuda::Status st = nca_cuda::run(p, a.data(), p.in_place ? nullptr : b.data(), weights.data(),
                                              workspace.empty() ? nullptr : workspace.data(), steps, nullptr, true,
                                              &result);
    if (st.error != cudaSuccess) {
        fprintf(stderr, "fused NCA kernel %s failed: %s\n", st.kernel ? st.kernel : "(none)",
                cudaGetErrorString(st.error));
        return 1;
    }
    FILE* o = fopen(out_path, "wb");
    if (o == nullptr || fwrite(result, 1, bytes, o) != bytes || fclose(o) != 0) {
        fprintf(stderr, "cannot write %s\n", out_path);
        return 2;
    }
    cuda_emu::write_launch_log(stdout);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 4 && strcmp(argv[1], "RUN") == 0) return run(argv[2], argv[3]);
    if (argc == 2 && strcmp(argv[1], "LIMITS") == 0) return limits();
    std::vector<int> out(64, 0);
    if (argc == 2 && strcmp(argv[1], "DIVERGENT_SYNC") == 0) {
        const auto k = divergent_sync;
        NCA_LAUNCH(k, 1, 64, 0, nullptr, out.data());
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "DIVERGENT_SHUFFLE") == 0) {
        const auto k = divergent_shuffle;
        NCA_LAUNCH(k, 1, 32, 0, nullptr, out.data());
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "SHARED_OVERFLOW") == 0) {
        const auto k = shared_overflow;
        NCA_LAUNCH(k, 1, 32, 64, nullptr, 64);
        return 0;
    }
    fprintf(stderr, "usage: %s RUN IN OUT | LIMITS | DIVERGENT_SYNC | DIVERGENT_SHUFFLE | SHARED_OVERFLOW\n", argv[0]);
    return 2;
}
