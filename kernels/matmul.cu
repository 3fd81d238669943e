// matmul.cu: the pieces of the linear layers that are not GEMMs (CPU twin: cpu/matmul.rs).
// The GEMMs themselves run in cuBLASLt (src/backend/cuda/blas.rs), which fuses the bias add of
// the forward into its epilogue where it can.
//
// bias_add: out (N,OC) += bias (OC) broadcast over rows, for the GEMMs whose bias pointer the
// library's fused epilogue cannot take. One thread per element (VN elements on the vector path).
// Launch: 1-D grid of MATMUL_BLOCK threads.
//
// bias_grad_partials: the first stage of dbias (OC) += Σ_n dout (N,OC): the rows are split into
// P fixed chunks; one thread per (column, chunk) sums its rows in order into partials (P, OC),
// coalesced over OC; add_column_partials (reduce.cu) adds the chunks in order. Deterministic,
// unlike an atomic column sum. The backend normally sums the bias gradient in the weight GEMM's
// cuBLASLt epilogue (BGRADB, into f32 that add_column_partials then adds, since the epilogue
// overwrites and gradients accumulate); this kernel is the path where cuBLASLt has none.
// Launch: grid (ceil(OC / MATMUL_BLOCK), P). Resources: registers only.
#include "common.cuh"

#define MATMUL_BLOCK 256

template <typename T, int VN>
__device__ __forceinline__ void bias_add_span(T* out, const T* bias, int OC, long long i) {
    const int c = static_cast<int>(i % OC);
    float o[VN], b[VN];
    load_vec<T, VN>(out + i, o);
    load_vec<T, VN>(bias + c, b);
#pragma unroll
    for (int k = 0; k < VN; k++) o[k] += b[k];
    store_vec<T, VN>(out + i, o);
}

// out (N,OC) += bias; total = N·OC.
template <typename T>
__device__ __forceinline__ void bias_add(T* out, const T* bias, int OC, long long total, int vec) {
    const long long t = global_thread();
    if (vec) {
        constexpr int VN = Vec<T>::N;
        if (t * VN < total) bias_add_span<T, VN>(out, bias, OC, t * VN);
    } else if (t < total) {
        bias_add_span<T, 1>(out, bias, OC, t);
    }
}

// partials[p, c] = Σ dout[r, c] over rows [p·R, min((p+1)·R, N)).
template <typename T>
__device__ __forceinline__ void bias_grad_partials(float* partials, const T* dout, int N, int OC, int rows_per_chunk) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int p = blockIdx.y;
    if (c >= OC) return;
    const long long first = static_cast<long long>(p) * rows_per_chunk;
    const long long last = min(first + rows_per_chunk, static_cast<long long>(N));
    float sum = 0.0f;
    for (long long r = first; r < last; r++) sum += to_float(dout[r * OC + c]);
    partials[static_cast<long long>(p) * OC + c] = sum;
}

#define BIAS_ADD_PARAMS(T) (T * out, const T* bias, int OC, long long total, int vec)
GPTK_ENTRY_POINTS(bias_add, MATMUL_BLOCK, BIAS_ADD_PARAMS, (out, bias, OC, total, vec))
#define BIAS_GRAD_PARAMS(T) (float* partials, const T* dout, int N, int OC, int rows_per_chunk)
GPTK_ENTRY_POINTS(bias_grad_partials, MATMUL_BLOCK, BIAS_GRAD_PARAMS, (partials, dout, N, OC, rows_per_chunk))
