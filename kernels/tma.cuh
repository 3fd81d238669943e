// tma.cuh: Hopper's tensor memory accelerator and the mbarriers it signals (sm_90), for the
// warp-specialized attention forward of flash_attention_sm90a.cu.
//
// - A tensor map (CUtensorMap, 128 bytes) describes a tensor in global memory and a box of it;
//   the host encodes it (cuTensorMapEncodeTiled) and passes it as a `const __grid_constant__`
//   kernel parameter, whose address the copy takes.
// - tma_load_3d: one thread moves a whole box into shared memory (cp.async.bulk.tensor, tile
//   mode), elements outside the tensor zero-filled, rows stored one after another, with the
//   128-byte swizzle the same layout as wgmma.cuh's tiles (the destination 1024-byte aligned).
//   The copy writes through the async proxy, so wgmma reads it without a proxy fence, and
//   completes by counting its bytes off an mbarrier (complete_tx).
// - An mbarrier (8 bytes of shared memory): a phase completes when its count of arrivals has been
//   made and every byte announced by arrive_expect_tx has landed; a thread waits for the phase of
//   a given parity (0, 1, 0, ...) to complete, which also makes what the copies wrote visible to it.
// The host build of the kernels (scripts/kernel-emu) emulates all of these.
#pragma once

#include <cuda.h>

#include "common.cuh"

#ifndef GPTK_HOST_EMULATION
__device__ __forceinline__ void mbar_init(shared_addr bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialisations visible to the async proxy (the copies that complete on them).
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(shared_addr bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives and announces `bytes` more of transactions (copies) to the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(shared_addr bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(shared_addr bar, int parity) {
    uint32_t done;
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    return done != 0;
}
// Waits until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(shared_addr bar, int parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}
// One box of `map` at element coordinates (c0, c1, c2), innermost first, into shared memory at
// dst; its bytes complete on the mbarrier bar.
__device__ __forceinline__ void tma_load_3d(shared_addr dst, const CUtensorMap* map, int c0, int c1, int c2,
                                            shared_addr bar) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
        "[%5];\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
        : "memory");
}
#endif
