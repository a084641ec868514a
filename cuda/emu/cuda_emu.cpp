// The fiber scheduler of the CUDA emulator (see cuda_emu.h).
#include "cuda_emu.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <map>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace cuda_emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;

enum class State { kRunnable, kBarrier, kShuffle, kDone };

struct Fiber {
    ucontext_t ctx;
    void* stack = nullptr;
    dim3 tid;
    unsigned linear = 0;
    State state = State::kRunnable;
    uint32_t mask = 0;
    uint64_t bits = 0;
    int src = 0;
    const char* op = nullptr;
};

cudaError_t g_last_error = cudaSuccess;
std::map<const void*, size_t> g_opt_in;  // kernel -> opted-in dynamic shared bytes
std::vector<Fiber> g_fibers;
Fiber* g_current = nullptr;
ucontext_t g_scheduler;
const std::function<void()>* g_body = nullptr;
unsigned char* g_shared = nullptr;
const char* g_kernel = "";
const void* g_sched_stack_bottom = nullptr;
size_t g_sched_stack_size = 0;

struct LaunchRecord {
    long launches = 0;
    long blocks = 0;
    size_t max_shared = 0;
    unsigned max_threads = 0;
};
std::map<std::string, LaunchRecord> g_log;

[[noreturn]] void fail(const char* what) {
    const unsigned t = g_current ? g_current->linear : 0;
    fprintf(stderr, "cuda emulator: kernel %s, block (%u, %u, %u), thread %u: %s\n", g_kernel, blockIdx.x, blockIdx.y,
            blockIdx.z, t, what);
    fflush(stderr);
    abort();
}

void set_coordinates(const Fiber& f) { threadIdx = f.tid; }

// Switches from the scheduler into fiber f until it yields or ends.
void resume(Fiber& f) {
    g_current = &f;
    set_coordinates(f);
#if EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
#endif
    swapcontext(&g_scheduler, &f.ctx);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    g_current = nullptr;
}

// Switches from the current fiber back to the scheduler (exiting: the fiber never resumes).
__attribute__((noinline)) void yield(bool exiting) {
    Fiber& f = *g_current;
#if EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, g_sched_stack_bottom, g_sched_stack_size);
#endif
    swapcontext(&f.ctx, &g_scheduler);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    (void)exiting;
    set_coordinates(f);
}

void fiber_main() {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
    (*g_body)();
    g_current->state = State::kDone;
    yield(true);
    fail("a finished fiber was resumed");
}

void* stack_of(size_t i) {
    static std::vector<void*> stacks;
    while (stacks.size() <= i) {
        void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) fail("cannot allocate a fiber stack");
        stacks.push_back(p);
    }
#if EMU_ASAN
    ASAN_UNPOISON_MEMORY_REGION(stacks[i], kStackBytes);  // frames a fiber of an earlier block left
#endif
    return stacks[i];
}

// Completes the shuffle of warp w if all its lanes wait at one; returns whether it did.
bool complete_shuffle(size_t first, size_t lanes) {
    size_t waiting = 0;
    for (size_t l = 0; l < lanes; ++l) waiting += g_fibers[first + l].state == State::kShuffle;
    if (waiting == 0) return false;
    if (waiting != lanes) {
        for (size_t l = 0; l < lanes; ++l) {
            const State s = g_fibers[first + l].state;
            if (s == State::kDone || s == State::kBarrier) {
                g_current = &g_fibers[first + l];
                fail("a warp shuffle that this lane of the warp never joins (it ended or waits at __syncthreads)");
            }
        }
        return false;  // lanes still running towards the shuffle
    }
    const uint32_t full = lanes == 32 ? 0xFFFFFFFFu : (1u << lanes) - 1u;
    uint64_t values[32];
    for (size_t l = 0; l < lanes; ++l) {
        Fiber& f = g_fibers[first + l];
        g_current = &f;
        if (f.mask != full) fail("a shuffle whose mask is not the whole warp (only full warps are emulated)");
        if (f.op != g_fibers[first].op) fail("lanes of a warp wait at different shuffles");
        if (f.src < 0 || static_cast<size_t>(f.src) >= lanes) fail("a shuffle from a lane that does not exist");
        values[l] = f.bits;
    }
    g_current = nullptr;
    for (size_t l = 0; l < lanes; ++l) {
        Fiber& f = g_fibers[first + l];
        f.bits = values[f.src];
        f.state = State::kRunnable;
    }
    return true;
}

