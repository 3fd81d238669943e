// flash_common.cuh: what the flash-attention kernels of both instruction sets share
// (flash_attention.cu on mma.sync, flash_attention_sm90a.cu on wgmma): which rows of which
// (batch, head) a block owns, and where that head's rows are in the tensors of the contract
// (qkv and dqkv (B,T,3C) as [q|k|v], out and dout (B,T,C), lse and delta (B,NH,T)).
#pragma once

#include "common.cuh"

// A block of a flash kernel owns `rows` consecutive rows (queries or keys) of one (b, h): its
// grid is ⌈T/rows⌉·B·NH blocks, the tile fastest.
struct FlashHead {
    int tile;           // this block's tile of rows within its head, in launch order
    int tiles;          // tiles per head, ⌈T/rows⌉
    int bh;             // b·NH + h: the head's row of lse and delta
    int C;              // NH·HS
    long long stride;   // between rows of qkv and dqkv: 3C
    long long head;     // the head's first element in qkv and dqkv (its q columns)
    long long head_c;   // the head's first element in out and dout
    const bf16* q;      // the head's rows of q, k and v in qkv (stride apart)
    const bf16* k;
    const bf16* v;

    // The first row of a block that owns queries: causal grids start from the last tile, whose
    // rows see the most keys.
    __device__ __forceinline__ int first_query(int rows, int causal) const {
        return (causal ? tiles - 1 - tile : tile) * rows;
    }
};

template <int HS>
__device__ __forceinline__ FlashHead flash_head(const bf16* qkv, int rows, int seq, int NH) {
    FlashHead f;
    f.tiles = (seq + rows - 1) / rows;
    f.tile = static_cast<int>(blockIdx.x % f.tiles);
    f.bh = static_cast<int>(blockIdx.x / f.tiles);
    const int b = f.bh / NH, h = f.bh % NH;
    f.C = NH * HS;
    f.stride = 3LL * f.C;
    f.head = static_cast<long long>(b) * seq * f.stride + static_cast<long long>(h) * HS;
    f.head_c = static_cast<long long>(b) * seq * f.C + static_cast<long long>(h) * HS;
    f.q = qkv + f.head;
    f.k = f.q + f.C;
    f.v = f.q + 2 * f.C;
    return f;
}
