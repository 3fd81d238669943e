// wgmma.cuh: Hopper's warpgroup matrix instructions (sm_90a only), for flash_attention_sm90a.cu.
//
// wgmma.mma_async: a warpgroup (four consecutive warps, the first a multiple of four) multiplies
// A (64×16) by B (16×N) into a 64×N f32 accumulator held in registers, asynchronously: issue
// after wgmma_fence(), close the batch with wgmma_commit(), read the accumulators only after
// wgmma_wait<0>() (PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate").
// - Accumulator layout (64×N f32, N/2 floats per thread): warp w of the group owns rows
//   16w..16w+15; with g = lane / 4 and t = lane % 4, d[4j..4j+3] are (row g, cols 8j+2t, 8j+2t+1)
//   and (row g+8, the same cols): mma.m16n8's C layout, once per 8 columns.
// - A from registers (64×16 bf16, 4 registers): warp w's 16 rows in mma.m16n8k16's A layout, so
//   a score accumulator converted to bf16 is the A operand of the next product.
// - A or B from shared memory through a 64-bit matrix descriptor: start address, leading and
//   stride byte offsets (each >> 4) and the swizzle mode. Every tile here uses the 128-byte swizzle:
//   rows of 128 bytes (64 bf16), 8-row atoms of 1024 bytes at 1024-byte aligned addresses, the
//   16-byte chunk c of row r stored at chunk c ^ (r % 8). K-major (the k index runs along the
//   128-byte rows; Q and K for S = Q·Kᵀ): the stride byte offset steps 8 rows of M or N; a k-step
//   of 16 inside the 64-column row advances the start address by 32 bytes. MN-major (n along the
//   rows, k down them; V for O += P·V, with the transpose bit): the stride byte offset steps 8 rows
//   of k, the leading byte offset the next 64 columns of n; a k-step advances 16 rows. An A operand
//   from shared memory may be MN-major too (m along the rows: Kᵀ for dQᵀ = Kᵀ·dSᵀ), in the same
//   layout with m for n; an MN-major operand narrower than 64 (N = 32) reads the first half of each
//   128-byte row.
// shared memory written by the threads (cp.async included) reaches these instructions only after
// fence_proxy_async() and a barrier. The host build of the kernels (scripts/kernel-emu)
// emulates them with these layouts.
#pragma once

#include "common.cuh"

// The swizzle-mode field of a descriptor: 128-byte swizzle.
#define WGMMA_SWIZZLE_128B 1ull
// Bytes of one swizzled row (64 bf16) and of one 8-row atom.
#define WGMMA_ROW_BYTES 128
#define WGMMA_ATOM_BYTES 1024
#define WGMMA_BF16_BYTES 2

// This thread's warpgroup (threads 128g..128g+127), broadcast from lane 0 so that the compiler
// knows it is the same across the warp: a branch on it around wgmma is then not divergent, and
// ptxas does not serialize the wgmmas inside (its C7520, which tests/cuda_build.rs watches for).
__device__ __forceinline__ int warpgroup_index() {
    return __shfl_sync(FULL_MASK, static_cast<int>(threadIdx.x) / 128, 0);
}

// A matrix descriptor for a 128-byte-swizzled tile at shared address `start`.
__device__ __forceinline__ uint64_t wgmma_desc(shared_addr start, uint32_t leading_bytes, uint32_t stride_bytes) {
    return static_cast<uint64_t>((static_cast<uint32_t>(start) & 0x3FFFF) >> 4) |
           static_cast<uint64_t>((leading_bytes & 0x3FFFF) >> 4) << 16 |
           static_cast<uint64_t>((stride_bytes & 0x3FFFF) >> 4) << 32 | WGMMA_SWIZZLE_128B << 62;
}

// Byte offset of element (row, col) in a 128-byte-swizzled tile of `rows` rows and 64·k columns,
// stored as k blocks of 64 columns, each `rows` rows of 128 bytes.
__device__ __forceinline__ int swizzled_offset(int rows, int row, int col) {
    return (col >> 6) * rows * WGMMA_ROW_BYTES + row * WGMMA_ROW_BYTES +
           ((((col & 63) >> 3) ^ (row & 7)) << 4) + (col & 7) * WGMMA_BF16_BYTES;
}

