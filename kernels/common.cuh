// common.cuh: what every gptk kernel shares.
//
// - Storage types: every op exists for `float` (tight checks) and `bf16` (training); values are
//   widened to float on load and every sum runs in float (or double where a header says so).
// - 16-byte vector access: `load_vec<T, VN>` / `store_vec<T, VN>` move VN elements; VN is
//   16 / sizeof(T) on the fast path (8 bf16 or 4 floats, one 128-bit instruction) and 1 on the
//   scalar path. The host picks the path per launch: the fast one only when every pointer is
//   16-byte aligned and the lengths it steps over are multiples of VN (tensor offsets are
//   multiples of 64 elements, but a slice of one need not be).
// - Reductions: warp sums/maxima through shuffles, block sums through 32 floats of shared
//   memory. Each sums in a fixed order, so results do not depend on timing.
// - Stochastic rounding of float to bf16 from a counter-based hash, so the random bits of an
//   element depend only on (seed, index) and an update is reproducible.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu
#define BYTES_PER_VECTOR 16

// ---- conversions -------------------------------------------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }

// Elements of T in one 16-byte vector.
template <typename T> struct Vec {
    static constexpr int N = BYTES_PER_VECTOR / sizeof(T);
};

// ---- vector loads and stores -------------------------------------------------------------------

// Loads VN elements at p (16-byte aligned when VN > 1) widened to float.
template <typename T, int VN>
__device__ __forceinline__ void load_vec(const T* p, float* out) {
    if constexpr (VN == 1) {
        out[0] = to_float(p[0]);
    } else {
        static_assert(VN == Vec<T>::N, "vector loads move exactly 16 bytes");
        int4 raw = *reinterpret_cast<const int4*>(p);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int k = 0; k < VN; k++) out[k] = to_float(e[k]);
    }
}

// Stores VN floats at p (16-byte aligned when VN > 1), rounded to T to nearest.
template <typename T, int VN>
__device__ __forceinline__ void store_vec(T* p, const float* in) {
    if constexpr (VN == 1) {
        p[0] = from_float<T>(in[0]);
    } else {
        static_assert(VN == Vec<T>::N, "vector stores move exactly 16 bytes");
        int4 raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int k = 0; k < VN; k++) e[k] = from_float<T>(in[k]);
        *reinterpret_cast<int4*>(p) = raw;
    }
}

// ---- reductions --------------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) x += __shfl_xor_sync(FULL_MASK, x, offset);
    return x;
}

__device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) x += __shfl_xor_sync(FULL_MASK, x, offset);
    return x;
}

// Two independent sums at once, so their shuffle chains overlap.
__device__ __forceinline__ void warp_sum2(float& a, float& b) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) {
        a += __shfl_xor_sync(FULL_MASK, a, offset);
        b += __shfl_xor_sync(FULL_MASK, b, offset);
    }
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(FULL_MASK, x, offset));
    return x;
}

// Sum over the block, returned to every thread. `scratch` holds 32 values in shared memory;
// blockDim.x is a multiple of 32. Safe to call repeatedly with the same scratch.
template <typename F>
__device__ __forceinline__ F block_sum(F x, F* scratch) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    x = warp_sum(x);
    __syncthreads();  // the previous call's readers are done with scratch
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = lane < warps ? scratch[lane] : F(0);
    return warp_sum(x);
}

// Maximum over the block, returned to every thread (same contract as block_sum).
__device__ __forceinline__ float block_max(float x, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = lane < warps ? scratch[lane] : -INFINITY;
    return warp_max(x);
}

// ---- stochastic rounding -----------------------------------------------------------------------

// MurmurHash3's 32-bit finalizer: a bijective mix with full avalanche.
__device__ __forceinline__ uint32_t mix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

// 32 random bits for element `i` of an update seeded with `seed`.
__device__ __forceinline__ uint32_t random_bits(unsigned long long seed, unsigned long long i) {
    uint32_t h = mix32(static_cast<uint32_t>(i) ^ 0x9e3779b9u);
    h = mix32(h ^ static_cast<uint32_t>(i >> 32) ^ static_cast<uint32_t>(seed >> 32));
    return mix32(h ^ static_cast<uint32_t>(seed));
}

// Rounds x to one of its two neighbouring bf16 values with probability proportional to
// closeness (unbiased in expectation): add 16 random bits below the kept mantissa, truncate.
// Infinities and NaN round to nearest.
__device__ __forceinline__ bf16 round_bf16_stochastic(float x, uint32_t random) {
    uint32_t bits = __float_as_uint(x);
    if ((bits & 0x7f800000u) == 0x7f800000u) return __float2bfloat16_rn(x);
    bits = (bits + (random & 0xffffu)) & 0xffff0000u;
    return __ushort_as_bfloat16(static_cast<unsigned short>(bits >> 16));
}

// ---- indexing ----------------------------------------------------------------------------------

__device__ __forceinline__ long long global_thread() {
    return static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
}

// Index of this thread's warp in the grid, and its lane.
__device__ __forceinline__ long long global_warp() { return global_thread() / WARP_SIZE; }
__device__ __forceinline__ int lane_id() { return threadIdx.x % WARP_SIZE; }

// Declares the entry points `name_f32` and `name_bf16`, each a thin `extern "C"` wrapper (so
// the host finds it by name) around the template `name<T>`. PARAMS is a macro taking the storage
// type and giving the parameter list; ARGS forwards the parameters; BLOCK is the block size the
// host launches with, so that ptxas budgets registers for it.
// (A host build of the kernels, scripts/kernel-emu, defines its own.)
#ifndef GPTK_ENTRY_POINTS
#define GPTK_ENTRY_POINTS(name, BLOCK, PARAMS, ARGS)                                        \
    extern "C" __global__ void __launch_bounds__(BLOCK) name##_f32 PARAMS(float) { name<float> ARGS; } \
    extern "C" __global__ void __launch_bounds__(BLOCK) name##_bf16 PARAMS(bf16) { name<bf16> ARGS; }
#endif
