// flash_attention.cu: multi-head attention on tensor cores, causal or bidirectional, forward and
// backward, for bf16 storage and head sizes 64 and 128 (CPU twin: attention_forward_tiled and
// attention_backward_tiled in cpu/attention.rs, which run this blocking; the contract is
// attention.cu's: qkv (B,T,3C) as [q|k|v], out (B,T,C), lse (B,NH,T) f32 in natural log, scale
// 1/√HS, dqkv (B,T,3C) overwritten). The f32 storage mode, other head sizes and unaligned
// tensors take the simple kernels of attention.cu.
//
// Algorithm (FlashAttention-2's, on mma.sync): nothing of size T×T is ever written. A block owns
// a tile of rows on chip and streams the other side through shared memory in tiles, with
// cp.async copies double-buffered (the next tile loads while this one is computed), ldmatrix
// moving 8×8 bf16 blocks from shared memory into mma fragments (.trans for the operands read
// along keys), and mma.sync.m16n8k16 bf16 → f32 doing every product. Scores live only in
// registers; the accumulator layout of S doubles as the A-operand layout of P, so P (and dS)
// feed the second product without leaving registers, rounded to bf16 as FlashAttention does.
// - forward: a block owns FLASH_FWD_ROWS queries, 32 per warp (two 16-row m-tiles, so every K/V
//   fragment loaded from shared memory serves two mmas); it streams key/value tiles of
//   FWD_KEYS; per row it keeps the running max m and this lane's share of Σ exp(s − m) (the four
//   lanes of a row are summed once at the end), rescaling O by exp(m_old − m_new) when m grows.
//   Exponentials are exp2 of log2-scaled scores (one ex2 each). out = O / l, lse = m + ln l.
// - backward, deterministic, no atomics, in three launches: delta = rowsum(dout ∘ out) (the
//   simple attention_backward_delta); dK/dV: a block owns FLASH_DKV_KEYS keys (16 per warp,
//   each warp's K and V as A operands), streams query tiles of DKV_ROWS (Q, dO, LSE, delta) and
//   accumulates dV += Pᵀ·dO and dK += dSᵀ·Q in registers with Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ recomputed;
//   dQ: a block owns FLASH_DQ_ROWS queries (16 per warp), streams key/value tiles of
//   FLASH_DQ_KEYS and accumulates dQ += dS·K, recomputing S and dP. Every output element is
//   summed by one thread in a fixed order, so results are bitwise reproducible. The price is
//   recomputing S and dP in the dQ pass: 7 tile products against the 5 of FlashAttention-2's
//   backward, whose dQ is summed across key blocks with f32 atomics (about 30% less arithmetic,
//   plus an f32 dQ buffer and a conversion pass, and results that vary run to run). That variant
//   is here too, opt-in: the dK/dV pass with DQ (flash_backward_dkvq), then flash_dq_store.
// - causal: blocks and warps skip tiles that lie wholly above the diagonal (forward and dQ stop
//   at the block's last query; dK/dV start at the first query tile that sees the block's keys;
//   inside a block each warp skips tiles that are all in its future); only tiles that cross the
//   diagonal, or T, are masked element by element. Forward and dQ blocks are numbered so that the
//   longest rows start first.
// - any T: every tile row at or past T is zero-filled by cp.async without being read (its source
//   address is redirected to a valid row), masked out of the softmax, and never stored; outputs
//   go out 16 bytes per lane through a per-warp staging area in shared memory.
//
// Shared memory rows are HS + FLASH_SMEM_PAD bf16 long: the eight 16-byte row pieces of one
// ldmatrix phase then fall in eight different bank groups (no conflicts), as do the staging
// stores. Launch: FLASH_BLOCK threads (4 warps), 1-D grid of ⌈T / block rows⌉ · B · NH blocks,
// dynamic shared memory (the host raises each function's limit at load).
//
// Resources, sm_90 (ptxas, nvcc 13.0; no spills; registers allocated per thread in units of 8),
// and blocks per SM from 64K registers, 228 KB shared memory (1 KB reserved per block):
//   kernel              tiles (rows × streamed)   regs   smem (bytes)   blocks/SM   warps/SM
//   forward    HS=64    128 q × 64 k               239     55,296        2 (regs)     8
//   forward    HS=128   128 q × 32 k               255     69,632        2 (regs)     8
//   dK/dV      HS=64    64 k × 64 q                254     56,320        2 (regs)     8
//   dK/dV      HS=128   64 k × 32 q                251     70,144        2 (regs)     8
//   dQ         HS=64    64 q × 64 k                168     55,296        3 (regs)    12
//   dQ         HS=128   64 q × 64 k                242    104,448        2 (both)     8
//   dK/dV+dQ   HS=64    64 k × 64 q                245     65,536        2 (regs)     8   (atomic dQ)
//   dK/dV+dQ   HS=128   64 k × 32 q                253     74,752        2 (regs)     8   (atomic dQ)
// Eight warps per SM is FlashAttention-2's regime on this hardware too: each warp keeps its
// output (and score) tiles in registers, and latency is hidden by the double-buffered copies and
// the independent mmas of a tile rather than by many resident warps. At HS = 128 the streamed
// tiles are halved to stay within 255 registers.
#include "flash_common.cuh"

#define FLASH_BLOCK 128
#define FLASH_WARPS 4
#define FLASH_FWD_ROWS 128
#define FLASH_FWD_KEYS_HS64 64
#define FLASH_FWD_KEYS_HS128 32
#define FLASH_DKV_KEYS 64
#define FLASH_DKV_ROWS_HS64 64
#define FLASH_DKV_ROWS_HS128 32
#define FLASH_DQ_ROWS 64
#define FLASH_DQ_KEYS 64
#define FLASH_SMEM_PAD 8

#define BYTES_PER_BF16 2
#define BYTES_PER_F32 4

