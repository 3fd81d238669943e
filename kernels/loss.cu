// loss.cu: fused softmax cross-entropy over the padded vocabulary, with an ignore index
// (CPU twin: cpu/loss.rs).
//
// Algorithm: one block per row of logits (N, Vp). Pass 1 finds the maximum of the first V
// columns, pass 2 sums exp(x − max) (both block reductions in a fixed order), giving
// lse = max + log(sum) and loss = lse − x[target] (f32). With a dloss, pass 3 overwrites the row
// in place with dlogits = dloss·(softmax − onehot) over the first V columns and zeros in the
// padding columns, so the classifier needs no second (N, Vp) buffer. Rows whose target is
// negative are ignored: loss 0 and, with a dloss, a zero row. A target ≥ V (never produced by the
// model, which checks its batches) yields a NaN loss rather than a read out of bounds.
// Each thread steps over VN consecutive columns (16-byte vectors when Vp and the row start
// allow; Vp is a multiple of 128 in every model).
// Launch: grid N, LOSS_BLOCK threads. Resources: 32 floats of shared memory for the reductions.
// Deterministic.
#include "common.cuh"

#define LOSS_BLOCK 512

template <typename T, int VN>
__device__ __forceinline__ void cross_entropy_row(float* losses, T* logits, const int* targets, int V, int Vp,
                                                 float dloss, int has_dloss) {
    __shared__ float scratch[WARP_SIZE];
    const long long row = blockIdx.x;
    T* x = logits + row * Vp;
    const int target = targets[row];
    const int step = blockDim.x * VN;
    if (target < 0) {
        if (threadIdx.x == 0) losses[row] = 0.0f;
        if (has_dloss) {
            float zeros[VN];
#pragma unroll
            for (int k = 0; k < VN; k++) zeros[k] = 0.0f;
            for (int j = threadIdx.x * VN; j < Vp; j += step) store_vec<T, VN>(x + j, zeros);
        }
        return;
    }
    float max = -INFINITY;
    for (int j = threadIdx.x * VN; j < V; j += step) {
        float v[VN];
        load_vec<T, VN>(x + j, v);
#pragma unroll
        for (int k = 0; k < VN; k++)
            if (j + k < V) max = fmaxf(max, v[k]);
    }
    max = block_max(max, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x * VN; j < V; j += step) {
        float v[VN];
        load_vec<T, VN>(x + j, v);
#pragma unroll
        for (int k = 0; k < VN; k++)
            if (j + k < V) sum += expf(v[k] - max);
    }
    sum = block_sum(sum, scratch);
    const float lse = max + logf(sum);
    if (threadIdx.x == 0) losses[row] = target < V ? lse - to_float(x[target]) : NAN;
    if (!has_dloss) return;
    __syncthreads();  // x[target] is read before the row is overwritten
    for (int j = threadIdx.x * VN; j < Vp; j += step) {
        float v[VN];
        load_vec<T, VN>(x + j, v);
#pragma unroll
        for (int k = 0; k < VN; k++) {
            const int col = j + k;
            v[k] = col < V ? (expf(v[k] - lse) - (col == target ? 1.0f : 0.0f)) * dloss : 0.0f;
        }
        store_vec<T, VN>(x + j, v);
    }
}

// losses (N) and, with has_dloss, dlogits in place of logits (N, Vp).
template <typename T>
__device__ __forceinline__ void cross_entropy(float* losses, T* logits, const int* targets, int V, int Vp, float dloss,
                                              int has_dloss, int vec) {
    if (vec) {
        cross_entropy_row<T, Vec<T>::N>(losses, logits, targets, V, Vp, dloss, has_dloss);
    } else {
        cross_entropy_row<T, 1>(losses, logits, targets, V, Vp, dloss, has_dloss);
    }
}

#define CE_PARAMS(T) (float* losses, T* logits, const int* targets, int V, int Vp, float dloss, int has_dloss, int vec)
GPTK_ENTRY_POINTS(cross_entropy, LOSS_BLOCK, CE_PARAMS, (losses, logits, targets, V, Vp, dloss, has_dloss, vec))
