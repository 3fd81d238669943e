// attention.cu: multi-head scaled-dot-product attention, causal or bidirectional, and the one-
// token step over a key/value cache (CPU twin: cpu/attention.rs).
//
// This is the simple, exact version: one warp per query row (forward, dq) or key row (dk, dv),
// lanes splitting the head dimension (lane owns d = lane + 32·r for r < SLOTS), each score a
// warp-wide dot product. No (T, T) matrix is stored: the forward keeps only the output and the
// log-sum-exp of each score row (B, NH, T), computed with an online softmax in float; the
// backward recomputes the probabilities p = exp(q·k·scale − lse) from them, as the CPU does.
// flash_attention.cu is the tiled tensor-core version under the same contract, for bf16 storage
// at head sizes 64 and 128; these kernels still serve f32 storage (exact f32 arithmetic, for
// tight checks), other head sizes and unaligned tensors, the delta pass of the flash backward,
// and generation (attention_cached).
//
// Backward, deterministic without atomics, in three launches:
// 1. delta (B,NH,T) = dout·out per row, into f32 scratch;
// 2. dq: one warp per query, summing over its keys: dq = Σ_j ds_ij k_j;
// 3. dk, dv: one warp per key, summing over the queries that see it:
//    dk = Σ_i ds_ij q_i, dv = Σ_i p_ij dout_i, with ds_ij = p_ij (dout_i·v_j − delta_i)·scale.
// dqkv (B,T,3C) is overwritten everywhere.
//
// Launch: ATTENTION_BLOCK threads (8 warps, 8 rows) per block. SLOTS is the smallest power of
// two ≥ HS/32 (head sizes up to ATTENTION_MAX_HS); each kernel body is instantiated for 1, 2,
// 4, 8 slots and picks one per launch, so HS = 64 keeps 2 values per lane in registers.
// Resources: registers only (≤ 3·8 floats per lane of head data), no shared memory.
#include "common.cuh"

#define ATTENTION_BLOCK 256
#define ATTENTION_MAX_HS 256

// Row i of part (0 = q, 1 = k, 2 = v) for head h of batch b, in qkv (B, T, 3C).
// P is `const T*` or `T*` (reading qkv or writing dqkv, which has the same layout).
template <typename P>
__device__ __forceinline__ P qkv_row(P qkv, int b, int seq, long long i, int part, int C, int h, int HS) {
    return qkv + (static_cast<long long>(b) * seq + i) * 3 * C + static_cast<long long>(part) * C +
           static_cast<long long>(h) * HS;
}

// This lane's slots of a head vector, widened (0 beyond HS).
template <typename T, int SLOTS>
__device__ __forceinline__ void load_head(const T* p, int HS, float* out) {
    const int lane = lane_id();
#pragma unroll
    for (int r = 0; r < SLOTS; r++) {
        const int d = lane + r * WARP_SIZE;
        out[r] = d < HS ? to_float(p[d]) : 0.0f;
    }
}

template <typename T, int SLOTS>
__device__ __forceinline__ void store_head(T* p, int HS, const float* in) {
    const int lane = lane_id();
#pragma unroll
    for (int r = 0; r < SLOTS; r++) {
        const int d = lane + r * WARP_SIZE;
        if (d < HS) p[d] = from_float<T>(in[r]);
    }
}

// The partial dot product of this lane's slots.
template <int SLOTS>
__device__ __forceinline__ float dot_slots(const float* a, const float* b) {
    float s = 0.0f;
#pragma unroll
    for (int r = 0; r < SLOTS; r++) s += a[r] * b[r];
    return s;
}

// Runs BODY<SLOTS> for the slot count that covers HS.
#define DISPATCH_SLOTS(HS, BODY, ...)                        \
    do {                                                     \
        if ((HS) <= WARP_SIZE) BODY<T, 1>(__VA_ARGS__);      \
        else if ((HS) <= 2 * WARP_SIZE) BODY<T, 2>(__VA_ARGS__); \
        else if ((HS) <= 4 * WARP_SIZE) BODY<T, 4>(__VA_ARGS__); \
        else BODY<T, 8>(__VA_ARGS__);                        \
    } while (0)