// log2(e) and ln(2): the kernels take exponentials as exp2 of log2-scaled scores.
#define FLASH_LOG2E 1.4426950408889634f
#define FLASH_LN2 0.6931471805599453f

// Shared-memory tile geometry for head size HS: rows of HS bf16 plus FLASH_SMEM_PAD, so that the
// eight 16-byte row pieces one ldmatrix phase reads (same column, eight consecutive rows) fall in
// eight different bank groups.
template <int HS>
struct FlashTile {
    static_assert(HS % 16 == 0, "head size must be a multiple of 16");
    static constexpr int ROW = HS + FLASH_SMEM_PAD;  // elements between consecutive rows
    static constexpr int CHUNKS = HS / 8;            // 16-byte pieces per row
    static constexpr int KSTEPS = HS / 16;           // mma k-steps along the head dimension
    static constexpr int DTILES = HS / 8;            // mma n-tiles along the head dimension
    // The tiles whose accumulators grow with HS shrink at HS = 128 to stay within 255 registers.
    static constexpr int FWD_KEYS = HS <= 64 ? FLASH_FWD_KEYS_HS64 : FLASH_FWD_KEYS_HS128;
    static constexpr int DKV_ROWS = HS <= 64 ? FLASH_DKV_ROWS_HS64 : FLASH_DKV_ROWS_HS128;
};

// Copies ROWS rows of one head, row r at src + r·stride (HS contiguous bf16), into a shared tile,
// asynchronously, all threads of the block taking part. Rows ≥ valid are zero-filled and not read
// (their source address is redirected to row 0, which the caller guarantees is valid).
template <int HS, int ROWS>
__device__ __forceinline__ void flash_load_tile(shared_addr dst, const bf16* src, long long stride, int valid) {
    using G = FlashTile<HS>;
    static_assert((ROWS * G::CHUNKS) % FLASH_BLOCK == 0, "whole rounds of 16-byte copies");
#pragma unroll
    for (int it = 0; it < ROWS * G::CHUNKS / FLASH_BLOCK; it++) {
        const int c = it * FLASH_BLOCK + static_cast<int>(threadIdx.x);
        const int r = c / G::CHUNKS, k = c % G::CHUNKS;
        const bool in = r < valid;
        cp_async_16(dst + (r * G::ROW + k * 8) * BYTES_PER_BF16, src + (in ? r : 0) * stride + k * 8, in ? 16 : 0);
    }
}

// ROWS consecutive floats (LSE or delta of a query tile) into shared memory; zeros from `valid` on.
template <int ROWS>
__device__ __forceinline__ void flash_load_floats(shared_addr dst, const float* src, int valid) {
    for (int r = static_cast<int>(threadIdx.x); r < ROWS; r += FLASH_BLOCK) {
        const bool in = r < valid;
        cp_async_4(dst + r * BYTES_PER_F32, src + (in ? r : 0), in ? 4 : 0);
    }
}

// A operand: the 16×16 block at (row0, col0) of a row-major shared tile.
template <int ROW>
__device__ __forceinline__ void flash_a(uint32_t* a, shared_addr tile, int row0, int col0) {
    const int lane = lane_id();
    ldmatrix_x4(a, tile + ((row0 + (lane & 15)) * ROW + col0 + (lane >> 4) * 8) * BYTES_PER_BF16);
}

// B operands of two n-tiles where B[k][n] = tile[n][k] (the tile's rows run along n, as the keys
// of Q·Kᵀ): n in [n0, n0+8) → b[0..1], [n0+8, n0+16) → b[2..3]; k in [col0, col0+16).
template <int ROW>
__device__ __forceinline__ void flash_b_rows(uint32_t* b, shared_addr tile, int n0, int col0) {
    const int lane = lane_id();
    ldmatrix_x4(b, tile + ((n0 + (lane & 7) + (lane >> 4) * 8) * ROW + col0 + ((lane >> 3) & 1) * 8) * BYTES_PER_BF16);
}

// acc (the warp's 16 rows × NQ·8 columns) += A·Bᵀ over KSTEPS k-steps of 16: A the 16 rows from
// row0 of the tile `rows` (from registers, `regs[kk]`, when IN_REGS), B the first NQ·8 rows of the
// tile `cols` (Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ).
template <int ROW, int KSTEPS, int NQ, bool IN_REGS>
__device__ __forceinline__ void flash_warp_rows_times(float (*acc)[4], const uint32_t (*regs)[4], shared_addr rows,
                                                      int row0, shared_addr cols) {
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk++) {
        uint32_t a[4];
        if constexpr (IN_REGS) {
#pragma unroll
            for (int x = 0; x < 4; x++) a[x] = regs[kk][x];
        } else {
            flash_a<ROW>(a, rows, row0, kk * 16);
        }
#pragma unroll
        for (int n = 0; n < NQ; n += 2) {
            uint32_t bb[4];
            flash_b_rows<ROW>(bb, cols, n * 8, kk * 16);
            mma_bf16_16x8x16(acc[n], a, bb);
            mma_bf16_16x8x16(acc[n + 1], a, bb + 2);
        }
    }
}

