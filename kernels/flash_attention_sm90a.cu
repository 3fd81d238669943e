// flash_attention_sm90a.cu: attention on Hopper's warpgroup matrix instructions (wgmma,
// wgmma.cuh), forward and both backwards. sm_90a code runs on compute capability 9.0 only,
// so build.rs compiles this file on its own into a second fatbin for that target alone, and the
// host loads it on such a device only, as an alternative to the mma.sync kernels of
// flash_attention.cu that it takes when asked to (`--attention-kernels wgmma`). The contract is
// theirs: qkv (B,T,3C) bf16 as [q|k|v], out (B,T,C) bf16, lse (B,NH,T) f32 in natural log, scale
// 1/√HS, dqkv (B,T,3C) overwritten; head sizes 64 and 128, any T, causal or not.
//
// Algorithm: FlashAttention-2's, as in flash_attention.cu, on wgmma instead of mma.sync. A block
// is two warpgroups; each owns 64 rows (the M of one wgmma) and the block streams the other side
// through shared memory, double-buffered by cp.async into 128-byte-swizzled tiles (wgmma.cuh).
// Every product is a run of wgmmas m64nNk16: both operands from shared memory where the rows
// are loaded tiles (S = Q·Kᵀ, dP = dO·Vᵀ and their transposes), A from registers where it is a
// score accumulator repacked to bf16 in place (the accumulator layout is the A layout: P, dS),
// B read transposed (MN-major) where the product runs along the tile's rows (V, K, dO, Q). The
// ldmatrix traffic of the mma.sync kernels is gone: the tensor cores read their operands
// themselves.
// - forward: 128 queries per block, key/value tiles of 128 (HS = 64) or 64 (HS = 128) keys;
//   per tile S = Q·Kᵀ, the online softmax on the accumulators, O += P·V, a warpgroup's softmax of
//   one tile running while its P·V of the tile before is on the tensor cores (the dK/dV kernels
//   likewise overlap a tile's Pᵀ and dSᵀ with the dV and dK products of the tile before, and the
//   dQ kernel at HS = 128 a tile's dS with the dQ product of the tile before).
// - backward, deterministic as flash_attention.cu's (delta first, by the simple kernel): dK/dV with
//   128 keys per block and query tiles of 64 (HS = 64) or 32 (HS = 128) with their dout, LSE and
//   delta: Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, then dV += Pᵀ·dO, dK += dSᵀ·Q; dQ with 128 queries per block
//   and key/value tiles of 64: S = Q·Kᵀ, dP = dO·Vᵀ, then dQ += dS·K. Seven products per tile
//   pair, every output element summed by one thread in a fixed order.
// - backward with atomic dQ (opt-in, as flash_attention.cu's): the dK/dV kernel also writes dSᵀ
//   to shared memory and adds dQᵀ = Kᵀ·dSᵀ into an f32 accumulator with atomics; no dQ kernel:
//   five products per tile pair.
// - causal: blocks stop at (or start from) the diagonal, warpgroups skip tiles wholly on the far
//   side of it, only tiles crossing it or T are masked. Rows at or past T are zero-filled by
//   cp.async, masked and never stored.
//
// - forward, warp-specialized (`--attention-kernels wgmma-tma`): the same rounds, but the block
//   is three warpgroups, a producer issuing every copy as TMA box copies (tma.cuh) and two
//   consumers; key/value tiles go through four stages with mbarriers instead of block barriers.
//
// Not here yet, FlashAttention-3's other steps (docs/attention.md): TMA in the backward, register
// reallocation (setmaxnreg: not needed while the consumers fit the launch's 168 registers),
// explicit ping-pong of the softmax of one warpgroup with the matrix work of the other.
//
// Resources, sm_90a (ptxas, nvcc 13.0; no spills), FLASH90_BLOCK = 256 threads per block; blocks
// per SM from 64K registers and 228 KB of shared memory (1 KB reserved per block); every kernel
// asks for 1 KB more than its tiles to align them to 1024 bytes. Where a second block fits without
// spilling (dQ at HS = 64, which therefore does not overlap) it is requested:
//   kernel         HS    tiles (rows × streamed)   regs   smem (bytes)   blocks/SM   warps/SM
//   forward        64    128 q × 128 k              204     99,328       1 (regs)    8
//   forward        128   128 q × 64 k               250    115,712       1 (regs)    8
//   dK/dV          64    128 k × 64 q               220     84,480       1 (regs)    8
//   dK/dV          128   128 k × 32 q               228    116,480       1 (regs)    8
//   dQ             64    128 q × 64 k               122     66,560       2 (regs)   16
//   dQ             128   128 q × 64 k               208    148,480       1 (regs)    8
//   dK/dV+dQ       64    128 k × 64 q               218    117,248       1 (regs)    8   (atomic dQ)
//   dK/dV+dQ       128   128 k × 32 q               241    132,864       1 (regs)    8   (atomic dQ)
//   forward, TMA   64    128 q × 128 k, 4 stages    168    148,608       1 (smem)   12   (384 threads)
//   forward, TMA   128   128 q × 64 k, 4 stages     168    164,992       1 (smem)   12   (384 threads)
// The TMA forward's 168 registers are the launch's cap (65,536 / 384); in its SASS the consumers
// use 152 (HS = 64) and 136 (HS = 128), the producer a few.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "flash_attention_sm90a.cu needs sm_90a: build.rs compiles it for that target only"
#endif

#include "flash_common.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

#define FLASH90_BLOCK 256
#define FLASH90_WARPGROUP 128
#define FLASH90_ROWS 128
#define FLASH90_KEYS_HS64 128
#define FLASH90_KEYS_HS128 64
#define FLASH90_DQ_KEYS 64
#define FLASH90_DKV_KEYS 128
#define FLASH90_DKV_ROWS_HS64 64
#define FLASH90_DKV_ROWS_HS128 32
#define FLASH90_LOG2E 1.4426950408889634f
#define FLASH90_LN2 0.6931471805599453f

template <int HS>
struct Flash90Tile {
    static_assert(HS % 64 == 0, "whole 128-byte rows of the swizzled tiles");
    static constexpr int KEYS = HS <= 64 ? FLASH90_KEYS_HS64 : FLASH90_KEYS_HS128;
    static constexpr int CHUNKS = HS / 8;  // 16-byte pieces of a row
    static constexpr int Q_BYTES = FLASH90_ROWS * HS * WGMMA_BF16_BYTES;
    static constexpr int KV_BYTES = KEYS * HS * WGMMA_BF16_BYTES;  // one key or value stage
};

// Copies ROWS rows of one head (row r at src + r·stride, HS contiguous bf16) into the swizzled
// tile at dst, asynchronously, all threads of the block taking part. Rows ≥ valid are zero-filled
// and not read (their source is redirected to row 0, which the caller guarantees is valid).
template <int HS, int ROWS>
__device__ __forceinline__ void flash90_load_tile(shared_addr dst, const bf16* src, long long stride, int valid) {
    constexpr int CHUNKS = Flash90Tile<HS>::CHUNKS;
    static_assert((ROWS * CHUNKS) % FLASH90_BLOCK == 0, "whole rounds of 16-byte copies");
#pragma unroll
    for (int it = 0; it < ROWS * CHUNKS / FLASH90_BLOCK; it++) {
        const int c = it * FLASH90_BLOCK + static_cast<int>(threadIdx.x);
        const int r = c / CHUNKS, k = c % CHUNKS;
        const bool in = r < valid;
        cp_async_16(dst + swizzled_offset(ROWS, r, k * 8), src + (in ? r : 0) * stride + k * 8, in ? 16 : 0);
    }
}

// ROWS consecutive floats (LSE or delta of a query tile) into shared memory; zeros from `valid` on.
template <int ROWS>
__device__ __forceinline__ void flash90_load_floats(shared_addr dst, const float* src, int valid) {
    for (int r = static_cast<int>(threadIdx.x); r < ROWS; r += FLASH90_BLOCK) {
        const bool in = r < valid;
        cp_async_4(dst + r * 4, src + (in ? r : 0), in ? 4 : 0);
    }
}