template <typename T, int SLOTS>
__device__ __forceinline__ void attention_forward_row(T* out, float* lse, const T* qkv, int seq, int NH, int HS,
                                                     int causal, float scale, long long row) {
    const int C = NH * HS;
    const long long i = row % seq;
    const long long bh = row / seq;
    const int h = static_cast<int>(bh % NH), b = static_cast<int>(bh / NH);
    float q[SLOTS], k[SLOTS], v[SLOTS], acc[SLOTS];
    load_head<T, SLOTS>(qkv_row(qkv, b, seq, i, 0, C, h, HS), HS, q);
#pragma unroll
    for (int r = 0; r < SLOTS; r++) acc[r] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    const long long keys = causal ? i + 1 : seq;
    for (long long j = 0; j < keys; j++) {
        load_head<T, SLOTS>(qkv_row(qkv, b, seq, j, 1, C, h, HS), HS, k);
        load_head<T, SLOTS>(qkv_row(qkv, b, seq, j, 2, C, h, HS), HS, v);
        const float s = warp_sum(dot_slots<SLOTS>(q, k)) * scale;
        const float m_new = fmaxf(m, s);
        const float correction = expf(m - m_new);  // 0 on the first key (m = −∞)
        const float p = expf(s - m_new);
        l = l * correction + p;
#pragma unroll
        for (int r = 0; r < SLOTS; r++) acc[r] = acc[r] * correction + p * v[r];
        m = m_new;
    }
#pragma unroll
    for (int r = 0; r < SLOTS; r++) acc[r] /= l;
    store_head<T, SLOTS>(out + (static_cast<long long>(b) * seq + i) * C + static_cast<long long>(h) * HS, HS, acc);
    if (lane_id() == 0) lse[row] = m + logf(l);
}

// out (B,T,C), lse (B,NH,T) from qkv (B,T,3C). One warp per (b, h, i) row.
template <typename T>
__device__ __forceinline__ void attention_forward(T* out, float* lse, const T* qkv, int B, int seq, int NH, int HS,
                                                  int causal, float scale) {
    const long long row = global_warp();
    if (row >= static_cast<long long>(B) * NH * seq) return;
    DISPATCH_SLOTS(HS, attention_forward_row, out, lse, qkv, seq, NH, HS, causal, scale, row);
}

template <typename T, int SLOTS>
__device__ __forceinline__ void attention_delta_row(float* delta, const T* dout, const T* out, int seq, int NH,
                                                   int HS, long long row) {
    const int C = NH * HS;
    const long long i = row % seq;
    const long long bh = row / seq;
    const int h = static_cast<int>(bh % NH), b = static_cast<int>(bh / NH);
    const long long at = (static_cast<long long>(b) * seq + i) * C + static_cast<long long>(h) * HS;
    float dy[SLOTS], o[SLOTS];
    load_head<T, SLOTS>(dout + at, HS, dy);
    load_head<T, SLOTS>(out + at, HS, o);
    const float d = warp_sum(dot_slots<SLOTS>(dy, o));
    if (lane_id() == 0) delta[row] = d;
}

// delta (B,NH,T) = Σ_d dout·out per row.
template <typename T>
__device__ __forceinline__ void attention_backward_delta(float* delta, const T* dout, const T* out, int B, int seq,
                                                         int NH, int HS) {
    const long long row = global_warp();
    if (row >= static_cast<long long>(B) * NH * seq) return;
    DISPATCH_SLOTS(HS, attention_delta_row, delta, dout, out, seq, NH, HS, row);
}