// B operands of two n-tiles where B[k][n] = tile[k][n] (the tile's rows run along k, as the keys
// of P·V): k in [row0, row0+16); n in [col0, col0+8) → b[0..1], [col0+8, col0+16) → b[2..3].
template <int ROW>
__device__ __forceinline__ void flash_b_cols(uint32_t* b, shared_addr tile, int row0, int col0) {
    const int lane = lane_id();
    ldmatrix_x4_trans(b,
                      tile + ((row0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ROW + col0 + (lane >> 4) * 8) * BYTES_PER_BF16);
}

// The A operand (16 rows × 16 k) made of two adjacent accumulator n-tiles: an accumulator's
// (row, col) layout is the A layout's, so P and dS feed the next product without a shuffle.
__device__ __forceinline__ void flash_acc_to_a(uint32_t* a, const float* c0, const float* c1) {
    a[0] = pack_bf16x2(c0[0], c0[1]);
    a[1] = pack_bf16x2(c0[2], c0[3]);
    a[2] = pack_bf16x2(c1[0], c1[1]);
    a[3] = pack_bf16x2(c1[2], c1[3]);
}

// Writes a warp's 16-row accumulator block (DTILES n-tiles of HS columns) as bf16 into rows
// [row0, row0+16) of a shared tile, rows g scaled by mul_lo and rows g+8 by mul_hi.
template <int HS>
__device__ __forceinline__ void flash_stage(bf16* tile, int row0, const float (*acc)[4], float mul_lo, float mul_hi) {
    using G = FlashTile<HS>;
    const int lane = lane_id(), g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int d = 0; d < G::DTILES; d++) {
        bf16* at = tile + (row0 + g) * G::ROW + d * 8 + 2 * t;
        *reinterpret_cast<uint32_t*>(at) = pack_bf16x2(acc[d][0] * mul_lo, acc[d][1] * mul_lo);
        *reinterpret_cast<uint32_t*>(at + 8 * G::ROW) = pack_bf16x2(acc[d][2] * mul_hi, acc[d][3] * mul_hi);
    }
}

// Copies NR rows of a shared tile, from row row0, to global rows dst + r·stride, 16 bytes per lane
// and step; rows ≥ valid are not written. One warp.
template <int HS, int NR>
__device__ __forceinline__ void flash_store_rows(bf16* dst, long long stride, const bf16* tile, int row0, int valid) {
    using G = FlashTile<HS>;
    const int lane = lane_id();
#pragma unroll
    for (int c = lane; c < NR * G::CHUNKS; c += WARP_SIZE) {
        const int r = c / G::CHUNKS, k = c % G::CHUNKS;
        if (r < valid) {
            *reinterpret_cast<int4*>(dst + r * stride + k * 8) =
                *reinterpret_cast<const int4*>(tile + (row0 + r) * G::ROW + k * 8);
        }
    }
}