// A query tile of the dK/dV pass: BQ rows of queries and of output gradients from q0, with their
// LSE and delta.
template <int HS, int BQ>
__device__ __forceinline__ void flash90_load_queries(shared_addr aq, shared_addr ado, shared_addr alse,
                                                     shared_addr adelta, const bf16* q_rows, const bf16* do_rows,
                                                     const float* lse_rows, const float* delta_rows, int q0,
                                                     long long stride, int C, int seq) {
    flash90_load_tile<HS, BQ>(aq, q_rows + q0 * stride, stride, seq - q0);
    flash90_load_tile<HS, BQ>(ado, do_rows + static_cast<long long>(q0) * C, C, seq - q0);
    flash90_load_floats<BQ>(alse, lse_rows + q0, seq - q0);
    flash90_load_floats<BQ>(adelta, delta_rows + q0, seq - q0);
}

// The descriptor of a K-major operand: rows [row0, row0 + 64) (or the N rows of a B operand) of
// a swizzled tile of `rows` rows, k-step kk (head columns 16kk..16kk+15).
__device__ __forceinline__ uint64_t flash90_k_major(shared_addr tile, int rows, int row0, int kk) {
    return wgmma_desc(tile + ((kk >> 2) * rows + row0) * WGMMA_ROW_BYTES + (kk & 3) * 16 * WGMMA_BF16_BYTES,
                      16, WGMMA_ATOM_BYTES);
}

// The descriptor of an MN-major B operand: rows 16kk..16kk+15 of a swizzled tile of `rows` rows
// as k, all its head columns as n.
__device__ __forceinline__ uint64_t flash90_mn_major(shared_addr tile, int rows, int kk) {
    return wgmma_desc(tile + kk * 16 * WGMMA_ROW_BYTES, rows * WGMMA_ROW_BYTES, WGMMA_ATOM_BYTES);
}

// The A fragments (bf16) of k-step kk from a 64×N accumulator: its columns 16kk..16kk+15. The
// accumulator layout per 8 columns is the A layout's per 8 k, so this is a repacking in place.
__device__ __forceinline__ void flash90_acc_to_a(uint32_t* a, const float* acc, int kk) {
    const float* c0 = acc + 8 * kk;  // columns 16kk..16kk+7
    const float* c1 = c0 + 4;        // columns 16kk+8..16kk+15
    a[0] = pack_bf16x2(c0[0], c0[1]);
    a[1] = pack_bf16x2(c0[2], c0[3]);
    a[2] = pack_bf16x2(c1[0], c1[1]);
    a[3] = pack_bf16x2(c1[2], c1[3]);
}

template <int N>
__device__ __forceinline__ void flash90_pin(float* x) {
#pragma unroll
    for (int i = 0; i < N; i++) wgmma_pin(x[i]);
}

template <int N>
__device__ __forceinline__ void flash90_zero(float* x) {
#pragma unroll
    for (int i = 0; i < N; i++) x[i] = 0.0f;
}

// Stores this thread's two rows (row_lo and row_lo + 8) of a 64×(8·DT) accumulator as bf16 at
// dst + row·stride, row r times mul[r]; rows at or past `valid` are not written.
template <int DT>
__device__ __forceinline__ void flash90_store_rows(bf16* dst, long long stride, const float* acc, int row_lo, int valid,
                                                   const float (&mul)[2]) {
    const int t = lane_id() & 3;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = row_lo + 8 * r;
        if (row < valid) {
#pragma unroll
            for (int d = 0; d < DT; d++) {
                *reinterpret_cast<uint32_t*>(dst + static_cast<long long>(row) * stride + d * 8 + 2 * t) =
                    pack_bf16x2(acc[d * 4 + 2 * r] * mul[r], acc[d * 4 + 2 * r + 1] * mul[r]);
            }
        }
    }
}

// Writes this thread's rows (local keys row and row + 8) of a warpgroup's dSᵀ, held as a 64×BQ
// accumulator, as bf16 into the dSᵀ tiles at sds: BQ/32 tiles of FLASH90_DKV_KEYS swizzled 128-byte
// rows, query q in tile q / 32, column q % 32.
template <int BQ>
__device__ __forceinline__ void flash90_store_dst(unsigned char* sds, const float* acc, int row) {
    const int t = lane_id() & 3;
#pragma unroll
    for (int kk = 0; kk < BQ / 16; kk++) {
        uint32_t a[4];
        flash90_acc_to_a(a, acc, kk);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = row + 8 * (i & 1), q = kk * 16 + 8 * (i >> 1) + 2 * t;
            *reinterpret_cast<uint32_t*>(sds + (q / 32) * FLASH90_DKV_KEYS * WGMMA_ROW_BYTES +
                                         swizzled_offset(FLASH90_DKV_KEYS, r, q % 32)) = a[i];
        }
    }
}

// Adds scale times a 64×32 dQᵀ accumulator (this thread's head columns c_lo and c_lo + 8 of the
// part, queries q0 + its columns) into dq (row q at dq + q·C, head columns from 0) with atomics,
// queries at or past `seq` left out. Lanes g and g ^ 1 hold adjacent head columns of the same
// queries: one shuffle gives each two adjacent columns of one query, for one vector atomic.
__device__ __forceinline__ void flash90_add_dqt(float* dq, int C, const float* acc, int c_lo, int q0, int seq,
                                                float scale) {
    const int lane = lane_id(), t = lane & 3;
    const bool even = ((lane >> 2) & 1) == 0;
#pragma unroll
    for (int i = 0; i < 16; i += 2) {
        // acc[i], acc[i + 1]: head column c_lo + 8·((i % 4) / 2), queries 8·(i / 4) + 2t, +1.
        const float sent = __shfl_xor_sync(FULL_MASK, even ? acc[i + 1] : acc[i], 4);
        const int col = c_lo + 8 * ((i % 4) / 2) - (even ? 0 : 1);
        const int q = q0 + 8 * (i / 4) + 2 * t + (even ? 0 : 1);
        if (q < seq) {
            atomic_add_f32x2(dq + static_cast<long long>(q) * C + col, (even ? acc[i] : sent) * scale,
                             (even ? sent : acc[i + 1]) * scale);
        }
    }
}

// The swizzled tiles start on a 1024-byte boundary (the swizzle is on address bits): the
// dynamic shared memory rounded up, the host asking for one atom more than the tiles take.
__device__ __forceinline__ shared_addr flash90_base(const unsigned char* raw) {
    return (shared_address(raw) + WGMMA_ATOM_BYTES - 1) & ~static_cast<shared_addr>(WGMMA_ATOM_BYTES - 1);
}

// Issues the two score products of a backward pass, x = A_x·B_xᵀ and y = A_y·B_yᵀ, all K-major:
// A rows row0..row0+63 of the tiles ax, ay (`rows` rows each), B the N rows of the tiles bx, by;
// the first products overwrite x and y. S and dP (dQ kernel), Sᵀ and dPᵀ (dK/dV kernels).
template <int HS, int N>
__device__ __forceinline__ void flash90_score_pair(float* x, float* y, shared_addr ax, shared_addr ay, int rows,
                                                   int row0, shared_addr bx, shared_addr by) {
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) {
        wgmma_ss<N>(x, flash90_k_major(ax, rows, row0, kk), flash90_k_major(bx, N, 0, kk), kk > 0);
        wgmma_ss<N>(y, flash90_k_major(ay, rows, row0, kk), flash90_k_major(by, N, 0, kk), kk > 0);
    }
}

// Issues S = Q·Kᵀ for this warpgroup's 64 queries of the query tile aq (FLASH90_ROWS rows) and the
// BC keys of the key tile tk, both K-major; the first product overwrites s.
template <int HS, int BC>
__device__ __forceinline__ void flash90_scores(float* s, shared_addr aq, shared_addr tk, int group) {
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++)
        wgmma_ss<BC>(s, flash90_k_major(aq, FLASH90_ROWS, group * 64, kk), flash90_k_major(tk, BC, 0, kk), kk > 0);
}

// Issues O += P·V for a key tile: P (bf16 A fragments) from registers, the tile's values tv read
// transposed.
template <int HS, int BC>
__device__ __forceinline__ void flash90_pv(float* o, const uint32_t (*pa)[4], shared_addr tv) {
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++) wgmma_rs_tb<HS>(o, pa[kk], flash90_mn_major(tv, BC, kk), 1);
}

