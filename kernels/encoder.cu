// encoder.cu: token + position embedding, forward and backward (CPU twin: cpu/encoder.rs).
//
// Forward: out (B,T,C) = wte[tokens] + wpe[t]; each thread owns VN consecutive channels of one
// position (16-byte vectors when C and the pointers allow). Overwrites `out`.
//
// Backward, deterministic without atomics:
// - dwpe (T,C) += Σ_b dout[b,t]: one thread per (t, c) sums the B rows in order.
// - dwte (Vp,C) += dout rows scattered by token. The host buckets positions by token (a sort of
//   the B·T ids, which it holds) and uploads the buckets at fixed offsets with their count; one
//   block row per distinct token then sums its positions in ascending order, one thread per
//   channel, and adds the total to the embedding row. No two blocks touch the same row, and the
//   launch does not depend on the batch (a CUDA graph replays it).
// Launch: 1-D grids of ENCODER_BLOCK threads; the dwte kernel uses a 2-D grid (bucket, channel
// block). Resources: registers only, no shared memory.
#include "common.cuh"

#define ENCODER_BLOCK 256

template <typename T, int VN>
__device__ __forceinline__ void encoder_forward_span(T* out, const int* tokens, const T* wte, const T* wpe, int seq,
                                                     int C, long long i) {
    const long long row = i / C;
    const int c = static_cast<int>(i - row * C);
    const long long tok = tokens[row];
    const long long pos = row % seq;
    float e[VN], p[VN];
    load_vec<T, VN>(wte + tok * C + c, e);
    load_vec<T, VN>(wpe + pos * C + c, p);
#pragma unroll
    for (int k = 0; k < VN; k++) e[k] += p[k];
    store_vec<T, VN>(out + i, e);
}

// out (B,T,C) = wte[tokens[b,t]] + wpe[t]; total = B·T·C.
template <typename T>
__device__ __forceinline__ void encoder_forward(T* out, const int* tokens, const T* wte, const T* wpe, int seq, int C,
                                                long long total, int vec) {
    const long long t = global_thread();
    if (vec) {
        constexpr int VN = Vec<T>::N;
        if (t * VN < total) encoder_forward_span<T, VN>(out, tokens, wte, wpe, seq, C, t * VN);
    } else if (t < total) {
        encoder_forward_span<T, 1>(out, tokens, wte, wpe, seq, C, t);
    }
}

// dwpe (T,C) += Σ_b dout[b, t, :]; one thread per element of dwpe.
template <typename T>
__device__ __forceinline__ void encoder_backward_wpe(T* dwpe, const T* dout, int B, int seq, int C) {
    const long long i = global_thread();
    const long long tc = static_cast<long long>(seq) * C;
    if (i >= tc) return;
    float sum = 0.0f;
    for (int b = 0; b < B; b++) sum += to_float(dout[b * tc + i]);
    dwpe[i] = from_float<T>(to_float(dwpe[i]) + sum);
}

// dwte[token of bucket u, c] += Σ dout[positions[k], c] over the positions of bucket u, in order.
// buckets (the host makes them from the ids it uploads) holds, at offsets fixed by `cap` (the
// most positions a batch has), [U | the U distinct tokens, ascending, in cap slots | U+1 bucket
// starts in cap+1 slots | the positions of each bucket, ascending, in cap slots], so that the
// launch is the same for every batch (a CUDA graph replays it): blocks past U do nothing.
// Grid: (at least U, ceil(C / ENCODER_BLOCK)).
template <typename T>
__device__ __forceinline__ void encoder_backward_wte(T* dwte, const T* dout, const int* buckets, int cap, int C) {
    const int u = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (u >= buckets[0] || c >= C) return;
    const int* start = buckets + 1 + cap;
    const int* positions = start + cap + 1;
    float sum = 0.0f;
    for (int k = start[u]; k < start[u + 1]; k++) {
        sum += to_float(dout[static_cast<long long>(positions[k]) * C + c]);
    }
    T* row = dwte + static_cast<long long>(buckets[1 + u]) * C;
    row[c] = from_float<T>(to_float(row[c]) + sum);
}

#define ENC_FWD_PARAMS(T) \
    (T * out, const int* tokens, const T* wte, const T* wpe, int seq, int C, long long total, int vec)
GPTK_ENTRY_POINTS(encoder_forward, ENCODER_BLOCK, ENC_FWD_PARAMS, (out, tokens, wte, wpe, seq, C, total, vec))
#define ENC_WPE_PARAMS(T) (T * dwpe, const T* dout, int B, int seq, int C)
GPTK_ENTRY_POINTS(encoder_backward_wpe, ENCODER_BLOCK, ENC_WPE_PARAMS, (dwpe, dout, B, seq, C))
#define ENC_WTE_PARAMS(T) (T * dwte, const T* dout, const int* buckets, int cap, int C)
GPTK_ENTRY_POINTS(encoder_backward_wte, ENCODER_BLOCK, ENC_WTE_PARAMS, (dwte, dout, buckets, cap, C))