// ---- forward -----------------------------------------------------------------------------------
// out (B,T,C), lse (B,NH,T) from qkv (B,T,3C). Block: FLASH_FWD_ROWS queries of one (b, h), 32
// per warp; key/value tiles of FWD_KEYS (64 at HS=64, 32 at HS=128) double-buffered. Grid:
// ⌈T/128⌉·B·NH. Shared: (128 + 4·FWD_KEYS)·(HS+8)·2 bytes = 55,296 (HS=64) / 69,632 (HS=128).
// sm_90: 239 / 255 registers, 2 blocks (8 warps) per SM, bound by registers.
template <int HS>
__device__ __forceinline__ void flash_forward(bf16* out, float* lse, const bf16* qkv, int B, int seq, int NH,
                                              int causal, float scale) {
    using G = FlashTile<HS>;
    constexpr int BR = FLASH_FWD_ROWS, BC = G::FWD_KEYS, ROW = G::ROW;
    constexpr int MT = BR / (16 * FLASH_WARPS);  // 16-row m-tiles per warp
    constexpr int NT = BC / 8;                   // n-tiles of a score tile
    GPTK_DYNAMIC_SMEM(bf16, sq);                 // [BR][ROW] queries, then the output
    bf16* sk = sq + BR * ROW;                    // [2][BC][ROW] keys, double-buffered
    bf16* sv = sk + 2 * BC * ROW;                // [2][BC][ROW] values
    const shared_addr aq = shared_address(sq), ak = shared_address(sk), av = shared_address(sv);
    constexpr int K_STAGE = BC * ROW * BYTES_PER_BF16;  // bytes of one key or value stage

    const FlashHead f = flash_head<HS>(qkv, BR, seq, NH);
    const int q0 = f.first_query(BR, causal), bh = f.bh, C = f.C;
    const long long stride = f.stride;
    const bf16 *q_rows = f.q, *k_rows = f.k, *v_rows = f.v;
    const int warp = static_cast<int>(threadIdx.x) / WARP_SIZE, lane = lane_id();
    const int g = lane >> 2, t = lane & 3;
    const int warp_row0 = q0 + warp * 16 * MT;  // this warp's first query
    const int kv_end = causal ? min(seq, q0 + BR) : seq;
    const int kv_tiles = (kv_end + BC - 1) / BC;
    const float scale_log2 = scale * FLASH_LOG2E;

    flash_load_tile<HS, BR>(aq, q_rows + q0 * stride, stride, seq - q0);
    flash_load_tile<HS, BC>(ak, k_rows, stride, seq);
    flash_load_tile<HS, BC>(av, v_rows, stride, seq);
    cp_async_commit();

    float o[MT][G::DTILES][4];
    float m[MT][2], l[MT][2];  // running max (log2 units) and this lane's share of the row sum
#pragma unroll
    for (int mi = 0; mi < MT; mi++) {
#pragma unroll
        for (int d = 0; d < G::DTILES; d++) o[mi][d][0] = o[mi][d][1] = o[mi][d][2] = o[mi][d][3] = 0.0f;
        m[mi][0] = m[mi][1] = -INFINITY;
        l[mi][0] = l[mi][1] = 0.0f;
    }

    for (int j = 0; j < kv_tiles; j++) {
        const int stage = j & 1;
        if (j + 1 < kv_tiles) {
            const int next = (j + 1) * BC;
            flash_load_tile<HS, BC>(ak + (stage ^ 1) * K_STAGE, k_rows + next * stride, stride, seq - next);
            flash_load_tile<HS, BC>(av + (stage ^ 1) * K_STAGE, v_rows + next * stride, stride, seq - next);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const int k0 = j * BC;
        // Warps whose queries all precede this tile's keys have nothing to add.
        if (!causal || k0 <= warp_row0 + 16 * MT - 1) {
            const shared_addr tk = ak + stage * K_STAGE, tv = av + stage * K_STAGE;
            float s[MT][NT][4];
#pragma unroll
            for (int mi = 0; mi < MT; mi++)
#pragma unroll
                for (int n = 0; n < NT; n++) s[mi][n][0] = s[mi][n][1] = s[mi][n][2] = s[mi][n][3] = 0.0f;
            // S = Q·Kᵀ
#pragma unroll
            for (int kk = 0; kk < G::KSTEPS; kk++) {
                uint32_t a[MT][4];
#pragma unroll
                for (int mi = 0; mi < MT; mi++) flash_a<ROW>(a[mi], aq, warp * 16 * MT + mi * 16, kk * 16);
#pragma unroll
                for (int n = 0; n < NT; n += 2) {
                    uint32_t bb[4];
                    flash_b_rows<ROW>(bb, tk, n * 8, kk * 16);
#pragma unroll
                    for (int mi = 0; mi < MT; mi++) {
                        mma_bf16_16x8x16(s[mi][n], a[mi], bb);
                        mma_bf16_16x8x16(s[mi][n + 1], a[mi], bb + 2);
                    }
                }
            }
            // Keys past the end, and (causal) keys after the query, do not count.
            if (k0 + BC > seq || (causal && k0 + BC - 1 > warp_row0)) {
#pragma unroll
                for (int mi = 0; mi < MT; mi++)
#pragma unroll
                    for (int n = 0; n < NT; n++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int row = warp_row0 + mi * 16 + g + 8 * (e >> 1);
                            const int key = k0 + n * 8 + 2 * t + (e & 1);
                            if (key >= seq || (causal && key > row)) s[mi][n][e] = -INFINITY;
                        }
            }
            // Online softmax: new running max, rescale what was summed so far, P = exp(S − max).
#pragma unroll
            for (int mi = 0; mi < MT; mi++) {
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    float mx = -INFINITY;
#pragma unroll
                    for (int n = 0; n < NT; n++) mx = fmaxf(mx, fmaxf(s[mi][n][2 * r], s[mi][n][2 * r + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 2));
                    const float m_new = fmaxf(m[mi][r], mx * scale_log2);
                    // A row with no key yet keeps m = −∞; exponents then use 0 and give 0.
                    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
                    const float alpha = fast_exp2(m[mi][r] - m_use);
                    m[mi][r] = m_new;
                    float sum = 0.0f;
#pragma unroll
                    for (int n = 0; n < NT; n++) {
#pragma unroll
                        for (int e = 2 * r; e < 2 * r + 2; e++) {
                            const float p = fast_exp2(fmaf(s[mi][n][e], scale_log2, -m_use));
                            s[mi][n][e] = p;
                            sum += p;
                        }
                    }
                    l[mi][r] = l[mi][r] * alpha + sum;
#pragma unroll
                    for (int d = 0; d < G::DTILES; d++) {
                        o[mi][d][2 * r] *= alpha;
                        o[mi][d][2 * r + 1] *= alpha;
                    }
                }
            }
            // O += P·V
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {
                uint32_t a[MT][4];
#pragma unroll
                for (int mi = 0; mi < MT; mi++) flash_acc_to_a(a[mi], s[mi][2 * kk], s[mi][2 * kk + 1]);
#pragma unroll
                for (int d = 0; d < G::DTILES; d += 2) {
                    uint32_t bb[4];
                    flash_b_cols<ROW>(bb, tv, kk * 16, d * 8);
#pragma unroll
                    for (int mi = 0; mi < MT; mi++) {
                        mma_bf16_16x8x16(o[mi][d], a[mi], bb);
                        mma_bf16_16x8x16(o[mi][d + 1], a[mi], bb + 2);
                    }
                }
            }
        }
        __syncthreads();  // the next round overwrites this stage
    }

    // out = O / l, LSE = max + log(l) in natural log. The warp's own query rows of the shared tile
    // (read by no other warp) stage the output for 16-byte stores.
    const int C_out = C;
    bf16* out_rows = out + f.head_c;
#pragma unroll
    for (int mi = 0; mi < MT; mi++) {
        float inv[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float sum = l[mi][r];
            sum += __shfl_xor_sync(FULL_MASK, sum, 1);
            sum += __shfl_xor_sync(FULL_MASK, sum, 2);
            inv[r] = sum > 0.0f ? 1.0f / sum : 0.0f;
            const int row = warp_row0 + mi * 16 + g + 8 * r;
            if (t == 0 && row < seq) {
                lse[static_cast<long long>(bh) * seq + row] =
                    sum > 0.0f ? m[mi][r] * FLASH_LN2 + logf(sum) : -INFINITY;
            }
        }
        flash_stage<HS>(sq, warp * 16 * MT + mi * 16, o[mi], inv[0], inv[1]);
    }
    __syncwarp();
    flash_store_rows<HS, 16 * MT>(out_rows + static_cast<long long>(warp_row0) * C_out, C_out, sq, warp * 16 * MT,
                                  seq - warp_row0);
}

// ---- backward: dK and dV -------------------------------------------------------------------------
// The k and v thirds of dqkv (B,T,3C). Block: FLASH_DKV_KEYS keys of one (b, h), 16 per warp;
// query tiles of DKV_ROWS (64 at HS=64, 32 at HS=128) with their dout, LSE and delta,
// double-buffered. Grid: ⌈T/64⌉·B·NH. Shared: (128 + 4·DKV_ROWS)·(HS+8)·2 + 16·DKV_ROWS bytes =
// 56,320 (HS=64) / 70,144 (HS=128). sm_90: 254 / 251 registers, 2 blocks (8 warps) per SM.
//
// With DQ (the opt-in, non-deterministic variant) the block also adds its keys' share of dQ,
// scale·dS·K, into dq_acc (B,T,C) f32 with atomics, as FlashAttention-2 does, and the dQ pass is
// not run (flash_dq_store converts dq_acc into dqkv's q third): five tile products instead of
// seven, the order of the f32 additions left to the hardware. Each warp writes its dS (the
// queries × its 16 keys) into a shared tile; after a barrier each warp multiplies 16 queries ×
// 64 head columns of it by the block's keys, one atomic add per element and key block (two
// adjacent columns per vector atomic on sm_90). Shared:
// DKV_ROWS·(64+8)·2 bytes more, 9,216 (HS=64) / 4,608 (HS=128).
template <int HS, bool DQ>
__device__ __forceinline__ void flash_backward_dkv(bf16* dqkv, float* dq_acc, const bf16* dout, const bf16* qkv,
                                                   const float* lse, const float* delta, int B, int seq, int NH,
                                                   int causal, float scale) {
    using G = FlashTile<HS>;
    constexpr int BC = FLASH_DKV_KEYS, BR = G::DKV_ROWS, ROW = G::ROW;
    constexpr int DS_ROW = BC + FLASH_SMEM_PAD;       // the shared dS tile: [BR][DS_ROW]
    constexpr int DQ_MTILES = BR / 16;                // 16-query m-tiles of a query tile
    constexpr int DQ_HALVES = HS / 64;                // 64-column parts of a dQ row
    static_assert(DQ_MTILES * DQ_HALVES == FLASH_WARPS, "one 16×64 block of dQ per warp");
    constexpr int NQ = BR / 8;                 // n-tiles of a transposed score tile
    constexpr bool KV_IN_REGISTERS = HS <= 64;  // the warp's K and V operands fit registers
    static_assert(BC == 16 * FLASH_WARPS, "one 16-key m-tile per warp");
    GPTK_DYNAMIC_SMEM(bf16, sk);         // [BC][ROW] keys (then dK)
    bf16* sv = sk + BC * ROW;            // [BC][ROW] values (then dV)
    bf16* sq = sv + BC * ROW;            // [2][BR][ROW] queries
    bf16* sdo = sq + 2 * BR * ROW;       // [2][BR][ROW] output gradients
    float* slse = reinterpret_cast<float*>(sdo + 2 * BR * ROW);  // [2][BR]
    float* sdelta = slse + 2 * BR;                                // [2][BR]
    bf16* sds = reinterpret_cast<bf16*>(sdelta + 2 * BR);          // [BR][DS_ROW] dS (DQ only)
    const shared_addr ak = shared_address(sk), av = shared_address(sv), aq = shared_address(sq),
                      ado = shared_address(sdo), alse = shared_address(slse), adelta = shared_address(sdelta),
                      ads_tile = shared_address(sds);
    constexpr int Q_STAGE = BR * ROW * BYTES_PER_BF16, F_STAGE = BR * BYTES_PER_F32;

    const FlashHead f = flash_head<HS>(qkv, BC, seq, NH);
    const int k0 = f.tile * BC, C = f.C;  // causal: low keys, most work, first
    const long long stride = f.stride, head = f.head;
    const bf16 *q_rows = f.q, *k_rows = f.k, *v_rows = f.v, *do_rows = dout + f.head_c;
    const float *lse_rows = lse + static_cast<long long>(f.bh) * seq, *delta_rows = delta + static_cast<long long>(f.bh) * seq;
    const int warp = static_cast<int>(threadIdx.x) / WARP_SIZE, lane = lane_id();
    const int g = lane >> 2, t = lane & 3;
    const int key0 = k0 + warp * 16;  // this warp's first key
    const int q_start = causal ? (k0 / BR) * BR : 0;
    const int q_tiles = (seq - q_start + BR - 1) / BR;
    const float scale_log2 = scale * FLASH_LOG2E;

    flash_load_tile<HS, BC>(ak, k_rows + k0 * stride, stride, seq - k0);
    flash_load_tile<HS, BC>(av, v_rows + k0 * stride, stride, seq - k0);
    flash_load_tile<HS, BR>(aq, q_rows + q_start * stride, stride, seq - q_start);
    flash_load_tile<HS, BR>(ado, do_rows + static_cast<long long>(q_start) * C, C, seq - q_start);
    flash_load_floats<BR>(alse, lse_rows + q_start, seq - q_start);
    flash_load_floats<BR>(adelta, delta_rows + q_start, seq - q_start);
    cp_async_commit();

    float dk[G::DTILES][4], dv[G::DTILES][4];
#pragma unroll
    for (int d = 0; d < G::DTILES; d++) {
        dk[d][0] = dk[d][1] = dk[d][2] = dk[d][3] = 0.0f;
        dv[d][0] = dv[d][1] = dv[d][2] = dv[d][3] = 0.0f;
    }
    uint32_t ka[KV_IN_REGISTERS ? G::KSTEPS : 1][4], va[KV_IN_REGISTERS ? G::KSTEPS : 1][4];

    for (int i = 0; i < q_tiles; i++) {
        const int stage = i & 1;
        if (i + 1 < q_tiles) {
            const int next = q_start + (i + 1) * BR;
            flash_load_tile<HS, BR>(aq + (stage ^ 1) * Q_STAGE, q_rows + next * stride, stride, seq - next);
            flash_load_tile<HS, BR>(ado + (stage ^ 1) * Q_STAGE, do_rows + static_cast<long long>(next) * C, C,
                                    seq - next);
            flash_load_floats<BR>(alse + (stage ^ 1) * F_STAGE, lse_rows + next, seq - next);
            flash_load_floats<BR>(adelta + (stage ^ 1) * F_STAGE, delta_rows + next, seq - next);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if constexpr (KV_IN_REGISTERS) {
            if (i == 0) {
#pragma unroll
                for (int kk = 0; kk < G::KSTEPS; kk++) {
                    flash_a<ROW>(ka[kk], ak, warp * 16, kk * 16);
                    flash_a<ROW>(va[kk], av, warp * 16, kk * 16);
                }
            }
        }
        const int q0 = q_start + i * BR;
        // Causal: a warp whose keys all follow this tile's queries has nothing to add.
        const bool active = !causal || q0 + BR - 1 >= key0;
        if (active) {
            const shared_addr tq = aq + stage * Q_STAGE, tdo = ado + stage * Q_STAGE;
            const float* tlse = slse + stage * BR;
            const float* tdelta = sdelta + stage * BR;
            // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ for the warp's 16 keys and the tile's BR queries.
            float st[NQ][4], dpt[NQ][4];
#pragma unroll
            for (int n = 0; n < NQ; n++) {
                st[n][0] = st[n][1] = st[n][2] = st[n][3] = 0.0f;
                dpt[n][0] = dpt[n][1] = dpt[n][2] = dpt[n][3] = 0.0f;
            }
            flash_warp_rows_times<ROW, G::KSTEPS, NQ, KV_IN_REGISTERS>(st, ka, ak, warp * 16, tq);
            flash_warp_rows_times<ROW, G::KSTEPS, NQ, KV_IN_REGISTERS>(dpt, va, av, warp * 16, tdo);
            // Pᵀ = exp(S·scale − LSE[query]); dSᵀ = Pᵀ ∘ (dPᵀ − delta[query]) (the scale is applied
            // to dK at the end). Masked: queries or keys past the end, keys after the query.
            const bool mask = q0 + BR > seq || key0 + 16 > seq || (causal && q0 < key0 + 15);
#pragma unroll
            for (int n = 0; n < NQ; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int ql = n * 8 + 2 * t + (e & 1);
                    float p = fast_exp2(fmaf(st[n][e], scale_log2, -tlse[ql] * FLASH_LOG2E));
                    if (mask) {
                        const int key = key0 + g + 8 * (e >> 1), query = q0 + ql;
                        if (query >= seq || key >= seq || (causal && query < key)) p = 0.0f;
                    }
                    st[n][e] = p;
                    dpt[n][e] = p * (dpt[n][e] - tdelta[ql]);
                }
            }
            // dV += Pᵀ·dO, dK += dSᵀ·Q
#pragma unroll
            for (int kq = 0; kq < BR / 16; kq++) {
                uint32_t ap[4], ads[4];
                flash_acc_to_a(ap, st[2 * kq], st[2 * kq + 1]);
                flash_acc_to_a(ads, dpt[2 * kq], dpt[2 * kq + 1]);
#pragma unroll
                for (int d = 0; d < G::DTILES; d += 2) {
                    uint32_t bb[4];
                    flash_b_cols<ROW>(bb, tdo, kq * 16, d * 8);
                    mma_bf16_16x8x16(dv[d], ap, bb);
                    mma_bf16_16x8x16(dv[d + 1], ap, bb + 2);
                    flash_b_cols<ROW>(bb, tq, kq * 16, d * 8);
                    mma_bf16_16x8x16(dk[d], ads, bb);
                    mma_bf16_16x8x16(dk[d + 1], ads, bb + 2);
                }
            }
            if constexpr (DQ) {
                // dS[query][this warp's keys], rounded to bf16 as the products use it.
#pragma unroll
                for (int n = 0; n < NQ; n++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int ql = n * 8 + 2 * t + (e & 1), kl = warp * 16 + g + 8 * (e >> 1);
                        sds[ql * DS_ROW + kl] = from_float<bf16>(dpt[n][e]);
                    }
                }
            }
        } else if constexpr (DQ) {
            for (int x = lane; x < BR * 16; x += WARP_SIZE) sds[(x / 16) * DS_ROW + warp * 16 + x % 16] = from_float<bf16>(0.0f);
        }
        if constexpr (DQ) {
            __syncthreads();  // every warp's dS is in
            // dQ[q0 + 16·mt ..][64·half ..] += scale · dS · K over the block's BC keys.
            const int mt = warp % DQ_MTILES, half = warp / DQ_MTILES;
            float acc[8][4];
#pragma unroll
            for (int d = 0; d < 8; d++) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {
                uint32_t a[4];
                flash_a<DS_ROW>(a, ads_tile, mt * 16, kk * 16);
#pragma unroll
                for (int d = 0; d < 8; d += 2) {
                    uint32_t bb[4];
                    flash_b_cols<ROW>(bb, ak, kk * 16, half * 64 + d * 8);
                    mma_bf16_16x8x16(acc[d], a, bb);
                    mma_bf16_16x8x16(acc[d + 1], a, bb + 2);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int query = q0 + mt * 16 + g + 8 * r;
                if (query < seq) {
                    float* row = dq_acc + f.head_c + static_cast<long long>(query) * C + half * 64;
#pragma unroll
                    for (int d = 0; d < 8; d++) {
                        atomic_add_f32x2(row + d * 8 + 2 * t, acc[d][2 * r] * scale, acc[d][2 * r + 1] * scale);
                    }
                }
            }
        }
        __syncthreads();  // the next round overwrites this stage
    }

    // The warp's own key and value rows (read by no other warp) stage dK and dV.
    flash_stage<HS>(sk, warp * 16, dk, scale, scale);
    flash_stage<HS>(sv, warp * 16, dv, 1.0f, 1.0f);
    __syncwarp();
    bf16* dk_rows = dqkv + head + C + static_cast<long long>(key0) * stride;
    flash_store_rows<HS, 16>(dk_rows, stride, sk, warp * 16, seq - key0);
    flash_store_rows<HS, 16>(dk_rows + C, stride, sv, warp * 16, seq - key0);
}

// ---- backward: dQ -------------------------------------------------------------------------------
// The q third of dqkv (B,T,3C). Block: FLASH_DQ_ROWS queries of one (b, h), 16 per warp; key/value
// tiles of FLASH_DQ_KEYS double-buffered. Grid: ⌈T/64⌉·B·NH. Shared: (128 + 256)·(HS+8)·2 bytes =
// 55,296 (HS=64) / 104,448 (HS=128). sm_90: 168 registers, 3 blocks (12 warps) per SM (HS=64);
// 242 registers, 2 blocks (8 warps) per SM (HS=128).
template <int HS>
__device__ __forceinline__ void flash_backward_dq(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                                                  const float* delta, int B, int seq, int NH, int causal,
                                                  float scale) {
    using G = FlashTile<HS>;
    constexpr int BR = FLASH_DQ_ROWS, BC = FLASH_DQ_KEYS, ROW = G::ROW;
    constexpr int NK = BC / 8;                  // n-tiles of a score tile
    constexpr bool Q_IN_REGISTERS = HS <= 64;  // the warp's Q and dO operands fit registers
    static_assert(BR == 16 * FLASH_WARPS, "one 16-row m-tile per warp");
    GPTK_DYNAMIC_SMEM(bf16, sq);      // [BR][ROW] queries (then dQ)
    bf16* sdo = sq + BR * ROW;        // [BR][ROW] output gradients
    bf16* sk = sdo + BR * ROW;        // [2][BC][ROW] keys
    bf16* sv = sk + 2 * BC * ROW;     // [2][BC][ROW] values
    const shared_addr aq = shared_address(sq), ado = shared_address(sdo), ak = shared_address(sk),
                      av = shared_address(sv);
    constexpr int K_STAGE = BC * ROW * BYTES_PER_BF16;

    const FlashHead f = flash_head<HS>(qkv, BR, seq, NH);
    const int q0 = f.first_query(BR, causal), bh = f.bh, C = f.C;
    const long long stride = f.stride, head = f.head;
    const bf16 *q_rows = f.q, *k_rows = f.k, *v_rows = f.v, *do_rows = dout + f.head_c;
    const int warp = static_cast<int>(threadIdx.x) / WARP_SIZE, lane = lane_id();
    const int g = lane >> 2, t = lane & 3;
    const int row0 = q0 + warp * 16;  // this warp's first query
    const int kv_end = causal ? min(seq, q0 + BR) : seq;
    const int kv_tiles = (kv_end + BC - 1) / BC;
    const float scale_log2 = scale * FLASH_LOG2E;

    flash_load_tile<HS, BR>(aq, q_rows + q0 * stride, stride, seq - q0);
    flash_load_tile<HS, BR>(ado, do_rows + static_cast<long long>(q0) * C, C, seq - q0);
    cp_async_commit();
    flash_load_tile<HS, BC>(ak, k_rows, stride, seq);
    flash_load_tile<HS, BC>(av, v_rows, stride, seq);
    cp_async_commit();

    // LSE (log2 units) and delta of this lane's two rows.
    float lse2[2], dlt[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = row0 + g + 8 * r;
        const long long at = static_cast<long long>(bh) * seq + row;
        lse2[r] = row < seq ? lse[at] * FLASH_LOG2E : 0.0f;
        dlt[r] = row < seq ? delta[at] : 0.0f;
    }
    float dq[G::DTILES][4];
#pragma unroll
    for (int d = 0; d < G::DTILES; d++) dq[d][0] = dq[d][1] = dq[d][2] = dq[d][3] = 0.0f;
    uint32_t qa[Q_IN_REGISTERS ? G::KSTEPS : 1][4], da[Q_IN_REGISTERS ? G::KSTEPS : 1][4];
    if constexpr (Q_IN_REGISTERS) {
        cp_async_wait<1>();  // the query group is in
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < G::KSTEPS; kk++) {
            flash_a<ROW>(qa[kk], aq, warp * 16, kk * 16);
            flash_a<ROW>(da[kk], ado, warp * 16, kk * 16);
        }
    }

    for (int j = 0; j < kv_tiles; j++) {
        const int stage = j & 1;
        if (j + 1 < kv_tiles) {
            const int next = (j + 1) * BC;
            flash_load_tile<HS, BC>(ak + (stage ^ 1) * K_STAGE, k_rows + next * stride, stride, seq - next);
            flash_load_tile<HS, BC>(av + (stage ^ 1) * K_STAGE, v_rows + next * stride, stride, seq - next);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const int k0 = j * BC;
        if (!causal || k0 <= row0 + 15) {
            const shared_addr tk = ak + stage * K_STAGE, tv = av + stage * K_STAGE;
            float s[NK][4], dp[NK][4];
#pragma unroll
            for (int n = 0; n < NK; n++) {
                s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
                dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
            }
            // S = Q·Kᵀ, dP = dO·Vᵀ for the warp's 16 queries.
#pragma unroll
            for (int kk = 0; kk < G::KSTEPS; kk++) {
                uint32_t a[4], ad[4];
                if constexpr (Q_IN_REGISTERS) {
#pragma unroll
                    for (int x = 0; x < 4; x++) {
                        a[x] = qa[kk][x];
                        ad[x] = da[kk][x];
                    }
                } else {
                    flash_a<ROW>(a, aq, warp * 16, kk * 16);
                    flash_a<ROW>(ad, ado, warp * 16, kk * 16);
                }
#pragma unroll
                for (int n = 0; n < NK; n += 2) {
                    uint32_t bb[4];
                    flash_b_rows<ROW>(bb, tk, n * 8, kk * 16);
                    mma_bf16_16x8x16(s[n], a, bb);
                    mma_bf16_16x8x16(s[n + 1], a, bb + 2);
                    flash_b_rows<ROW>(bb, tv, n * 8, kk * 16);
                    mma_bf16_16x8x16(dp[n], ad, bb);
                    mma_bf16_16x8x16(dp[n + 1], ad, bb + 2);
                }
            }
            // dS = P ∘ (dP − delta), P = exp(S·scale − LSE); the scale is applied to dQ at the end.
            const bool mask = k0 + BC > seq || (causal && k0 + BC - 1 > row0);
#pragma unroll
            for (int n = 0; n < NK; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float p = fast_exp2(fmaf(s[n][e], scale_log2, -lse2[e >> 1]));
                    if (mask) {
                        const int row = row0 + g + 8 * (e >> 1), key = k0 + n * 8 + 2 * t + (e & 1);
                        if (key >= seq || (causal && key > row)) p = 0.0f;
                    }
                    s[n][e] = p * (dp[n][e] - dlt[e >> 1]);
                }
            }
            // dQ += dS·K
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {
                uint32_t a[4];
                flash_acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
                for (int d = 0; d < G::DTILES; d += 2) {
                    uint32_t bb[4];
                    flash_b_cols<ROW>(bb, tk, kk * 16, d * 8);
                    mma_bf16_16x8x16(dq[d], a, bb);
                    mma_bf16_16x8x16(dq[d + 1], a, bb + 2);
                }
            }
        }
        __syncthreads();  // the next round overwrites this stage
    }

    // The warp's own query rows (read by no other warp) stage dQ.
    flash_stage<HS>(sq, warp * 16, dq, scale, scale);
    __syncwarp();
    flash_store_rows<HS, 16>(dqkv + head + static_cast<long long>(row0) * stride, stride, sq, warp * 16,
                             seq - row0);
}

