// adamw.cu: one AdamW step over the whole parameter arena in one launch (CPU twin:
// cpu/adamw.rs).
//
// Algorithm (PyTorch's AdamW): g = grad·grad_scale; m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;
// p ← p − lr·(wd·p + (m/bc1)/(√(v/bc2) + ε)), with weight decay only below `decay_end` (the
// layout puts every 2-D weight first). The bias corrections bc1 = 1 − β1^t, bc2 = 1 − β2^t come
// from the host in double precision. m, v and the master weights are f32. In bf16 storage the
// master copy is the truth and the bf16 parameters the forward reads are written from it with
// stochastic rounding, seeded per step, so small updates are not lost to rounding on average;
// the random bits depend only on (seed, element), so a step is reproducible. In f32 storage the
// parameters are the master (the f32 entry point never touches `params`).
// Updates elements [start, end) of the arena (all of it alone; one shard under data parallelism,
// ZeRO-1): indices, weight decay and the stochastic-rounding bits are those of the whole arena,
// so a shard is updated exactly as the same elements of an unsharded step would be.
// Launch: 1-D grid of ADAMW_BLOCK threads over end − start, each owning ADAMW_ELEMS consecutive
// elements (one float4 of master, m and v; start and end are multiples of 64). Resources:
// registers only. Deterministic.
#include "common.cuh"

#define ADAMW_BLOCK 256
#define ADAMW_ELEMS 4

template <typename T>
__device__ __forceinline__ void adamw(T* params, float* master, const T* grads, float* m, float* v, long long start,
                                      long long end, long long decay_end, float lr, float beta1, float beta2, float eps,
                                      float wd, float bc1, float bc2, float grad_scale, unsigned long long seed) {
    const long long i0 = start + global_thread() * ADAMW_ELEMS;
    if (i0 >= end) return;
    float4 p4 = *reinterpret_cast<const float4*>(master + i0);
    float4 m4 = *reinterpret_cast<const float4*>(m + i0);
    float4 v4 = *reinterpret_cast<const float4*>(v + i0);
    float* p = reinterpret_cast<float*>(&p4);
    float* mm = reinterpret_cast<float*>(&m4);
    float* vv = reinterpret_cast<float*>(&v4);
#pragma unroll
    for (int k = 0; k < ADAMW_ELEMS; k++) {
        const long long i = i0 + k;
        const float g = to_float(grads[i]) * grad_scale;
        mm[k] = beta1 * mm[k] + (1.0f - beta1) * g;
        vv[k] = beta2 * vv[k] + (1.0f - beta2) * g * g;
        const float decay = i < decay_end ? wd : 0.0f;
        const float update = (mm[k] / bc1) / (sqrtf(vv[k] / bc2) + eps);
        p[k] -= lr * (decay * p[k] + update);
        if constexpr (sizeof(T) == 2) params[i] = round_bf16_stochastic(p[k], random_bits(seed, i));
    }
    *reinterpret_cast<float4*>(master + i0) = p4;
    *reinterpret_cast<float4*>(m + i0) = m4;
    *reinterpret_cast<float4*>(v + i0) = v4;
}

#define ADAMW_PARAMS(T)                                                                                              \
    (T * params, float* master, const T* grads, float* m, float* v, long long start, long long end,               \
     long long decay_end, float lr, float beta1, float beta2, float eps, float wd, float bc1, float bc2,           \
     float grad_scale, unsigned long long seed)
GPTK_ENTRY_POINTS(adamw, ADAMW_BLOCK, ADAMW_PARAMS,
                  (params, master, grads, m, v, start, end, decay_end, lr, beta1, beta2, eps, wd, bc1, bc2, grad_scale,
                   seed))

// ---- a step's optimizer with nothing read back (a CUDA graph holds it) ---------------------------
// The values of one step that change from step to step live in device memory, so that a recorded
// step stays right: the host writes lr, bc1, bc2, clip and seed before the step (StepScalars in
// the Rust backend mirrors this layout); step_scalars writes the rest from the gradients' sums of
// squares and the losses; adamw_step reads them.
struct StepScalars {
    float lr, bc1, bc2, clip;  // from the host; clip ≤ 0: no clipping
    unsigned long long seed;   // from the host
    double loss_sum;           // Σ of the step's losses
    float grad_norm;           // global L2 norm of the gradients
    float grad_scale;          // clip / grad_norm above clip, else 1
    int apply;                 // AdamW runs: some target counted and the norm and losses are finite
    int pad;
};

#define STEP_SCALARS_BLOCK 32

// One block of STEP_SCALARS_BLOCK threads, in double precision and in the orders the host sums in
// (so that a recorded step gets the host's bits): thread k sums the losses k, k + 32, … in order
// and thread 0 adds the 32 lane sums in order (the host's `sum_losses`); thread 1 then sums the
// `blocks` per-block sums of squares of sum_squares in order; thread 0 derives the norm, the
// clipping scale and whether to apply. `count`: how many targets the losses count.
template <typename T>
__device__ __forceinline__ void step_scalars(StepScalars* s, const double* partials, int blocks, const float* losses,
                                             long long n, int count) {
    __shared__ double lanes[STEP_SCALARS_BLOCK];
    __shared__ double norm_squared;
    double lane = 0.0;
    for (long long i = threadIdx.x; i < n; i += STEP_SCALARS_BLOCK) lane += static_cast<double>(losses[i]);
    lanes[threadIdx.x] = lane;
    if (threadIdx.x == 1) {
        double sum = 0.0;
        for (int i = 0; i < blocks; i++) sum += partials[i];
        norm_squared = sum;
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    double loss_sum = 0.0;
    for (int k = 0; k < STEP_SCALARS_BLOCK; k++) loss_sum += lanes[k];
    const float norm = static_cast<float>(sqrt(norm_squared));
    s->loss_sum = loss_sum;
    s->grad_norm = norm;
    s->grad_scale = s->clip > 0.0f && norm > s->clip ? s->clip / norm : 1.0f;
    s->apply = count > 0 && isfinite(loss_sum) && isfinite(norm);
}

// adamw with the step's values from `s`, and nothing done unless s->apply.
template <typename T>
__device__ __forceinline__ void adamw_step(T* params, float* master, const T* grads, float* m, float* v,
                                           long long start, long long end, long long decay_end, float beta1,
                                           float beta2, float eps, float wd, const StepScalars* s) {
    if (!s->apply) return;
    adamw<T>(params, master, grads, m, v, start, end, decay_end, s->lr, beta1, beta2, eps, wd, s->bc1, s->bc2,
             s->grad_scale, s->seed);
}

#define STEP_SCALARS_PARAMS(T) (StepScalars * s, const double* partials, int blocks, const float* losses, long long n, int count)
GPTK_ENTRY_POINTS(step_scalars, STEP_SCALARS_BLOCK, STEP_SCALARS_PARAMS, (s, partials, blocks, losses, n, count))
#define ADAMW_STEP_PARAMS(T)                                                                                         \
    (T * params, float* master, const T* grads, float* m, float* v, long long start, long long end,               \
     long long decay_end, float beta1, float beta2, float eps, float wd, const StepScalars* s)
GPTK_ENTRY_POINTS(adamw_step, ADAMW_BLOCK, ADAMW_STEP_PARAMS,
                  (params, master, grads, m, v, start, end, decay_end, beta1, beta2, eps, wd, s))
