// emu.h: builds the kernels of kernels/*.cu as ordinary C++ for the CPU, so that their logic
// (indexing, vector paths, warp and block reductions, online softmax, stochastic rounding) can be
// tested on a machine without a GPU. Included before the kernel sources by check_kernels.py.
//
// Execution model: a launch runs its blocks one after another; each block runs blockDim.x OS
// threads at once, one per CUDA thread, so that __syncthreads and warp shuffles behave as on a
// GPU: shuffles exchange through a per-warp buffer between two warp barriers, __syncthreads is a
// block barrier, and a thread that returns leaves both barriers (arrive_and_drop), as an exited
// CUDA thread stops counting. Shared memory is what `static` gives a function-local array: one
// copy for the block running. Nothing here models timing, the memory model beyond these
// barriers, or the hardware's float rounding modes beyond IEEE single precision.
#pragma once

#include <cuda_bf16.h>
#include <vector_types.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#undef __global__
#undef __device__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(n)

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

using std::max;
using std::min;

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline unsigned int __float_as_uint(float x) {
    unsigned int u;
    std::memcpy(&u, &x, sizeof u);
    return u;
}

namespace emu {

constexpr int kWarp = 32;

struct Warp {
    explicit Warp(int lanes) : barrier(lanes) {}
    std::barrier<> barrier;
    double slots[kWarp];
};

struct Block {
    explicit Block(int threads) : barrier(threads) {}
    std::barrier<> barrier;
};

inline thread_local Warp* current_warp = nullptr;
inline thread_local Block* current_block = nullptr;

// Leaves the barriers when a CUDA thread ends, however it ends.
struct Exit {
    ~Exit() {
        current_warp->barrier.arrive_and_drop();
        current_block->barrier.arrive_and_drop();
    }
};

template <typename F>
inline F exchange(F v, int lane) {
    Warp* w = current_warp;
    const int me = threadIdx.x % kWarp;
    w->slots[me] = static_cast<double>(v);
    w->barrier.arrive_and_wait();
    F r = static_cast<F>(w->slots[lane]);
    w->barrier.arrive_and_wait();
    return r;
}

inline dim3 config_grid{1, 1, 1};
inline dim3 config_block{1, 1, 1};

// Runs `kernel` over the configured grid.
inline void run(const std::function<void()>& kernel) {
    gridDim = config_grid;
    blockDim = config_block;
    const int threads = static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
    for (unsigned bz = 0; bz < gridDim.z; bz++)
        for (unsigned by = 0; by < gridDim.y; by++)
            for (unsigned bx = 0; bx < gridDim.x; bx++) {
                Block block(threads);
                std::vector<std::unique_ptr<Warp>> warps;
                for (int w = 0; w < (threads + kWarp - 1) / kWarp; w++)
                    warps.push_back(std::make_unique<Warp>(std::min(kWarp, threads - w * kWarp)));
                std::vector<std::thread> pool;
                for (int t = 0; t < threads; t++) {
                    pool.emplace_back([&, t] {
                        blockIdx = dim3(bx, by, bz);
                        threadIdx = dim3(t, 0, 0);
                        current_warp = warps[t / kWarp].get();
                        current_block = &block;
                        Exit exit;
                        kernel();
                    });
                }
                for (auto& th : pool) th.join();
            }
}

}  // namespace emu

inline float __shfl_xor_sync(unsigned, float v, int offset) {
    return emu::exchange(v, (threadIdx.x % emu::kWarp) ^ offset);
}
inline double __shfl_xor_sync(unsigned, double v, int offset) {
    return emu::exchange(v, (threadIdx.x % emu::kWarp) ^ offset);
}
inline void __syncthreads() { emu::current_block->barrier.arrive_and_wait(); }

extern "C" void emu_config(unsigned gx, unsigned gy, unsigned bx) {
    emu::config_grid = dim3(gx, gy, 1);
    emu::config_block = dim3(bx, 1, 1);
}

// Each entry point runs its template over the configured grid.
#define GPTK_ENTRY_POINTS(name, BLOCK, PARAMS, ARGS)                           \
    extern "C" void name##_f32 PARAMS(float) { emu::run([=] { name<float> ARGS; }); } \
    extern "C" void name##_bf16 PARAMS(bf16) { emu::run([=] { name<bf16> ARGS; }); }
