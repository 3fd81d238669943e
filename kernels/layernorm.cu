// layernorm.cu: layer normalisation over the last dimension (CPU twin: cpu/layernorm.rs).
//
// Forward: one warp per row. Three passes over the row (mean, variance about the mean, output),
// each lane striding by 32·VN channels; the row is at most a few KB, so passes two and three hit
// L1. Two-pass variance avoids the cancellation of E[x²] − E[x]². out (N,C) is overwritten;
// mean and rstd (N) are written as f32 statistics. residual_layernorm_forward first writes the
// residual sum of two rows (res = x + y) and normalises that: the schedule's residual adds fused
// with the layernorm that follows each.
//
// Backward, deterministic without atomics, in three launches:
// 1. dinp (N,C) += (w·dy − mean(w·dy) − norm·mean(w·dy·norm))·rstd: one warp per row.
// 2. partial dw, db: the rows are split into P fixed chunks; one thread per (channel, chunk)
//    sums norm·dy and dy over its rows in order into partials (P, 2C) f32 (coalesced over C).
// 3. dw, db (C) += Σ_p partials, in chunk order (add_column_partials in reduce.cu).
// Launch: LAYERNORM_BLOCK threads (8 rows per block for the row kernels; 1-D channel blocks
// times P chunks for the partials). Resources: registers only.
#include "common.cuh"

#define LAYERNORM_BLOCK 256
#define ROWS_PER_BLOCK (LAYERNORM_BLOCK / WARP_SIZE)