// The online softmax of a score tile (keys k0..k0+BC) in this thread's rows row_lo and row_lo + 8:
// keys past `seq` and (causal) after the query masked, the running maximum m and sum l (log2
// units, this lane's share of l) updated, s replaced by P = exp(S − max), alpha the factor the
// output summed so far must be rescaled by.
template <int BC>
__device__ __forceinline__ void flash90_softmax(float* s, float (&m)[2], float (&l)[2], float (&alpha)[2], int k0,
                                                int row_lo, int group_row0, int seq, int causal, float scale_log2) {
    constexpr int NT = BC / 8;  // 8-key column groups
    const int t = lane_id() & 3;
    if (k0 + BC > seq || (causal && k0 + BC - 1 > group_row0)) {
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int row = row_lo + 8 * (e >> 1);
                const int key = k0 + n * 8 + 2 * t + (e & 1);
                if (key >= seq || (causal && key > row)) s[n * 4 + e] = -INFINITY;
            }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < NT; n++) mx = fmaxf(mx, fmaxf(s[n * 4 + 2 * r], s[n * 4 + 2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 2));
        const float m_new = fmaxf(m[r], mx * scale_log2);
        // A row with no key yet keeps m = −∞; exponents then use 0 and give 0.
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        alpha[r] = fast_exp2(m[r] - m_use);
        m[r] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < NT; n++) {
#pragma unroll
            for (int e = 2 * r; e < 2 * r + 2; e++) {
                const float p = fast_exp2(fmaf(s[n * 4 + e], scale_log2, -m_use));
                s[n * 4 + e] = p;
                sum += p;
            }
        }
        l[r] = l[r] * alpha[r] + sum;
    }
}

// out (B,T,C), lse (B,NH,T) from qkv (B,T,3C). Block: FLASH90_ROWS queries of one (b, h), 64 per
// warpgroup. Grid: ⌈T/128⌉·B·NH, the longest causal rows first.
//
// A warpgroup's softmax runs while the tensor cores work (FlashAttention-3's intra-warpgroup
// overlap). Round j: wait for O += P_{j−2}·V_{j−2}, rescale O to the maximum of tile j − 1 and
// convert P_{j−1} to bf16; issue S_j = Q·K_jᵀ, then O += P_{j−1}·V_{j−1}; wait for S_j alone and
// run its softmax while the P·V product runs on, through the next round's barriers and copies.
// Keys are copied one tile ahead of values (round j brings V_j and K_{j+1}) and values have three
// stages, so that the copies of round j + 1 do not overwrite the V_{j−1} a product still reads.
template <int HS>
__device__ __forceinline__ void flash_forward_sm90(bf16* out, float* lse, const bf16* qkv, int B, int seq, int NH,
                                                   int causal, float scale) {
    using G = Flash90Tile<HS>;
    constexpr int BR = FLASH90_ROWS, BC = G::KEYS;
    constexpr int DT = HS / 8;  // 8-column groups of the output
    GPTK_DYNAMIC_SMEM(unsigned char, raw);
    const shared_addr aq = flash90_base(raw);     // [HS/64][BR][64] queries
    const shared_addr ak = aq + G::Q_BYTES;       // [2][HS/64][BC][64] keys
    const shared_addr av = ak + 2 * G::KV_BYTES;  // [3][HS/64][BC][64] values

    const FlashHead f = flash_head<HS>(qkv, BR, seq, NH);
    const int q0 = f.first_query(BR, causal), bh = f.bh, C = f.C;
    const long long stride = f.stride;
    const bf16 *q_rows = f.q, *k_rows = f.k, *v_rows = f.v;
    const int group = warpgroup_index();
    const int warp = (static_cast<int>(threadIdx.x) % FLASH90_WARPGROUP) / WARP_SIZE, lane = lane_id();
    const int t = lane & 3;
    const int group_row0 = q0 + group * 64;                // this warpgroup's first query
    const int row_lo = group_row0 + warp * 16 + (lane >> 2);  // this thread's rows: row_lo, row_lo + 8
    const int kv_end = causal ? min(seq, q0 + BR) : seq;
    const int kv_tiles = (kv_end + BC - 1) / BC;
    // Causal: a warpgroup stops at the last tile holding a key not after its last query.
    const int my_tiles = causal ? min(kv_tiles, (group_row0 + 63) / BC + 1) : kv_tiles;
    const float scale_log2 = scale * FLASH90_LOG2E;

    float o[HS / 2];
    flash90_zero<HS / 2>(o);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // log2 units; this lane's share
    float s[BC / 2], alpha[2];    // the scores, then P, of the latest tile; its rescaling of O
    uint32_t pa[BC / 16][4];      // P of the tile before, bf16: the A operand of its P·V

    flash90_load_tile<HS, BR>(aq, q_rows + q0 * stride, stride, seq - q0);
    flash90_load_tile<HS, BC>(ak, k_rows, stride, seq);
    cp_async_commit();
    for (int j = 0; j <= kv_tiles; j++) {
        if (j > 0) __syncthreads();  // every warpgroup is done with the stages refilled here
        if (j < kv_tiles) {
            flash90_load_tile<HS, BC>(av + (j % 3) * G::KV_BYTES, v_rows + j * BC * stride, stride, seq - j * BC);
        }
        if (j + 1 < kv_tiles) {
            const int next = (j + 1) * BC;
            flash90_load_tile<HS, BC>(ak + ((j + 1) & 1) * G::KV_BYTES, k_rows + next * stride, stride, seq - next);
        }
        cp_async_commit();
        cp_async_wait<1>();   // K_j and V_{j−1} have landed
        fence_proxy_async();  // the copies, written through the generic proxy, are read by wgmma
        __syncthreads();
        if (j > 0) {
            // The previous round's P·V (tile j − 2) done: O rescaled to tile j − 1's maximum,
            // P_{j−1} to bf16.
            wgmma_wait<0>();
            flash90_pin<HS / 2>(o);
            if (j <= my_tiles) {
#pragma unroll
                for (int d = 0; d < DT; d++) {
                    o[d * 4] *= alpha[0];
                    o[d * 4 + 1] *= alpha[0];
                    o[d * 4 + 2] *= alpha[1];
                    o[d * 4 + 3] *= alpha[1];
                }
#pragma unroll
                for (int kk = 0; kk < BC / 16; kk++) flash90_acc_to_a(pa[kk], s, kk);
            }
        }
        if (j == 0) {
            // S_0 and its softmax (every warpgroup has tile 0).
            wgmma_fence();
            flash90_scores<HS, BC>(s, aq, ak, group);
            wgmma_commit();
            wgmma_wait<0>();
            flash90_pin<BC / 2>(s);
            flash90_softmax<BC>(s, m, l, alpha, 0, row_lo, group_row0, seq, causal, scale_log2);
        } else if (j < my_tiles) {
            // S_j, then P_{j−1}·V_{j−1} (P from registers, V read transposed), each its own group;
            // the softmax of S_j once the first is done.
            wgmma_fence();
            flash90_scores<HS, BC>(s, aq, ak + (j & 1) * G::KV_BYTES, group);
            wgmma_commit();
            wgmma_fence();
            flash90_pv<HS, BC>(o, pa, av + ((j - 1) % 3) * G::KV_BYTES);
            wgmma_commit();
            wgmma_wait<1>();
            flash90_pin<BC / 2>(s);
            flash90_softmax<BC>(s, m, l, alpha, j * BC, row_lo, group_row0, seq, causal, scale_log2);
        } else if (j == my_tiles) {
            // This warpgroup's last P·V.
            wgmma_fence();
            flash90_pv<HS, BC>(o, pa, av + ((j - 1) % 3) * G::KV_BYTES);
            wgmma_commit();
        }
    }
    wgmma_wait<0>();
    flash90_pin<HS / 2>(o);

    // out = O / l, LSE = max + log(l) in natural log.
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float sum = l[r];
        sum += __shfl_xor_sync(FULL_MASK, sum, 1);
        sum += __shfl_xor_sync(FULL_MASK, sum, 2);
        inv[r] = sum > 0.0f ? 1.0f / sum : 0.0f;
        const int row = row_lo + 8 * r;
        if (t == 0 && row < seq) {
            lse[static_cast<long long>(bh) * seq + row] = sum > 0.0f ? m[r] * FLASH90_LN2 + logf(sum) : -INFINITY;
        }
    }
    flash90_store_rows<DT>(out + f.head_c, C, o, row_lo, seq, inv);
}