#define FLASH_FWD_PARAMS (bf16 * out, float* lse, const bf16* qkv, int B, int seq, int NH, int causal, float scale)
#define FLASH_BWD_PARAMS                                                                                   \
    (bf16 * dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* delta, int B, int seq, \
     int NH, int causal, float scale)
GPTK_BF16_ENTRY_POINT(flash_forward_hs64, FLASH_BLOCK, 2, FLASH_FWD_PARAMS,
                      flash_forward<64>(out, lse, qkv, B, seq, NH, causal, scale))
GPTK_BF16_ENTRY_POINT(flash_forward_hs128, FLASH_BLOCK, 2, FLASH_FWD_PARAMS,
                      flash_forward<128>(out, lse, qkv, B, seq, NH, causal, scale))
GPTK_BF16_ENTRY_POINT(flash_backward_dkv_hs64, FLASH_BLOCK, 2, FLASH_BWD_PARAMS,
                      (flash_backward_dkv<64, false>(dqkv, nullptr, dout, qkv, lse, delta, B, seq, NH, causal, scale)))
GPTK_BF16_ENTRY_POINT(flash_backward_dkv_hs128, FLASH_BLOCK, 2, FLASH_BWD_PARAMS,
                      (flash_backward_dkv<128, false>(dqkv, nullptr, dout, qkv, lse, delta, B, seq, NH, causal, scale)))
