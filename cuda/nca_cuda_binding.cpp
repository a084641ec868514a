// Python binding of the CUDA launcher (nca_cuda.h); built only when torch has CUDA.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "nca_cuda.h"

namespace {

// NCA_CUDA_SYNC=1: synchronise after every kernel, so that a fault inside a kernel is reported
// with that kernel's name instead of at a later, unrelated call. NCA_CUDA_STEP=in_place or
// double: that step whatever the state (same result); unset, the launcher's choice
// (nca_cuda::in_place_by_default).
bool env_flag(const char* name) {
    const char* v = std::getenv(name);
    return v != nullptr && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
}

int storage_code(const torch::Tensor& t) {
    switch (t.scalar_type()) {
        case torch::kFloat32: return nca_cuda::kFloat32;
        case torch::kFloat16: return nca_cuda::kFloat16;
        case torch::kBFloat16: return nca_cuda::kBFloat16;
        default: TORCH_CHECK(false, "state must be float32, float16 or bfloat16, got ", t.scalar_type());
    }
    return -1;
}

nca_cuda::Problem problem(const torch::Tensor& state, int64_t dims, int64_t channels, int64_t hidden, int64_t in,
                          int64_t kernel, int64_t perception, int64_t normalization, int64_t seed, int64_t level,
                          const std::vector<int64_t>& origin, int64_t threshold) {
    TORCH_CHECK(state.dim() == dims + 2 && state.size(-1) == channels, "state must be [B, *spatial, C]");
    TORCH_CHECK(static_cast<int64_t>(origin.size()) == dims, "origin needs one entry per spatial axis");
    nca_cuda::Problem p{};
    p.dims = static_cast<int>(dims);
    p.channels = static_cast<int>(channels);
    p.hidden = static_cast<int>(hidden);
    p.in_channels = static_cast<int>(in);
    p.kernel = static_cast<int>(kernel);
    p.perception = static_cast<int>(perception);
    p.normalization = static_cast<int>(normalization);
    p.storage = storage_code(state);
    p.batch = state.size(0);
    p.size[0] = dims == 3 ? state.size(1) : 1;
    p.size[1] = state.size(dims == 3 ? 2 : 1);
    p.size[2] = state.size(dims == 3 ? 3 : 2);
    p.origin[0] = dims == 3 ? origin[0] : 0;
    p.origin[1] = origin[dims - 2];
    p.origin[2] = origin[dims - 1];
    p.seed = static_cast<uint64_t>(seed);
    p.level = static_cast<uint32_t>(level);
    p.threshold = static_cast<uint32_t>(threshold);
    return p;
}

bool has(int64_t dims, int64_t channels, int64_t hidden, int64_t in, int64_t kernel, int64_t perception,
         int64_t normalization, int64_t storage) {
    nca_cuda::Problem p{};
    p.dims = static_cast<int>(dims);
    p.channels = static_cast<int>(channels);
    p.hidden = static_cast<int>(hidden);
    p.in_channels = static_cast<int>(in);
    p.kernel = static_cast<int>(kernel);
    p.perception = static_cast<int>(perception);
    p.normalization = static_cast<int>(normalization);
    p.storage = static_cast<int>(storage);
    return nca_cuda::supported(p);
}

// Runs the steps (in place, or double buffered) and leaves the result in `state`; returns `state`.
torch::Tensor run(torch::Tensor state, torch::Tensor weights, int64_t dims, int64_t channels, int64_t hidden,
                  int64_t in, int64_t kernel, int64_t perception, int64_t normalization, int64_t steps, int64_t seed,
                  int64_t level, std::vector<int64_t> origin, int64_t threshold) {
    TORCH_CHECK(state.is_cuda() && weights.is_cuda(), "state and weights must be CUDA tensors");
    TORCH_CHECK(state.device() == weights.device(), "state and weights must be on the same device");
    TORCH_CHECK(state.is_contiguous(), "state must be contiguous (channels last)");
    TORCH_CHECK(weights.scalar_type() == torch::kFloat32 && weights.is_contiguous() && weights.dim() == 1,
                "weights must be a contiguous float32 vector");
    nca_cuda::Problem p =
        problem(state, dims, channels, hidden, in, kernel, perception, normalization, seed, level, origin, threshold);
    TORCH_CHECK(nca_cuda::supported(p), "no compiled CUDA kernel for this model shape and dtype");
    TORCH_CHECK(weights.numel() == nca_cuda::weight_count(p), "expected ", nca_cuda::weight_count(p),
                " packed weights, got ", weights.numel());
    if (state.numel() == 0 || steps <= 0) return state;
    const c10::cuda::CUDAGuard guard(state.device());
    const char* step = std::getenv("NCA_CUDA_STEP");
    const std::string choice = step ? step : "";
    TORCH_CHECK(choice.empty() || choice == "in_place" || choice == "double",
                "NCA_CUDA_STEP must be in_place or double, got ", choice);
    p.in_place = choice.empty() ? nca_cuda::in_place_by_default(p) : choice == "in_place";
    // The second state of the double-buffered step; in place, a tensor with no elements.
    torch::Tensor other = p.in_place ? torch::empty({0}, state.options()) : torch::empty_like(state);
    // BatchNorm scratch (per-block sums, alpha, beta) and the in-place step's side buffers.
    torch::Tensor workspace = torch::empty({static_cast<int64_t>(nca_cuda::workspace_bytes(p))},
                                           state.options().dtype(torch::kUInt8));
    void* result = nullptr;
    const bool sync = env_flag("NCA_CUDA_SYNC");
    const nca_cuda::Status st = nca_cuda::run(p, state.data_ptr(), p.in_place ? nullptr : other.data_ptr(),
                                              weights.data_ptr<float>(),
                                              workspace.numel() ? workspace.data_ptr() : nullptr, steps,
                                              c10::cuda::getCurrentCUDAStream(), sync, &result);
    TORCH_CHECK(st.error == cudaSuccess, "fused NCA kernel ", st.kernel ? st.kernel : "launcher", " failed: ",
                cudaGetErrorString(st.error),
                sync ? "" : " (a fault inside an earlier kernel shows at a later launch; NCA_CUDA_SYNC=1 names it)");
    if (result != state.data_ptr()) state.copy_(other);
    return state;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Fused NCA step on CUDA devices (in place or double buffered; NCA_CUDA_STEP chooses).";
    m.def("run", &run, "Run steps of the fused NCA step; the result is left in the state tensor.");
    m.def("has", &has, "Whether a model shape and storage dtype is compiled in.");
}