// ---- forward, warp-specialized, fed by TMA (FlashAttention-3's producer/consumer split) ---------
// A block is three warpgroups: a producer whose one thread issues every copy of the block as TMA
// box copies (tma.cuh), and two consumers of 64 queries each doing the products and the softmax
// as flash_forward_sm90 does. The key and value tiles go through FLASH90_TMA_STAGES stages, each
// with its mbarriers: keys full and values full (the copies' bytes landed), empty (both consumers
// done with the stage). So no block-wide barrier remains in the loop: each consumer runs at its
// own pace, and the copies of later tiles are in flight while it computes. No thread spends
// registers or issue slots on addresses: one instruction moves a 64 × 64 box. Rows at or past T
// lie outside the tensor map and are zero-filled by the copies. The rescaling and the epilogue
// repeat flash_forward_sm90's lines: moved into shared helpers, ptxas serialized the wgmmas of
// flash_forward_sm90 (its C7515).
#define FLASH90_WS_BLOCK 384
#define FLASH90_TMA_STAGES 4
#define FLASH90_TMA_BOX 64  // rows of one box copy (its columns: one 128-byte row of 64 bf16)

// The mbarriers after the tiles: queries full, then per stage keys full, values full, empty.
struct Flash90Barriers {
    shared_addr base;
    __device__ __forceinline__ shared_addr q_full() const { return base; }
    __device__ __forceinline__ shared_addr k_full(int s) const { return base + 8 * (1 + s); }
    __device__ __forceinline__ shared_addr v_full(int s) const { return base + 8 * (1 + FLASH90_TMA_STAGES + s); }
    __device__ __forceinline__ shared_addr empty(int s) const { return base + 8 * (1 + 2 * FLASH90_TMA_STAGES + s); }
};

// Copies ROWS rows of qkv from row `row0` of batch b, head columns from `col0`, into the swizzled
// tile at dst ([HS/64][ROWS][64], as flash90_load_tile lays it out), completing on bar.
template <int HS, int ROWS>
__device__ __forceinline__ void flash90_tma_tile(shared_addr dst, const CUtensorMap* map, int col0, int row0, int b,
                                                 shared_addr bar) {
    static_assert(ROWS % FLASH90_TMA_BOX == 0, "whole boxes");
#pragma unroll
    for (int cb = 0; cb < HS / 64; cb++)
#pragma unroll
        for (int rb = 0; rb < ROWS / FLASH90_TMA_BOX; rb++)
            tma_load_3d(dst + (cb * ROWS + rb * FLASH90_TMA_BOX) * WGMMA_ROW_BYTES, map, col0 + 64 * cb,
                        row0 + rb * FLASH90_TMA_BOX, b, bar);
}

// out (B,T,C), lse (B,NH,T) from qkv (B,T,3C), as flash_forward_sm90; `map` is qkv as a (B, T, 3C)
// tensor in boxes of 64 rows × 64 columns with the 128-byte swizzle. Grid: ⌈T/128⌉·B·NH, the
// longest causal rows first.
//
// A consumer's round j: wait for its O += P_{j−2}·V_{j−2}, release that tile's stage, rescale O
// and convert P_{j−1} to bf16; wait for K_j and V_{j−1}; issue S_j = Q·K_jᵀ, then
// O += P_{j−1}·V_{j−1}, and run the softmax of S_j while the second product runs on.
template <int HS>
__device__ __forceinline__ void flash_forward_tma_sm90(const CUtensorMap* map, bf16* out, float* lse,
                                                       const bf16* qkv, int B, int seq, int NH, int causal,
                                                       float scale) {
    using G = Flash90Tile<HS>;
    constexpr int BR = FLASH90_ROWS, BC = G::KEYS, S = FLASH90_TMA_STAGES;
    constexpr int DT = HS / 8;  // 8-column groups of the output
    GPTK_DYNAMIC_SMEM(unsigned char, raw);
    const shared_addr aq = flash90_base(raw);     // [HS/64][BR][64] queries
    const shared_addr ak = aq + G::Q_BYTES;       // [S][HS/64][BC][64] keys
    const shared_addr av = ak + S * G::KV_BYTES;  // [S][HS/64][BC][64] values
    const Flash90Barriers bars{av + S * G::KV_BYTES};

    const FlashHead f = flash_head<HS>(qkv, BR, seq, NH);
    const int q0 = f.first_query(BR, causal), bh = f.bh, C = f.C;
    const int kv_end = causal ? min(seq, q0 + BR) : seq;
    const int kv_tiles = (kv_end + BC - 1) / BC;
    const int group = warpgroup_index();

    if (threadIdx.x == 0) {
        mbar_init(bars.q_full(), 1);
        for (int s = 0; s < S; s++) {
            mbar_init(bars.k_full(s), 1);
            mbar_init(bars.v_full(s), 1);
            mbar_init(bars.empty(s), 2 * FLASH90_WARPGROUP);
        }
        mbar_init_fence();
    }
    __syncthreads();

    if (group == 0) {
        // The producer: queries once, then each key/value tile into its stage once both consumers
        // have released the tile that stage held.
        if (threadIdx.x == 0) {
            const int b = bh / NH, head = (bh % NH) * HS;
            mbar_arrive_expect_tx(bars.q_full(), G::Q_BYTES);
            flash90_tma_tile<HS, BR>(aq, map, head, q0, b, bars.q_full());
            for (int j = 0; j < kv_tiles; j++) {
                const int s = j % S;
                if (j >= S) mbar_wait(bars.empty(s), (j / S - 1) & 1);
                mbar_arrive_expect_tx(bars.k_full(s), G::KV_BYTES);
                flash90_tma_tile<HS, BC>(ak + s * G::KV_BYTES, map, C + head, j * BC, b, bars.k_full(s));
                mbar_arrive_expect_tx(bars.v_full(s), G::KV_BYTES);
                flash90_tma_tile<HS, BC>(av + s * G::KV_BYTES, map, 2 * C + head, j * BC, b, bars.v_full(s));
            }
        }
        return;
    }

    const int cg = group - 1;  // this consumer's half of the queries
    const int warp = (static_cast<int>(threadIdx.x) % FLASH90_WARPGROUP) / WARP_SIZE, lane = lane_id();
    const int t = lane & 3;
    const int group_row0 = q0 + cg * 64;
    const int row_lo = group_row0 + warp * 16 + (lane >> 2);  // this thread's rows: row_lo, row_lo + 8
    // Causal: a consumer stops at the last tile holding a key not after its last query. The tiles
    // it skips are the block's last (at most one), whose stages the producer never waits for.
    const int my_tiles = causal ? min(kv_tiles, (group_row0 + 63) / BC + 1) : kv_tiles;
    const float scale_log2 = scale * FLASH90_LOG2E;

    float o[HS / 2];
    flash90_zero<HS / 2>(o);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // log2 units; this lane's share
    float s[BC / 2], alpha[2];    // the scores, then P, of the latest tile; its rescaling of O
    uint32_t pa[BC / 16][4];      // P of the tile before, bf16: the A operand of its P·V

    mbar_wait(bars.q_full(), 0);
    for (int j = 0; j <= my_tiles; j++) {
        if (j > 0) {
            // P_{j−2}·V_{j−2} done: its stage is free as far as this consumer goes; O rescaled to
            // tile j − 1's maximum, P_{j−1} to bf16.
            wgmma_wait<0>();
            flash90_pin<HS / 2>(o);
            if (j >= 2) mbar_arrive(bars.empty((j - 2) % S));
#pragma unroll
            for (int d = 0; d < DT; d++) {
                o[d * 4] *= alpha[0];
                o[d * 4 + 1] *= alpha[0];
                o[d * 4 + 2] *= alpha[1];
                o[d * 4 + 3] *= alpha[1];
            }
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) flash90_acc_to_a(pa[kk], s, kk);
            mbar_wait(bars.v_full((j - 1) % S), ((j - 1) / S) & 1);
        }
        if (j < my_tiles) {
            mbar_wait(bars.k_full(j % S), (j / S) & 1);
            // S_j, then (from the second round) P_{j−1}·V_{j−1}, each its own group; the softmax of
            // S_j once the first is done.
            wgmma_fence();
            flash90_scores<HS, BC>(s, aq, ak + (j % S) * G::KV_BYTES, cg);
            wgmma_commit();
            if (j > 0) {
                wgmma_fence();
                flash90_pv<HS, BC>(o, pa, av + ((j - 1) % S) * G::KV_BYTES);
                wgmma_commit();
                wgmma_wait<1>();
            } else {
                wgmma_wait<0>();
            }
            flash90_pin<BC / 2>(s);
            flash90_softmax<BC>(s, m, l, alpha, j * BC, row_lo, group_row0, seq, causal, scale_log2);
        } else {
            // This consumer's last P·V.
            wgmma_fence();
            flash90_pv<HS, BC>(o, pa, av + ((j - 1) % S) * G::KV_BYTES);
            wgmma_commit();
        }
    }
    wgmma_wait<0>();
    flash90_pin<HS / 2>(o);

    // out = O / l, LSE = max + log(l) in natural log.
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float sum = l[r];
        sum += __shfl_xor_sync(FULL_MASK, sum, 1);
        sum += __shfl_xor_sync(FULL_MASK, sum, 2);
        inv[r] = sum > 0.0f ? 1.0f / sum : 0.0f;
        const int row = row_lo + 8 * r;
        if (t == 0 && row < seq) {
            lse[static_cast<long long>(bh) * seq + row] = sum > 0.0f ? m[r] * FLASH90_LN2 + logf(sum) : -INFINITY;
        }
    }
    flash90_store_rows<DT>(out + f.head_c, C, o, row_lo, seq, inv);
}