template <typename T, int SLOTS>
__device__ __forceinline__ void attention_dq_row(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                                const float* delta, int seq, int NH, int HS, int causal, float scale,
                                                long long row) {
    const int C = NH * HS;
    const long long i = row % seq;
    const long long bh = row / seq;
    const int h = static_cast<int>(bh % NH), b = static_cast<int>(bh / NH);
    float q[SLOTS], dy[SLOTS], k[SLOTS], v[SLOTS], dq[SLOTS];
    load_head<T, SLOTS>(qkv_row(qkv, b, seq, i, 0, C, h, HS), HS, q);
    load_head<T, SLOTS>(dout + (static_cast<long long>(b) * seq + i) * C + static_cast<long long>(h) * HS, HS, dy);
#pragma unroll
    for (int r = 0; r < SLOTS; r++) dq[r] = 0.0f;
    const float lse_i = lse[row], delta_i = delta[row];
    const long long keys = causal ? i + 1 : seq;
    for (long long j = 0; j < keys; j++) {
        load_head<T, SLOTS>(qkv_row(qkv, b, seq, j, 1, C, h, HS), HS, k);
        load_head<T, SLOTS>(qkv_row(qkv, b, seq, j, 2, C, h, HS), HS, v);
        float s = dot_slots<SLOTS>(q, k), dp = dot_slots<SLOTS>(dy, v);
        warp_sum2(s, dp);
        const float p = expf(s * scale - lse_i);
        const float ds = p * (dp - delta_i) * scale;
#pragma unroll
        for (int r = 0; r < SLOTS; r++) dq[r] += ds * k[r];
    }
    store_head<T, SLOTS>(qkv_row(dqkv, b, seq, i, 0, C, h, HS), HS, dq);
}

// The q third of dqkv (B,T,3C). One warp per (b, h, i) query row.
template <typename T>
__device__ __forceinline__ void attention_backward_dq(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                                      const float* delta, int B, int seq, int NH, int HS, int causal,
                                                      float scale) {
    const long long row = global_warp();
    if (row >= static_cast<long long>(B) * NH * seq) return;
    DISPATCH_SLOTS(HS, attention_dq_row, dqkv, dout, qkv, lse, delta, seq, NH, HS, causal, scale, row);
}

template <typename T, int SLOTS>
__device__ __forceinline__ void attention_dkv_row(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                                 const float* delta, int seq, int NH, int HS, int causal, float scale,
                                                 long long row) {
    const int C = NH * HS;
    const long long j = row % seq;
    const long long bh = row / seq;
    const int h = static_cast<int>(bh % NH), b = static_cast<int>(bh / NH);
    float k[SLOTS], v[SLOTS], q[SLOTS], dy[SLOTS], dk[SLOTS], dv[SLOTS];
    load_head<T, SLOTS>(qkv_row(qkv, b, seq, j, 1, C, h, HS), HS, k);
    load_head<T, SLOTS>(qkv_row(qkv, b, seq, j, 2, C, h, HS), HS, v);
#pragma unroll
    for (int r = 0; r < SLOTS; r++) dk[r] = dv[r] = 0.0f;
    for (long long i = causal ? j : 0; i < seq; i++) {
        load_head<T, SLOTS>(qkv_row(qkv, b, seq, i, 0, C, h, HS), HS, q);
        load_head<T, SLOTS>(dout + (static_cast<long long>(b) * seq + i) * C + static_cast<long long>(h) * HS, HS,
                            dy);
        float s = dot_slots<SLOTS>(q, k), dp = dot_slots<SLOTS>(dy, v);
        warp_sum2(s, dp);
        const long long qrow = bh * seq + i;
        const float p = expf(s * scale - lse[qrow]);
        const float ds = p * (dp - delta[qrow]) * scale;
#pragma unroll
        for (int r = 0; r < SLOTS; r++) {
            dv[r] += p * dy[r];
            dk[r] += ds * q[r];
        }
    }
    store_head<T, SLOTS>(qkv_row(dqkv, b, seq, j, 1, C, h, HS), HS, dk);
    store_head<T, SLOTS>(qkv_row(dqkv, b, seq, j, 2, C, h, HS), HS, dv);
}

// The k and v thirds of dqkv (B,T,3C). One warp per (b, h, j) key row.
template <typename T>
__device__ __forceinline__ void attention_backward_dkv(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                                       const float* delta, int B, int seq, int NH, int HS, int causal,
                                                       float scale) {
    const long long row = global_warp();
    if (row >= static_cast<long long>(B) * NH * seq) return;
    DISPATCH_SLOTS(HS, attention_dkv_row, dqkv, dout, qkv, lse, delta, seq, NH, HS, causal, scale, row);
}

