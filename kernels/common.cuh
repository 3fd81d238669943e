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

// What a vector access or atomic needs of its address (a misaligned one faults on a GPU): nothing
// here; the host emulation (scripts/kernel-emu) checks it.
#ifndef GPTK_EXPECT_ALIGNED
#define GPTK_EXPECT_ALIGNED(p, bytes)
#endif

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
        GPTK_EXPECT_ALIGNED(p, BYTES_PER_VECTOR);
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
        GPTK_EXPECT_ALIGNED(p, BYTES_PER_VECTOR);
        *reinterpret_cast<int4*>(p) = raw;
    }
}

// out[i..i+VN] = a + b, added in f32 and rounded once (the residual add; layernorm.cu fuses it).
template <typename T, int VN>
__device__ __forceinline__ void residual_span(T* out, const T* a, const T* b, long long i) {
    float x[VN], y[VN];
    load_vec<T, VN>(a + i, x);
    load_vec<T, VN>(b + i, y);
#pragma unroll
    for (int k = 0; k < VN; k++) x[k] += y[k];
    store_vec<T, VN>(out + i, x);
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

// Declares the one entry point `name_bf16` of a kernel that exists for bf16 storage only (the
// tensor-core kernels): a thin `extern "C"` wrapper whose body is CALL. PARAMS is the parameter
// list itself; BLOCK as above; MIN_BLOCKS blocks must fit one multiprocessor, which caps the
// registers ptxas may use. (scripts/kernel-emu defines its own.)
#ifndef GPTK_BF16_ENTRY_POINT
#define GPTK_BF16_ENTRY_POINT(name, BLOCK, MIN_BLOCKS, PARAMS, CALL) \
    extern "C" __global__ void __launch_bounds__(BLOCK, MIN_BLOCKS) name##_bf16 PARAMS { CALL; }
#endif

// A kernel's dynamically sized shared memory as `T* name`, 128-byte aligned. More than 48 KiB
// of it needs the host to raise the function's limit first.
#ifndef GPTK_DYNAMIC_SMEM
#define GPTK_DYNAMIC_SMEM(T, name)                                   \
    extern __shared__ __align__(128) unsigned char gptk_dynamic_smem[]; \
    T* name = reinterpret_cast<T*>(gptk_dynamic_smem)
#endif

// ---- tensor cores and asynchronous copies (sm_80 and newer) ----------------------------------
//
// mma.sync.m16n8k16 with bf16 operands and f32 accumulators; per lane, with g = lane / 4 and
// t = lane % 4 (PTX ISA, "Matrix fragments for mma.m16n8k16"):
// - A (16×16, row-major) in 4 registers of 2 bf16: a[0] = (row g, cols 2t, 2t+1),
//   a[1] = (row g+8, cols 2t, 2t+1), a[2] = (row g, cols 2t+8, 2t+9), a[3] = (row g+8, cols 2t+8, 2t+9);
// - B (16×8, k × n) in 2 registers: b[0] = (rows 2t, 2t+1, col g), b[1] = (rows 2t+8, 2t+9, col g);
// - C/D (16×8) in 4 floats: c[0], c[1] = (row g, cols 2t, 2t+1), c[2], c[3] = (row g+8, same cols).
// The lower 16 bits of a register hold the element with the smaller column (row for B) index.
// ldmatrix.x4 loads four 8×8 bf16 matrices from shared memory: lane l gives the address of row
// l % 8 of matrix l / 8 (16 contiguous bytes) and receives in register i the elements (row l / 4,
// cols 2(l % 4), 2(l % 4)+1) of matrix i, or with .trans (rows 2(l % 4), 2(l % 4)+1, col l / 4).
// The host build of the kernels (scripts/kernel-emu) emulates these five instructions.
#ifndef GPTK_HOST_EMULATION
// A shared-memory address as the instructions take it: 32 bits, in bytes, so that constant
// offsets fold into the instruction's immediate.
typedef uint32_t shared_addr;

__device__ __forceinline__ shared_addr shared_address(const void* p) {
    return static_cast<shared_addr>(__cvta_generic_to_shared(p));
}

// 16 bytes global → shared without passing L1; only the first `src_bytes` (16 or 0) are read,
// the rest of the 16 is zero-filled.
__device__ __forceinline__ void cp_async_16(shared_addr dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

// 4 bytes global → shared; zero-filled when src_bytes is 0.
__device__ __forceinline__ void cp_async_4(shared_addr dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

// Closes the group of copies issued by this thread since the last commit.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, shared_addr p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(p)
                 : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, shared_addr p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(p)
                 : "memory");
}

// 2^x by the special-function unit alone (relative error about 2⁻²², results below 2⁻¹²⁶
// flushed to 0): exp2f adds range checks that cost more than the exponential.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// d (16×8, f32) += a (16×16, bf16) · b (16×8, bf16).
__device__ __forceinline__ void mma_bf16_16x8x16(float* d, const uint32_t* a, const uint32_t* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// Two floats rounded to bf16 and packed into one register, `lo` in the lower 16 bits.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    const uint32_t l = __bfloat16_as_ushort(__float2bfloat16_rn(lo));
    const uint32_t h = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
    return l | (h << 16);
}

// dst[0] += a, dst[1] += b in global memory (dst 8-byte aligned): one vector atomic on sm_90 and
// later, two scalar ones before (and in the host emulation).
__device__ __forceinline__ void atomic_add_f32x2(float* dst, float a, float b) {
    GPTK_EXPECT_ALIGNED(dst, 8);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd(reinterpret_cast<float2*>(dst), make_float2(a, b));
#else
    atomicAdd(dst, a);
    atomicAdd(dst + 1, b);
#endif
}