// ---- backward, deterministic, as flash_attention.cu's: delta = rowsum(dout ∘ out) first (the
// simple attention_backward_delta), then dK/dV and dQ in two kernels, every output element summed
// by one thread in a fixed order. P and dS are rounded to bf16 for their second product. -------

// dS = P ∘ (dP − delta) with P = exp(S·scale − LSE), in place of the accumulator S (s) of this
// thread's rows row_lo and row_lo + 8 and the keys from k0, dP in dp; LSE (log2 units) and delta
// of the two rows in registers; keys past `seq` and (causal) after the query give zero. The scale
// is applied to dQ at the end.
template <int BC>
__device__ __forceinline__ void flash90_dq_grads(float* s, const float* dp, const float (&lse2)[2],
                                                 const float (&dlt)[2], int k0, int row_lo, int group_row0, int seq,
                                                 int causal, float scale_log2) {
    constexpr int NT = BC / 8;  // 8-key column groups
    const int t = lane_id() & 3;
    const bool mask = k0 + BC > seq || (causal && k0 + BC - 1 > group_row0);
#pragma unroll
    for (int n = 0; n < NT; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float p = fast_exp2(fmaf(s[n * 4 + e], scale_log2, -lse2[e >> 1]));
            if (mask) {
                const int row = row_lo + 8 * (e >> 1), key = k0 + n * 8 + 2 * t + (e & 1);
                if (key >= seq || (causal && key > row)) p = 0.0f;
            }
            s[n * 4 + e] = p * (dp[n * 4 + e] - dlt[e >> 1]);
        }
    }
}

// Issues dQ += dS·K for a key tile: dS (bf16 A fragments) from registers, the tile's keys tk
// read transposed.
template <int HS, int BC>
__device__ __forceinline__ void flash90_dq_product(float* dq, const uint32_t (*da)[4], shared_addr tk) {
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++) wgmma_rs_tb<HS>(dq, da[kk], flash90_mn_major(tk, BC, kk), 1);
}

// The dQ third of dqkv (B,T,3C). Block: FLASH90_ROWS queries of one (b, h), 64 per warpgroup;
// key/value tiles of FLASH90_DQ_KEYS. Per tile and warpgroup: S = Q·Kᵀ and dP = dO·Vᵀ (HS/16
// wgmmas each, all operands in shared memory), dS = P ∘ (dP − delta), then dQ += dS·K (dS from
// registers, K read transposed). Grid: ⌈T/128⌉·B·NH, the longest causal rows first.
//
// At HS = 128 (one block per SM) the element-wise work runs beside the tensor cores, as in the
// dK/dV kernels: round j issues S and dP of tile j, then dQ += dS·K of tile j − 1, each its own
// group, computes tile j's dS after waiting for the first alone and waits for the second at the
// end of the round; K_{j−1} is still read in round j, hence three key stages (values two). At
// HS = 64 it does not: the extra registers would cost the second block per SM, whose warps fill
// the same gaps; there a round computes its own tile, and two stages of each suffice.
template <int HS>
__device__ __forceinline__ void flash_backward_dq_sm90(bf16* dqkv, const bf16* dout, const bf16* qkv,
                                                       const float* lse, const float* delta, int B, int seq, int NH,
                                                       int causal, float scale) {
    constexpr bool OVERLAP = HS > 64;
    constexpr int BR = FLASH90_ROWS, BC = FLASH90_DQ_KEYS, DT = HS / 8, K_STAGES = OVERLAP ? 3 : 2;
    constexpr int T_BYTES = BR * HS * WGMMA_BF16_BYTES, KV_BYTES = BC * HS * WGMMA_BF16_BYTES;
    GPTK_DYNAMIC_SMEM(unsigned char, raw);
    const shared_addr aq = flash90_base(raw);           // [HS/64][BR][64] queries
    const shared_addr ado = aq + T_BYTES;               // [HS/64][BR][64] output gradients
    const shared_addr ak = ado + T_BYTES;               // [K_STAGES][HS/64][BC][64] keys
    const shared_addr av = ak + K_STAGES * KV_BYTES;    // [2][HS/64][BC][64] values

    const FlashHead f = flash_head<HS>(qkv, BR, seq, NH);
    const int q0 = f.first_query(BR, causal), bh = f.bh, C = f.C;
    const long long stride = f.stride, head = f.head;
    const bf16 *q_rows = f.q, *k_rows = f.k, *v_rows = f.v, *do_rows = dout + f.head_c;
    const int group = warpgroup_index();
    const int warp = (static_cast<int>(threadIdx.x) % FLASH90_WARPGROUP) / WARP_SIZE, lane = lane_id();
    const int group_row0 = q0 + group * 64;
    const int row_lo = group_row0 + warp * 16 + (lane >> 2);  // this thread's rows: row_lo, row_lo + 8
    const int kv_end = causal ? min(seq, q0 + BR) : seq;
    const int kv_tiles = (kv_end + BC - 1) / BC;
    const float scale_log2 = scale * FLASH90_LOG2E;
    // Whether this warpgroup's rows see key tile j (causal: not wholly after its last row).
    auto sees = [&](int j) { return !causal || j * BC <= group_row0 + 63; };

    flash90_load_tile<HS, BR>(aq, q_rows + q0 * stride, stride, seq - q0);
    flash90_load_tile<HS, BR>(ado, do_rows + static_cast<long long>(q0) * C, C, seq - q0);
    flash90_load_tile<HS, BC>(ak, k_rows, stride, seq);
    flash90_load_tile<HS, BC>(av, v_rows, stride, seq);
    cp_async_commit();

    // LSE (log2 units) and delta of this thread's two rows.
    float lse2[2], dlt[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = row_lo + 8 * r;
        const long long at = static_cast<long long>(bh) * seq + row;
        lse2[r] = row < seq ? lse[at] * FLASH90_LOG2E : 0.0f;
        dlt[r] = row < seq ? delta[at] : 0.0f;
    }
    float dq[HS / 2];
    flash90_zero<HS / 2>(dq);
    float s[BC / 2], dp[BC / 2];  // S then dS, and dP, of the latest tile
    uint32_t da[BC / 16][4];      // dS as bf16: the A operand of dQ's product

    for (int j = 0; j < kv_tiles + (OVERLAP ? 1 : 0); j++) {
        if (j > 0) __syncthreads();  // every warpgroup is done with the stages refilled here
        if (j + 1 < kv_tiles) {
            const int next = (j + 1) * BC;
            flash90_load_tile<HS, BC>(ak + (j + 1) % K_STAGES * KV_BYTES, k_rows + next * stride, stride, seq - next);
            flash90_load_tile<HS, BC>(av + ((j + 1) & 1) * KV_BYTES, v_rows + next * stride, stride, seq - next);
        }
        cp_async_commit();
        cp_async_wait<1>();  // tile j has landed
        fence_proxy_async();
        __syncthreads();
        const bool now = j < kv_tiles && sees(j), before = OVERLAP && j > 0 && sees(j - 1);
        const shared_addr tk = ak + j % K_STAGES * KV_BYTES;
        if (before) {
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) flash90_acc_to_a(da[kk], s, kk);
        }
        if (now) {
            wgmma_fence();
            flash90_score_pair<HS, BC>(s, dp, aq, ado, BR, group * 64, tk, av + (j & 1) * KV_BYTES);
            wgmma_commit();
            if (before) {
                wgmma_fence();
                flash90_dq_product<HS, BC>(dq, da, ak + (j - 1) % K_STAGES * KV_BYTES);
                wgmma_commit();
                wgmma_wait<1>();
            } else {
                wgmma_wait<0>();
            }
            flash90_pin<BC / 2>(s);
            flash90_pin<BC / 2>(dp);
            flash90_dq_grads<BC>(s, dp, lse2, dlt, j * BC, row_lo, group_row0, seq, causal, scale_log2);
            if constexpr (!OVERLAP) {
#pragma unroll
                for (int kk = 0; kk < BC / 16; kk++) flash90_acc_to_a(da[kk], s, kk);
                flash90_pin<HS / 2>(dq);
                wgmma_fence();
                flash90_dq_product<HS, BC>(dq, da, tk);
                wgmma_commit();
            }
        } else if (before) {
            // The previous tile's product, this warpgroup's last.
            wgmma_fence();
            flash90_dq_product<HS, BC>(dq, da, ak + (j - 1) % K_STAGES * KV_BYTES);
            wgmma_commit();
        }
        wgmma_wait<0>();
        flash90_pin<HS / 2>(dq);
    }

    flash90_store_rows<DT>(dqkv + head, stride, dq, row_lo, seq, {scale, scale});
}