template <typename T, int SLOTS>
__device__ __forceinline__ void attention_cached_head(T* out, const T* qkv, T* kv, int t_max, int pos, int NH, int HS,
                                                     float scale, long long bh) {
    const int C = NH * HS;
    const int h = static_cast<int>(bh % NH);
    const long long b = bh / NH;
    const T* q_new = qkv + b * 3 * C + static_cast<long long>(h) * HS;
    T* cache = kv + b * t_max * 2 * C + static_cast<long long>(h) * HS;
    // Store this head's k and v at `pos`. Each lane later reads back only the elements it
    // wrote itself, so no synchronisation is needed.
    const int lane = lane_id();
    for (int d = lane; d < HS; d += WARP_SIZE) {
        cache[static_cast<long long>(pos) * 2 * C + d] = q_new[C + d];
        cache[static_cast<long long>(pos) * 2 * C + C + d] = q_new[2 * C + d];
    }
    float q[SLOTS], k[SLOTS], v[SLOTS], acc[SLOTS];
    load_head<T, SLOTS>(q_new, HS, q);
#pragma unroll
    for (int r = 0; r < SLOTS; r++) acc[r] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int j = 0; j <= pos; j++) {
        load_head<T, SLOTS>(cache + static_cast<long long>(j) * 2 * C, HS, k);
        load_head<T, SLOTS>(cache + static_cast<long long>(j) * 2 * C + C, HS, v);
        const float s = warp_sum(dot_slots<SLOTS>(q, k)) * scale;
        const float m_new = fmaxf(m, s);
        const float correction = expf(m - m_new);
        const float p = expf(s - m_new);
        l = l * correction + p;
#pragma unroll
        for (int r = 0; r < SLOTS; r++) acc[r] = acc[r] * correction + p * v[r];
        m = m_new;
    }
#pragma unroll
    for (int r = 0; r < SLOTS; r++) acc[r] /= l;
    store_head<T, SLOTS>(out + b * C + static_cast<long long>(h) * HS, HS, acc);
}

// kv (B,Tmax,2C) gets the k, v of position `pos` from qkv (B,1,3C); out (B,1,C) = attention of
// the new q over positions 0..=pos. One warp per (b, h).
template <typename T>
__device__ __forceinline__ void attention_cached(T* out, const T* qkv, T* kv, int B, int t_max, int pos, int NH,
                                                 int HS, float scale) {
    const long long bh = global_warp();
    if (bh >= static_cast<long long>(B) * NH) return;
    DISPATCH_SLOTS(HS, attention_cached_head, out, qkv, kv, t_max, pos, NH, HS, scale, bh);
}

#define ATT_FWD_PARAMS(T) (T * out, float* lse, const T* qkv, int B, int seq, int NH, int HS, int causal, float scale)
GPTK_ENTRY_POINTS(attention_forward, ATTENTION_BLOCK, ATT_FWD_PARAMS, (out, lse, qkv, B, seq, NH, HS, causal, scale))
#define ATT_DELTA_PARAMS(T) (float* delta, const T* dout, const T* out, int B, int seq, int NH, int HS)
GPTK_ENTRY_POINTS(attention_backward_delta, ATTENTION_BLOCK, ATT_DELTA_PARAMS, (delta, dout, out, B, seq, NH, HS))
#define ATT_BWD_PARAMS(T)                                                                                   \
    (T * dqkv, const T* dout, const T* qkv, const float* lse, const float* delta, int B, int seq, int NH, int HS, \
     int causal, float scale)
GPTK_ENTRY_POINTS(attention_backward_dq, ATTENTION_BLOCK, ATT_BWD_PARAMS,
                  (dqkv, dout, qkv, lse, delta, B, seq, NH, HS, causal, scale))
GPTK_ENTRY_POINTS(attention_backward_dkv, ATTENTION_BLOCK, ATT_BWD_PARAMS,
                  (dqkv, dout, qkv, lse, delta, B, seq, NH, HS, causal, scale))
#define ATT_CACHED_PARAMS(T) (T * out, const T* qkv, T* kv, int B, int t_max, int pos, int NH, int HS, float scale)
GPTK_ENTRY_POINTS(attention_cached, ATTENTION_BLOCK, ATT_CACHED_PARAMS, (out, qkv, kv, B, t_max, pos, NH, HS, scale))