#define FLASH_DKVQ_PARAMS                                                                                  \
    (bf16 * dqkv, float* dq_acc, const bf16* dout, const bf16* qkv, const float* lse, const float* delta, int B, \
     int seq, int NH, int causal, float scale)
GPTK_BF16_ENTRY_POINT(flash_backward_dkvq_hs64, FLASH_BLOCK, 2, FLASH_DKVQ_PARAMS,
                      (flash_backward_dkv<64, true>(dqkv, dq_acc, dout, qkv, lse, delta, B, seq, NH, causal, scale)))
GPTK_BF16_ENTRY_POINT(flash_backward_dkvq_hs128, FLASH_BLOCK, 2, FLASH_DKVQ_PARAMS,
                      (flash_backward_dkv<128, true>(dqkv, dq_acc, dout, qkv, lse, delta, B, seq, NH, causal, scale)))
GPTK_BF16_ENTRY_POINT(flash_backward_dq_hs64, FLASH_BLOCK, 3, FLASH_BWD_PARAMS,
                      flash_backward_dq<64>(dqkv, dout, qkv, lse, delta, B, seq, NH, causal, scale))
GPTK_BF16_ENTRY_POINT(flash_backward_dq_hs128, FLASH_BLOCK, 2, FLASH_BWD_PARAMS,
                      flash_backward_dq<128>(dqkv, dout, qkv, lse, delta, B, seq, NH, causal, scale))