// Pᵀ = exp(Sᵀ·scale − LSE) and dSᵀ = Pᵀ ∘ (dPᵀ − delta) in place of the accumulators Sᵀ (st)
// and dPᵀ (dpt) of this thread's keys key_lo and key_lo + 8 and the query tile from q0, whose LSE
// and delta (natural log) are in shared memory; queries past `seq` and (causal) before the key
// give zero. The scale is applied to dK at the end.
template <int BQ>
__device__ __forceinline__ void flash90_dkv_grads(float* st, float* dpt, const float* tlse, const float* tdelta,
                                                  int q0, int key_lo, int group_key0, int seq, int causal,
                                                  float scale_log2) {
    constexpr int NT = BQ / 8;  // 8-query column groups
    const int t = lane_id() & 3;
    const bool mask = q0 + BQ > seq || (causal && q0 < group_key0 + 63);
#pragma unroll
    for (int n = 0; n < NT; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int col = n * 8 + 2 * t + (e & 1);
            float p = fast_exp2(fmaf(st[n * 4 + e], scale_log2, -tlse[col] * FLASH90_LOG2E));
            if (mask) {
                const int query = q0 + col, key = key_lo + 8 * (e >> 1);
                if (query >= seq || (causal && key > query)) p = 0.0f;
            }
            dpt[n * 4 + e] = p * (dpt[n * 4 + e] - tdelta[col]);
            st[n * 4 + e] = p;
        }
    }
}

// Issues dV += Pᵀ·dO and dK += dSᵀ·Q for a query tile: Pᵀ and dSᵀ (bf16 A fragments) from
// registers, the tile's dO (tdo) and Q (tq) read transposed.
template <int HS, int BQ>
__device__ __forceinline__ void flash90_dkv_products(float* dv, float* dk, const uint32_t (*pa)[4],
                                                     const uint32_t (*da)[4], shared_addr tdo, shared_addr tq) {
#pragma unroll
    for (int kk = 0; kk < BQ / 16; kk++) {
        wgmma_rs_tb<HS>(dv, pa[kk], flash90_mn_major(tdo, BQ, kk), 1);
        wgmma_rs_tb<HS>(dk, da[kk], flash90_mn_major(tq, BQ, kk), 1);
    }
}

