// reduce.cu: reductions over whole spans (CPU twins: norm_squared in cpu/adamw.rs and the
// column sums of cpu/mod.rs `sum_row_chunks`).
//
// sum_squares: Σ x² of a span (the global gradient norm over the whole gradient arena). A fixed
// grid of blocks; each thread squares and sums its grid-strided elements in float (a few hundred
// per thread at GPT-2 sizes), the block adds its threads in double, and each block writes one
// double partial; the host adds the partials in order. Deterministic for a given length.
// Launch: grid ≤ NORM_MAX_BLOCKS, REDUCE_BLOCK threads; 32 doubles of shared memory.
//
// add_column_partials: dst (width) += Σ_p partials[p·stride + offset + c], p in order: the
// second stage of every deterministic column reduction (bias and layernorm-weight gradients),
// one thread per column. Launch: ceil(width / REDUCE_BLOCK) blocks.
#include "common.cuh"

#define REDUCE_BLOCK 256

template <typename T, int VN>
__device__ __forceinline__ float sum_squares_thread(const T* x, long long n) {
    float acc = 0.0f;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x * VN;
    for (long long i = global_thread() * VN; i < n; i += stride) {
        float v[VN];
        load_vec<T, VN>(x + i, v);
#pragma unroll
        for (int k = 0; k < VN; k++) acc += v[k] * v[k];
    }
    return acc;
}

// partials[block] = Σ x² over this block's elements.
template <typename T>
__device__ __forceinline__ void sum_squares(double* partials, const T* x, long long n, int vec) {
    __shared__ double scratch[WARP_SIZE];
    const float mine = vec ? sum_squares_thread<T, Vec<T>::N>(x, n) : sum_squares_thread<T, 1>(x, n);
    const double total = block_sum(static_cast<double>(mine), scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// dst (width) += Σ_{p < count} partials[p·stride + offset + c].
template <typename T>
__device__ __forceinline__ void add_column_partials(T* dst, const float* partials, int count, int width,
                                                    long long stride, long long offset) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= width) return;
    float sum = 0.0f;
    for (int p = 0; p < count; p++) sum += partials[p * stride + offset + c];
    dst[c] = from_float<T>(to_float(dst[c]) + sum);
}

#define SUMSQ_PARAMS(T) (double* partials, const T* x, long long n, int vec)
GPTK_ENTRY_POINTS(sum_squares, REDUCE_BLOCK, SUMSQ_PARAMS, (partials, x, n, vec))
#define ADD_PARTIALS_PARAMS(T) \
    (T * dst, const float* partials, int count, int width, long long stride, long long offset)
GPTK_ENTRY_POINTS(add_column_partials, REDUCE_BLOCK, ADD_PARTIALS_PARAMS, (dst, partials, count, width, stride, offset))