// ---- backward: dQ from the atomic accumulator ----------------------------------------------------
// dqkv's q third (B,T,3C) = bf16(dq_acc (B,T,C) f32), 8 elements per thread (C is a multiple of
// 8, both tensors 16-byte aligned). Grid: ⌈B·T·C/8 / FLASH_BLOCK⌉.
__device__ __forceinline__ void flash_dq_store(bf16* dqkv, const float* dq_acc, int C, long long total) {
    const long long i = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
    if (i >= total) return;
    const long long row = i / C, col = i % C;
    const float4 lo = *reinterpret_cast<const float4*>(dq_acc + i);
    const float4 hi = *reinterpret_cast<const float4*>(dq_acc + i + 4);
    uint4 packed;
    packed.x = pack_bf16x2(lo.x, lo.y);
    packed.y = pack_bf16x2(lo.z, lo.w);
    packed.z = pack_bf16x2(hi.x, hi.y);
    packed.w = pack_bf16x2(hi.z, hi.w);
    *reinterpret_cast<uint4*>(dqkv + row * 3 * C + col) = packed;
}
GPTK_BF16_ENTRY_POINT(flash_dq_store, FLASH_BLOCK, 1, (bf16 * dqkv, const float* dq_acc, int C, long long total),
                      flash_dq_store(dqkv, dq_acc, C, total))