// The dK and dV thirds of dqkv (B,T,3C). Block: FLASH90_DKV_KEYS keys of one (b, h), 64 per
// warpgroup; query tiles of DKV_ROWS (64 at HS = 64, 32 at HS = 128, for registers) with their
// dout, LSE and delta, in three stages. Per tile and warpgroup: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (all
// operands in shared memory), Pᵀ and dSᵀ as in the dQ kernel (the LSE and delta of a column read
// from shared memory), then dV += Pᵀ·dO and dK += dSᵀ·Q (Pᵀ and dSᵀ from registers, dO and Q
// read transposed). Grid: ⌈T/128⌉·B·NH; causal blocks start at the first query tile that sees
// their keys.
//
// The element-wise work runs while the tensor cores do: in round j a warpgroup issues Sᵀ and dPᵀ
// of tile j, then dV and dK of tile j − 1, waits for the first batch alone and computes tile j's
// Pᵀ and dSᵀ while the second runs; that one is waited for at the end of the round (not at the
// start of the next: a wait ptxas sees across the loop's back edge made it serialize the
// products, its C7515). Tile j − 1's dO and Q are still read in round j, after round j's copies
// have started: hence three stages.
//
// With DQ (the opt-in, non-deterministic variant, as flash_attention.cu's) the block also adds its
// keys' share of dQ, scale·dS·K, into dq_acc (B,T,C) f32 with atomics, and the dQ kernel is not
// run: five products per tile pair instead of seven. Each warpgroup writes its dSᵀ (bf16, its 64
// keys × the tile's queries) into a shared tile; after a barrier each warpgroup computes a
// 64×32 part of dQᵀ = Kᵀ·dSᵀ over all 128 keys, both operands MN-major from shared memory (Kᵀ
// from the key tile, m = head columns; dSᵀ with n = 32 queries, in the first half of its 128-byte
// rows): HS = 64 splits the 64 queries, HS = 128 the head columns. Each element gets one atomic
// add per key block, two adjacent head columns per vector atomic after one shuffle.
template <int HS, bool DQ>
__device__ __forceinline__ void flash_backward_dkv_sm90(bf16* dqkv, float* dq_acc, const bf16* dout, const bf16* qkv,
                                                        const float* lse, const float* delta, int B, int seq, int NH,
                                                        int causal, float scale) {
    constexpr int BK = FLASH90_DKV_KEYS, BQ = HS <= 64 ? FLASH90_DKV_ROWS_HS64 : FLASH90_DKV_ROWS_HS128;
    constexpr int DT = HS / 8;
    constexpr int K_BYTES = BK * HS * WGMMA_BF16_BYTES, Q_BYTES = BQ * HS * WGMMA_BF16_BYTES, F_BYTES = BQ * 4;
    // DQ: dSᵀ in BQ/32 tiles of BK rows × 32 queries (half of each 128-byte row used).
    constexpr int Q_PARTS = BQ / 32, DS_TILE = BK * WGMMA_ROW_BYTES, DS_BYTES = DQ ? Q_PARTS * DS_TILE : 0;
    static_assert(!DQ || Q_PARTS * (HS / 64) == 2, "one 64×32 part of dQᵀ per warpgroup");
    GPTK_DYNAMIC_SMEM(unsigned char, raw);
    const shared_addr ak = flash90_base(raw);       // [HS/64][BK][64] keys
    const shared_addr av = ak + K_BYTES;            // [HS/64][BK][64] values
    const shared_addr aq = av + K_BYTES;            // [3][HS/64][BQ][64] queries
    const shared_addr ado = aq + 3 * Q_BYTES;       // [3][HS/64][BQ][64] output gradients
    const shared_addr ads = ado + 3 * Q_BYTES;      // DQ: [Q_PARTS][BK][64] dSᵀ, 32 columns used
    const shared_addr alse = ads + DS_BYTES;        // [3][BQ] LSE
    const shared_addr adelta = alse + 3 * F_BYTES;  // [3][BQ] delta
    // The same LSE and delta through generic pointers, for ordinary loads.
    const float* slse = reinterpret_cast<const float*>(raw + (alse - shared_address(raw)));
    const float* sdelta = slse + 3 * BQ;

    const FlashHead f = flash_head<HS>(qkv, BK, seq, NH);
    const int k0 = f.tile * BK, C = f.C;  // causal: low keys, most work, first
    const long long stride = f.stride, head = f.head;
    const bf16 *q_rows = f.q, *k_rows = f.k, *v_rows = f.v, *do_rows = dout + f.head_c;
    const float *lse_rows = lse + static_cast<long long>(f.bh) * seq, *delta_rows = delta + static_cast<long long>(f.bh) * seq;
    const int group = warpgroup_index();
    const int warp = (static_cast<int>(threadIdx.x) % FLASH90_WARPGROUP) / WARP_SIZE, lane = lane_id();
    const int group_key0 = k0 + group * 64;
    const int key_lo = group_key0 + warp * 16 + (lane >> 2);  // this thread's keys: key_lo, key_lo + 8
    // The generic address of the dSᵀ tiles, for ordinary stores.
    unsigned char* sds = raw + (ads - shared_address(raw));
    // Causal: queries before k0 see none of the block's keys.
    const int q_start = causal ? k0 / BQ * BQ : 0;
    const int q_tiles = (seq - q_start + BQ - 1) / BQ;
    const float scale_log2 = scale * FLASH90_LOG2E;
    // Whether this warpgroup has anything to add from query tile j (causal: not where its keys
    // all follow the tile's queries).
    auto sees = [&](int j) { return !causal || q_start + j * BQ + BQ - 1 >= group_key0; };

    flash90_load_tile<HS, BK>(ak, k_rows + k0 * stride, stride, seq - k0);
    flash90_load_tile<HS, BK>(av, v_rows + k0 * stride, stride, seq - k0);
    flash90_load_queries<HS, BQ>(aq, ado, alse, adelta, q_rows, do_rows, lse_rows, delta_rows, q_start, stride, C, seq);
    cp_async_commit();

    float dk[HS / 2], dv[HS / 2];
    flash90_zero<HS / 2>(dk);
    flash90_zero<HS / 2>(dv);
    float st[BQ / 2], dpt[BQ / 2];              // Pᵀ and dSᵀ of the latest tile
    uint32_t pa[BQ / 16][4], da[BQ / 16][4];    // of the tile before, bf16: its products' A operands

    for (int j = 0; j <= q_tiles; j++) {
        const int q0 = q_start + j * BQ;
        if (j > 0) __syncthreads();  // every warpgroup is done with the stage refilled here
        if (j + 1 < q_tiles) {
            const int n = (j + 1) % 3;
            flash90_load_queries<HS, BQ>(aq + n * Q_BYTES, ado + n * Q_BYTES, alse + n * F_BYTES, adelta + n * F_BYTES,
                                         q_rows, do_rows, lse_rows, delta_rows, q0 + BQ, stride, C, seq);
        }
        cp_async_commit();
        cp_async_wait<1>();  // tile j has landed
        fence_proxy_async();
        __syncthreads();
        const bool now = j < q_tiles && sees(j), before = j > 0 && sees(j - 1);
        const shared_addr pq = aq + ((j + 2) % 3) * Q_BYTES, pdo = ado + ((j + 2) % 3) * Q_BYTES;  // tile j − 1
        if (before) {
            // The previous tile's dV and dK products are done: its Pᵀ and dSᵀ to bf16.
#pragma unroll
            for (int kk = 0; kk < BQ / 16; kk++) {
                flash90_acc_to_a(pa[kk], st, kk);
                flash90_acc_to_a(da[kk], dpt, kk);
            }
        }
        if (now) {
            // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ of tile j; then (from the second tile on) dV += Pᵀ·dO and
            // dK += dSᵀ·Q of tile j − 1, each batch its own group; tile j's Pᵀ and dSᵀ once the
            // first is done, while the second runs on.
            const int stage = j % 3;
            const shared_addr tq = aq + stage * Q_BYTES, tdo = ado + stage * Q_BYTES;
            wgmma_fence();
            flash90_score_pair<HS, BQ>(st, dpt, ak, av, BK, group * 64, tq, tdo);
            wgmma_commit();
            const float *tlse = slse + stage * BQ, *tdelta = sdelta + stage * BQ;
            if (before) {
                wgmma_fence();
                flash90_dkv_products<HS, BQ>(dv, dk, pa, da, pdo, pq);
                wgmma_commit();
                wgmma_wait<1>();
                flash90_pin<BQ / 2>(st);
                flash90_pin<BQ / 2>(dpt);
                flash90_dkv_grads<BQ>(st, dpt, tlse, tdelta, q0, key_lo, group_key0, seq, causal, scale_log2);
            } else {
                wgmma_wait<0>();
                flash90_pin<BQ / 2>(st);
                flash90_pin<BQ / 2>(dpt);
                flash90_dkv_grads<BQ>(st, dpt, tlse, tdelta, q0, key_lo, group_key0, seq, causal, scale_log2);
            }
        } else if (before) {
            // The previous tile's products, this warpgroup's last.
            wgmma_fence();
            flash90_dkv_products<HS, BQ>(dv, dk, pa, da, pdo, pq);
            wgmma_commit();
        }
        if constexpr (DQ) {
            if (j < q_tiles) {
                // This warpgroup's dSᵀ rows of tile j (zero where it sees none of the tile).
                if (now) {
                    flash90_store_dst<BQ>(sds, dpt, key_lo - k0);
                } else {
                    const float zero[BQ / 2] = {};
                    flash90_store_dst<BQ>(sds, zero, key_lo - k0);
                }
            }
            // The block has dQ to add where its first warpgroup sees the tile (causal: it does
            // whenever the second does).
            if (j < q_tiles && (!causal || q0 + BQ - 1 >= k0)) {
                fence_proxy_async();  // the dSᵀ stores, written through the generic proxy, are read by wgmma
                __syncthreads();
                // This warpgroup's part of dQᵀ: head columns 64·hb.. × queries 32·qp.., over BK keys.
                const int qp = group % Q_PARTS, hb = group / Q_PARTS;
                float dqt[16];
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < BK / 16; kk++) {
                    wgmma_ss_tt<32>(dqt, flash90_mn_major(ak + hb * BK * WGMMA_ROW_BYTES, BK, kk),
                                    flash90_mn_major(ads + qp * DS_TILE, BK, kk), kk > 0);
                }
                wgmma_commit();
                wgmma_wait<0>();  // dQ's product, and tile j − 1's dV and dK before it
                flash90_pin<16>(dqt);
                flash90_add_dqt(dq_acc + f.head_c + hb * 64, C, dqt, warp * 16 + (lane >> 2), q0 + qp * 32, seq,
                                scale);
            }
        }
        wgmma_wait<0>();
        flash90_pin<HS / 2>(dv);
        flash90_pin<HS / 2>(dk);
    }

    flash90_store_rows<DT>(dqkv + head + C, stride, dk, key_lo, seq, {scale, scale});
    flash90_store_rows<DT>(dqkv + head + 2 * C, stride, dv, key_lo, seq, {1.0f, 1.0f});
}

#define FLASH90_FWD_PARAMS \
    (bf16 * out, float* lse, const bf16* qkv, int B, int seq, int NH, int causal, float scale)
GPTK_BF16_ENTRY_POINT(flash_forward_sm90a_hs64, FLASH90_BLOCK, 1, FLASH90_FWD_PARAMS,
                      flash_forward_sm90<64>(out, lse, qkv, B, seq, NH, causal, scale))
GPTK_BF16_ENTRY_POINT(flash_forward_sm90a_hs128, FLASH90_BLOCK, 1, FLASH90_FWD_PARAMS,
                      flash_forward_sm90<128>(out, lse, qkv, B, seq, NH, causal, scale))
#define FLASH90_TMA_PARAMS                                                                                     \
    (const __grid_constant__ CUtensorMap qkv_map, bf16 * out, float* lse, const bf16* qkv, int B, int seq, int NH, \
     int causal, float scale)
GPTK_BF16_ENTRY_POINT(flash_forward_tma_sm90a_hs64, FLASH90_WS_BLOCK, 1, FLASH90_TMA_PARAMS,
                      flash_forward_tma_sm90<64>(&qkv_map, out, lse, qkv, B, seq, NH, causal, scale))
GPTK_BF16_ENTRY_POINT(flash_forward_tma_sm90a_hs128, FLASH90_WS_BLOCK, 1, FLASH90_TMA_PARAMS,
                      flash_forward_tma_sm90<128>(&qkv_map, out, lse, qkv, B, seq, NH, causal, scale))
#define FLASH90_BWD_PARAMS                                                                                      \
    (bf16 * dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* delta, int B, int seq, int NH, \
     int causal, float scale)
GPTK_BF16_ENTRY_POINT(flash_backward_dq_sm90a_hs64, FLASH90_BLOCK, 2, FLASH90_BWD_PARAMS,
                      flash_backward_dq_sm90<64>(dqkv, dout, qkv, lse, delta, B, seq, NH, causal, scale))
GPTK_BF16_ENTRY_POINT(flash_backward_dq_sm90a_hs128, FLASH90_BLOCK, 1, FLASH90_BWD_PARAMS,
                      flash_backward_dq_sm90<128>(dqkv, dout, qkv, lse, delta, B, seq, NH, causal, scale))
GPTK_BF16_ENTRY_POINT(flash_backward_dkv_sm90a_hs64, FLASH90_BLOCK, 1, FLASH90_BWD_PARAMS,
                      (flash_backward_dkv_sm90<64, false>(dqkv, nullptr, dout, qkv, lse, delta, B, seq, NH, causal,
                                                          scale)))