template <typename T, int VN>
__device__ __forceinline__ void layernorm_forward_row(T* out, float* mean, float* rstd, const T* inp, const T* w,
                                                     const T* b, int C, float eps, long long row) {
    const int lane = lane_id();
    const T* x = inp + row * C;
    float sum = 0.0f;
    for (int c = lane * VN; c < C; c += WARP_SIZE * VN) {
        float v[VN];
        load_vec<T, VN>(x + c, v);
#pragma unroll
        for (int k = 0; k < VN; k++) sum += v[k];
    }
    const float m = warp_sum(sum) / C;
    float sq = 0.0f;
    for (int c = lane * VN; c < C; c += WARP_SIZE * VN) {
        float v[VN];
        load_vec<T, VN>(x + c, v);
#pragma unroll
        for (int k = 0; k < VN; k++) sq += (v[k] - m) * (v[k] - m);
    }
    const float s = rsqrtf(warp_sum(sq) / C + eps);
    T* o = out + row * C;
    for (int c = lane * VN; c < C; c += WARP_SIZE * VN) {
        float v[VN], wv[VN], bv[VN];
        load_vec<T, VN>(x + c, v);
        load_vec<T, VN>(w + c, wv);
        load_vec<T, VN>(b + c, bv);
#pragma unroll
        for (int k = 0; k < VN; k++) v[k] = (v[k] - m) * s * wv[k] + bv[k];
        store_vec<T, VN>(o + c, v);
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

// out (N,C) = (inp − mean)·rstd·w + b; mean, rstd (N).
template <typename T>
__device__ __forceinline__ void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* w,
                                                  const T* b, int N, int C, float eps, int vec) {
    const long long row = global_warp();
    if (row >= N) return;
    if (vec) {
        layernorm_forward_row<T, Vec<T>::N>(out, mean, rstd, inp, w, b, C, eps, row);
    } else {
        layernorm_forward_row<T, 1>(out, mean, rstd, inp, w, b, C, eps, row);
    }
}

// Fused residual add and layernorm forward (each residual add of the schedule feeds a layernorm):
// res (N,C) = x + y, rounded to T and stored, then the layernorm of the stored row exactly as
// layernorm_forward computes it. Each lane reads back only the elements it wrote (the same
// lane-to-channel mapping in both loops), so no barrier is needed and the result has the same bits
// as residual_forward followed by layernorm_forward on the same path (vector or scalar: their sums
// run in different orders), with one launch and one read of the row fewer.
template <typename T, int VN>
__device__ __forceinline__ void residual_row(T* res, const T* x, const T* y, int C) {
    for (int c = lane_id() * VN; c < C; c += WARP_SIZE * VN) residual_span<T, VN>(res, x, y, c);
}

template <typename T>
__device__ __forceinline__ void residual_layernorm_forward(T* res, T* out, float* mean, float* rstd, const T* x,
                                                           const T* y, const T* w, const T* b, int N, int C, float eps,
                                                           int vec) {
    const long long row = global_warp();
    if (row >= N) return;
    const long long at = row * C;
    if (vec) {
        residual_row<T, Vec<T>::N>(res + at, x + at, y + at, C);
        layernorm_forward_row<T, Vec<T>::N>(out, mean, rstd, res, w, b, C, eps, row);
    } else {
        residual_row<T, 1>(res + at, x + at, y + at, C);
        layernorm_forward_row<T, 1>(out, mean, rstd, res, w, b, C, eps, row);
    }
}

template <typename T, int VN>
__device__ __forceinline__ void layernorm_backward_row(T* dinp, const T* dout, const T* inp, const T* w,
                                                      const float* mean, const float* rstd, int C, long long row) {
    const int lane = lane_id();
    const T* x = inp + row * C;
    const T* dy = dout + row * C;
    const float m = mean[row], s = rstd[row];
    float dnorm_sum = 0.0f, dnorm_norm_sum = 0.0f;
    for (int c = lane * VN; c < C; c += WARP_SIZE * VN) {
        float xv[VN], dv[VN], wv[VN];
        load_vec<T, VN>(x + c, xv);
        load_vec<T, VN>(dy + c, dv);
        load_vec<T, VN>(w + c, wv);
#pragma unroll
        for (int k = 0; k < VN; k++) {
            const float dnorm = wv[k] * dv[k];
            dnorm_sum += dnorm;
            dnorm_norm_sum += dnorm * (xv[k] - m) * s;
        }
    }
    warp_sum2(dnorm_sum, dnorm_norm_sum);
    const float dnorm_mean = dnorm_sum / C, dnorm_norm_mean = dnorm_norm_sum / C;
    T* dx = dinp + row * C;
    for (int c = lane * VN; c < C; c += WARP_SIZE * VN) {
        float xv[VN], dv[VN], wv[VN], g[VN];
        load_vec<T, VN>(x + c, xv);
        load_vec<T, VN>(dy + c, dv);
        load_vec<T, VN>(w + c, wv);
        load_vec<T, VN>(dx + c, g);
#pragma unroll
        for (int k = 0; k < VN; k++) {
            const float norm = (xv[k] - m) * s;
            g[k] += (wv[k] * dv[k] - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
        store_vec<T, VN>(dx + c, g);
    }
}

// dinp (N,C) += the input gradient; dw and db are left to the partials below.
template <typename T>
__device__ __forceinline__ void layernorm_backward_dinp(T* dinp, const T* dout, const T* inp, const T* w,
                                                       const float* mean, const float* rstd, int N, int C, int vec) {
    const long long row = global_warp();
    if (row >= N) return;
    if (vec) {
        layernorm_backward_row<T, Vec<T>::N>(dinp, dout, inp, w, mean, rstd, C, row);
    } else {
        layernorm_backward_row<T, 1>(dinp, dout, inp, w, mean, rstd, C, row);
    }
}

// partials[p, c] = Σ norm·dy and partials[p, C + c] = Σ dy over rows [p·R, min((p+1)·R, N)).
// Grid: (ceil(C / LAYERNORM_BLOCK), P).
template <typename T>
__device__ __forceinline__ void layernorm_backward_partials(float* partials, const T* dout, const T* inp,
                                                           const float* mean, const float* rstd, int N, int C,
                                                           int rows_per_chunk) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int p = blockIdx.y;
    if (c >= C) return;
    const long long first = static_cast<long long>(p) * rows_per_chunk;
    const long long last = min(first + rows_per_chunk, static_cast<long long>(N));
    float dw = 0.0f, db = 0.0f;
    for (long long r = first; r < last; r++) {
        const float dy = to_float(dout[r * C + c]);
        dw += (to_float(inp[r * C + c]) - mean[r]) * rstd[r] * dy;
        db += dy;
    }
    partials[static_cast<long long>(p) * 2 * C + c] = dw;
    partials[static_cast<long long>(p) * 2 * C + C + c] = db;
}

#define LN_FWD_PARAMS(T) \
    (T * out, float* mean, float* rstd, const T* inp, const T* w, const T* b, int N, int C, float eps, int vec)
GPTK_ENTRY_POINTS(layernorm_forward, LAYERNORM_BLOCK, LN_FWD_PARAMS, (out, mean, rstd, inp, w, b, N, C, eps, vec))
#define RES_LN_FWD_PARAMS(T)                                                                                    \
    (T * res, T * out, float* mean, float* rstd, const T* x, const T* y, const T* w, const T* b, int N, int C, float eps, \
     int vec)
GPTK_ENTRY_POINTS(residual_layernorm_forward, LAYERNORM_BLOCK, RES_LN_FWD_PARAMS,
                  (res, out, mean, rstd, x, y, w, b, N, C, eps, vec))
#define LN_DINP_PARAMS(T) \
    (T * dinp, const T* dout, const T* inp, const T* w, const float* mean, const float* rstd, int N, int C, int vec)
GPTK_ENTRY_POINTS(layernorm_backward_dinp, LAYERNORM_BLOCK, LN_DINP_PARAMS,
                  (dinp, dout, inp, w, mean, rstd, N, C, vec))
#define LN_PARTIALS_PARAMS(T)                                                                          \
    (float* partials, const T* dout, const T* inp, const float* mean, const float* rstd, int N, int C, \
     int rows_per_chunk)
GPTK_ENTRY_POINTS(layernorm_backward_partials, LAYERNORM_BLOCK, LN_PARTIALS_PARAMS,
                  (partials, dout, inp, mean, rstd, N, C, rows_per_chunk))