void run_block(size_t threads) {
    for (size_t i = 0; i < threads; ++i) {
        Fiber& f = g_fibers[i];
        f.stack = stack_of(i);
        f.linear = static_cast<unsigned>(i);
        f.tid = dim3(static_cast<unsigned>(i % blockDim.x), static_cast<unsigned>(i / blockDim.x % blockDim.y),
                     static_cast<unsigned>(i / (blockDim.x * blockDim.y)));
        f.state = State::kRunnable;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = kStackBytes;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
    }
    for (;;) {
        for (size_t i = 0; i < threads; ++i)
            if (g_fibers[i].state == State::kRunnable) resume(g_fibers[i]);
        bool released = false;
        for (size_t w = 0; w < threads; w += 32) released |= complete_shuffle(w, std::min<size_t>(32, threads - w));
        if (released) continue;
        size_t done = 0, barrier = 0;
        for (size_t i = 0; i < threads; ++i) {
            done += g_fibers[i].state == State::kDone;
            barrier += g_fibers[i].state == State::kBarrier;
        }
        if (done == threads) return;
        if (barrier == threads) {
            for (size_t i = 0; i < threads; ++i) g_fibers[i].state = State::kRunnable;
            continue;
        }
        for (size_t i = 0; i < threads; ++i)
            if (g_fibers[i].state == State::kBarrier) {
                g_current = &g_fibers[i];
                fail("__syncthreads that other threads of the block never reach (they ended or wait elsewhere)");
            }
        fail("no thread of the block can go on (deadlock)");
    }
}

bool within(dim3 d, const unsigned (&limit)[3]) {
    return d.x >= 1 && d.y >= 1 && d.z >= 1 && d.x <= limit[0] && d.y <= limit[1] && d.z <= limit[2];
}

}  // namespace

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
    if (bytes < 0 || static_cast<size_t>(bytes) > kMaxOptInSharedBytes) return cudaErrorInvalidValue;
    g_opt_in[kernel] = static_cast<size_t>(bytes);
    return cudaSuccess;
}

void run_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t shared,
              const std::function<void()>& body) {
    const size_t threads = static_cast<size_t>(block.x) * block.y * block.z;
    if (!within(grid, kMaxGridDim) || !within(block, kMaxBlockDim) || threads > kMaxThreadsPerBlock) {
        g_last_error = cudaErrorInvalidConfiguration;
        return;
    }
    const auto opt = g_opt_in.find(kernel);
    const size_t limit = opt == g_opt_in.end() ? kDefaultSharedBytes : std::max(kDefaultSharedBytes, opt->second);
    if (shared > limit) {
        g_last_error = cudaErrorInvalidValue;
        return;
    }
    LaunchRecord& rec = g_log[name];
    rec.launches += 1;
    rec.max_shared = std::max(rec.max_shared, shared);
    rec.max_threads = std::max(rec.max_threads, static_cast<unsigned>(threads));
    g_kernel = name;
    g_body = &body;
    gridDim = grid;
    blockDim = block;
    g_fibers.resize(threads);
    // A device runs blocks in no fixed order: CUDA_EMU_BLOCK_ORDER=reverse runs them last to
    // first, so that a block reading what a later block writes (or the other way) shows.
    const char* order = getenv("CUDA_EMU_BLOCK_ORDER");
    const bool reverse = order != nullptr && strcmp(order, "reverse") == 0;
    const uint64_t nblocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
    for (uint64_t i = 0; i < nblocks; ++i) {
        const uint64_t k = reverse ? nblocks - 1 - i : i;
        blockIdx = dim3(static_cast<unsigned>(k % grid.x), static_cast<unsigned>(k / grid.x % grid.y),
                        static_cast<unsigned>(k / (static_cast<uint64_t>(grid.x) * grid.y)));
        // Exactly the launch's bytes (at least one, so the pointer is valid; malloc aligns to
        // 16): ASan reports any access beyond them. Filled with a NaN pattern, as shared
        // memory holds garbage on a device.
        g_shared = static_cast<unsigned char*>(malloc(shared > 0 ? shared : 1));
        if (g_shared == nullptr) fail("cannot allocate the block's shared memory");
        memset(g_shared, 0xFF, shared > 0 ? shared : 1);
        run_block(threads);
        free(g_shared);
        g_shared = nullptr;
        rec.blocks += 1;
    }
    g_body = nullptr;
}

unsigned char* dynamic_shared() { return g_shared; }

void syncthreads() {
    if (g_current == nullptr) fail("__syncthreads outside a kernel");
    g_current->state = State::kBarrier;
    yield(false);
}

uint64_t shuffle(uint32_t mask, uint64_t bits, int src, const char* op) {
    if (g_current == nullptr) fail("a shuffle outside a kernel");
    Fiber& f = *g_current;
    f.state = State::kShuffle;
    f.mask = mask;
    f.bits = bits;
    f.src = src;
    f.op = op;
    yield(false);
    return f.bits;
}

void write_launch_log(FILE* out) {
    fprintf(out, "{");
    bool first = true;
    for (const auto& [name, rec] : g_log) {
        fprintf(out, "%s\"%s\": {\"launches\": %ld, \"blocks\": %ld, \"max_shared\": %zu, \"max_threads\": %u}",
                first ? "" : ", ", name.c_str(), rec.launches, rec.blocks, rec.max_shared, rec.max_threads);
        first = false;
    }
    fprintf(out, "}\n");
}

}  // namespace cuda_emu

const char* cudaGetErrorString(cudaError_t err) {
    switch (err) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unknown error";
}

cudaError_t cudaGetLastError() {
    const cudaError_t err = cuda_emu::g_last_error;
    cuda_emu::g_last_error = cudaSuccess;
    return err;
}

cudaError_t cudaPeekAtLastError() { return cuda_emu::g_last_error; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cuda_emu::g_last_error; }
cudaError_t cudaDeviceSynchronize() { return cuda_emu::g_last_error; }