GPTK_BF16_ENTRY_POINT(flash_backward_dkv_sm90a_hs128, FLASH90_BLOCK, 1, FLASH90_BWD_PARAMS,
                      (flash_backward_dkv_sm90<128, false>(dqkv, nullptr, dout, qkv, lse, delta, B, seq, NH, causal,
                                                           scale)))
#define FLASH90_DKVQ_PARAMS                                                                                  \
    (bf16 * dqkv, float* dq_acc, const bf16* dout, const bf16* qkv, const float* lse, const float* delta, int B, \
     int seq, int NH, int causal, float scale)
GPTK_BF16_ENTRY_POINT(flash_backward_dkvq_sm90a_hs64, FLASH90_BLOCK, 1, FLASH90_DKVQ_PARAMS,
                      (flash_backward_dkv_sm90<64, true>(dqkv, dq_acc, dout, qkv, lse, delta, B, seq, NH, causal,
                                                         scale)))
GPTK_BF16_ENTRY_POINT(flash_backward_dkvq_sm90a_hs128, FLASH90_BLOCK, 1, FLASH90_DKVQ_PARAMS,
                      (flash_backward_dkv_sm90<128, true>(dqkv, dq_acc, dout, qkv, lse, delta, B, seq, NH, causal,
                                                          scale)))

// ---- the layout probe ----------------------------------------------------------------------------
// One warpgroup runs each operand form the attention kernels use once, on inputs the host knows:
// the smallest test on hardware of wgmma.cuh's descriptors, swizzle and fragment layouts (gptk
// check's family `wgmma_layouts`), so that a failure of the attention kernels can be told apart
// from a layout error. The second warpgroup of the block only helps with the copies.
// - mode 0, both operands K-major from shared memory (as S = Q·Kᵀ): d (64×64) = a (64×128) ·
//   bᵀ with b (64×128), row-major: two 64-column blocks along k, eight k-steps.
// - mode 1, A from registers and B MN-major (as O += P·V): d (64×128) = a (64×64) · b (64×128),
//   row-major: two 64-column blocks along n (the leading byte offset), four k-steps.
// - mode 2, both operands MN-major from shared memory, B 32 wide (as dQᵀ = Kᵀ·dSᵀ of the
//   atomic-dQ backward): d (64×32) = aᵀ · b with a (128×64) and b (128×32), row-major, b in the
//   first half of 128-byte rows; eight k-steps.
// d is row-major f32. Shared: 1 KB (alignment) + 16 KB + 16 KB.
#define WGMMA_PROBE_SMEM (WGMMA_ATOM_BYTES + 2 * 64 * 128 * WGMMA_BF16_BYTES)

// Stores this thread's share of a 64×N accumulator into d, row-major.
template <int N>
__device__ __forceinline__ void flash90_probe_store(float* d, const float* acc) {
    const int warp = (static_cast<int>(threadIdx.x) % FLASH90_WARPGROUP) / WARP_SIZE, lane = lane_id();
#pragma unroll
    for (int i = 0; i < N / 2; i++) {
        const int row = warp * 16 + lane / 4 + 8 * ((i % 4) / 2), col = 8 * (i / 4) + 2 * (lane % 4) + i % 2;
        d[row * N + col] = acc[i];
    }
}

__device__ __forceinline__ void wgmma_probe(float* d, const bf16* a, const bf16* b, int mode) {
    GPTK_DYNAMIC_SMEM(unsigned char, raw);
    const shared_addr sa = flash90_base(raw);                   // [2][64][64]
    const shared_addr sb = sa + 64 * 128 * WGMMA_BF16_BYTES;    // [2][64][64]
    const int warp = (static_cast<int>(threadIdx.x) % FLASH90_WARPGROUP) / WARP_SIZE, lane = lane_id();
    const int g = lane >> 2, t = lane & 3;
    if (mode == 0) flash90_load_tile<128, 64>(sa, a, 128, 64);
    if (mode == 2) {
        flash90_load_tile<64, 128>(sa, a, 64, 128);
        // b's 128 rows of 32 (four 16-byte pieces each) into the first half of swizzled rows.
        for (int c = static_cast<int>(threadIdx.x); c < 128 * 4; c += FLASH90_BLOCK) {
            cp_async_16(sb + swizzled_offset(128, c / 4, (c % 4) * 8), b + c * 8, 16);
        }
    } else {
        flash90_load_tile<128, 64>(sb, b, 128, 64);
    }
    cp_async_commit();
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    if (threadIdx.x >= FLASH90_WARPGROUP) return;
    if (mode == 0) {
        float acc[32];
        flash90_zero<32>(acc);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 8; kk++) wgmma_ss<64>(acc, flash90_k_major(sa, 64, 0, kk), flash90_k_major(sb, 64, 0, kk), 1);
        wgmma_commit();
        wgmma_wait<0>();
        flash90_pin<32>(acc);
        flash90_probe_store<64>(d, acc);
    } else if (mode == 2) {
        float acc[16];
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 8; kk++) wgmma_ss_tt<32>(acc, flash90_mn_major(sa, 128, kk), flash90_mn_major(sb, 128, kk), kk > 0);
        wgmma_commit();
        wgmma_wait<0>();
        flash90_pin<16>(acc);
        flash90_probe_store<32>(d, acc);
    } else {
        // A fragments straight from a: rows warp·16 + g (+8), columns 16kk + 2t (+1, +8, +9).
        uint32_t af[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            const bf16* r0 = a + (warp * 16 + g) * 64 + kk * 16 + 2 * t;
            const bf16* r1 = r0 + 8 * 64;
            af[kk][0] = *reinterpret_cast<const uint32_t*>(r0);
            af[kk][1] = *reinterpret_cast<const uint32_t*>(r1);
            af[kk][2] = *reinterpret_cast<const uint32_t*>(r0 + 8);
            af[kk][3] = *reinterpret_cast<const uint32_t*>(r1 + 8);
        }
        float acc[64];
        flash90_zero<64>(acc);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wgmma_rs_tb<128>(acc, af[kk], flash90_mn_major(sb, 64, kk), 1);
        wgmma_commit();
        wgmma_wait<0>();
        flash90_pin<64>(acc);
        flash90_probe_store<128>(d, acc);
    }
}

GPTK_BF16_ENTRY_POINT(wgmma_probe, FLASH90_BLOCK, 1, (float* d, const bf16* a, const bf16* b, int mode),
                      wgmma_probe(d, a, b, mode))

// ---- the TMA probe -------------------------------------------------------------------------------
// One box copy of a tensor map, as tma.cuh lays it into shared memory, copied out byte for byte:
// the smallest test on hardware of the tensor map the host encodes and of the layout the TMA
// forward's products read (gptk check's family `tma_layout`), so that a failure of that kernel can
// be told apart from a copy that lands elsewhere. out (64 rows of 128 bytes) receives the tile as
// it sits in shared memory: the host expects chunk c of box row r at chunk c ^ (r % 8), and zeros
// for rows outside the tensor. Shared: 1 KB (alignment) + 8 KB + the mbarrier.
#define TMA_PROBE_BLOCK 128
#define TMA_PROBE_SMEM (WGMMA_ATOM_BYTES + FLASH90_TMA_BOX * WGMMA_ROW_BYTES + 8)

__device__ __forceinline__ void tma_probe(const CUtensorMap* map, bf16* out, int c0, int c1, int c2) {
    constexpr int BYTES = FLASH90_TMA_BOX * WGMMA_ROW_BYTES;
    GPTK_DYNAMIC_SMEM(unsigned char, raw);
    const shared_addr tile = flash90_base(raw);
    const shared_addr bar = tile + BYTES;
    if (threadIdx.x == 0) {
        mbar_init(bar, 1);
        mbar_init_fence();
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        mbar_arrive_expect_tx(bar, BYTES);
        tma_load_3d(tile, map, c0, c1, c2, bar);
    }
    mbar_wait(bar, 0);
    const uint4* from = reinterpret_cast<const uint4*>(raw + (tile - shared_address(raw)));
    for (int i = static_cast<int>(threadIdx.x); i < BYTES / 16; i += TMA_PROBE_BLOCK) {
        GPTK_EXPECT_ALIGNED(out + 8 * i, 16);
        reinterpret_cast<uint4*>(out)[i] = from[i];
    }
}

GPTK_BF16_ENTRY_POINT(tma_probe, TMA_PROBE_BLOCK, 1,
                      (const __grid_constant__ CUtensorMap map, bf16 * out, int c0, int c1, int c2),
                      tma_probe(&map, out, c0, c1, c2))