#ifndef GPTK_HOST_EMULATION
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Makes this thread's generic-proxy writes to shared memory visible to the async proxy (wgmma).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving accesses of an accumulator register across an asynchronous
// matrix instruction's issue or wait.
__device__ __forceinline__ void wgmma_pin(float& x) { asm volatile("" : "+f"(x)::"memory"); }

// d (64×N) (+)= A (64×16, shared, K-major) · B (16×N, shared, K-major); `accumulate` 0 overwrites.
template <int N>
__device__ __forceinline__ void wgmma_ss(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate);
// d (64×N) (+)= A (64×16, registers) · B (16×N, shared, MN-major: the transpose bit set).
template <int N>
__device__ __forceinline__ void wgmma_rs_tb(float* d, const uint32_t* a, uint64_t desc_b, int accumulate);
// d (64×N) (+)= A (64×16, shared, MN-major) · B (16×N, shared, MN-major): both transpose bits set.
template <int N>
__device__ __forceinline__ void wgmma_ss_tt(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate);

// The specializations, one per width N: the accumulator operands "+f"(d[0..N/2)) and their
// places %0.. in the instruction's text (WGMMA_ACC##H, WGMMA_REGS##H with H = N/2), then the
// other operands numbered after them.
#define WGMMA_ACC8(o)                                                                                        \
    "+f"(d[o]), "+f"(d[o + 1]), "+f"(d[o + 2]), "+f"(d[o + 3]), "+f"(d[o + 4]), "+f"(d[o + 5]), "+f"(d[o + 6]), \
        "+f"(d[o + 7])
#define WGMMA_ACC16 WGMMA_ACC8(0), WGMMA_ACC8(8)
#define WGMMA_ACC32 WGMMA_ACC16, WGMMA_ACC8(16), WGMMA_ACC8(24)
#define WGMMA_ACC64 WGMMA_ACC32, WGMMA_ACC8(32), WGMMA_ACC8(40), WGMMA_ACC8(48), WGMMA_ACC8(56)
#define WGMMA_REGS16 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define WGMMA_REGS32 WGMMA_REGS16 ", %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WGMMA_REGS64 WGMMA_REGS32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47" \
                                  ", %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
// Both operands from shared memory; TRANS is the instruction's two transpose immediates (A, B).
#define WGMMA_SS(NAME, N, H, R0, R1, R2, TRANS)                                                             \
    template <>                                                                                             \
    __device__ __forceinline__ void NAME<N>(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate) {   \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #R2 ", 0;\n"                                     \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 {" WGMMA_REGS##H             \
                     " }, %" #R0 ", %" #R1 ", p, 1, 1, " TRANS ";\n}\n"                                       \
                     : WGMMA_ACC##H                                                                         \
                     : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                          \
    }
// R0.. are the numbers of the operands after the N/2 accumulators.
#define WGMMA_SPECIALIZE(N, H, R0, R1, R2, R3, R4, R5)                                                      \
    WGMMA_SS(wgmma_ss, N, H, R0, R1, R2, "0, 0")                                                            \
    WGMMA_SS(wgmma_ss_tt, N, H, R0, R1, R2, "1, 1")                                                         \
    template <>                                                                                             \
    __device__ __forceinline__ void wgmma_rs_tb<N>(float* d, const uint32_t* a, uint64_t desc_b,            \
                                                   int accumulate) {                                        \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #R5 ", 0;\n"                                     \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 {" WGMMA_REGS##H             \
                     " }, {%" #R0 ", %" #R1 ", %" #R2 ", %" #R3 "}, %" #R4 ", p, 1, 1, 1;\n}\n"               \
                     : WGMMA_ACC##H                                                                         \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));           \
    }
WGMMA_SPECIALIZE(32, 16, 16, 17, 18, 19, 20, 21)
WGMMA_SPECIALIZE(64, 32, 32, 33, 34, 35, 36, 37)
WGMMA_SPECIALIZE(128, 64, 64, 65, 66, 67, 68, 69)
#endif
