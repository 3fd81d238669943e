// gelu.cu: tanh-GELU forward and backward, and the residual add (CPU twin: cpu/gelu.rs).
//
// Algorithm: elementwise; each thread owns VN consecutive elements (one 16-byte vector on the
// fast path, one element on the scalar path the host picks for unaligned or ragged spans), widens
// them to float, and writes the result rounded to nearest. tanhf is the accurate libm version:
// the build does not use --use_fast_math.
// Launch: 1-D grid of ELEMENTWISE_BLOCK threads, ceil(n / VN) threads in all.
// Resources: no shared memory, a handful of registers; bandwidth-bound.
// Outputs: gelu_forward and residual_forward overwrite `out`; gelu_backward turns d (gradient
// w.r.t. the GELU output) into the gradient w.r.t. its input, in place. Deterministic.
#include "common.cuh"

#define ELEMENTWISE_BLOCK 256

#define GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_CUBIC 0.044715f

template <typename T, int VN>
__device__ __forceinline__ void gelu_forward_span(T* out, const T* inp, long long i) {
    float x[VN], y[VN];
    load_vec<T, VN>(inp + i, x);
#pragma unroll
    for (int k = 0; k < VN; k++) {
        float u = GELU_SQRT_2_OVER_PI * (x[k] + GELU_CUBIC * x[k] * x[k] * x[k]);
        y[k] = 0.5f * x[k] * (1.0f + tanhf(u));
    }
    store_vec<T, VN>(out + i, y);
}

// out (n) = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
template <typename T>
__device__ __forceinline__ void gelu_forward(T* out, const T* inp, long long n, int vec) {
    const long long t = global_thread();
    if (vec) {
        constexpr int VN = Vec<T>::N;
        if (t * VN < n) gelu_forward_span<T, VN>(out, inp, t * VN);
    } else if (t < n) {
        gelu_forward_span<T, 1>(out, inp, t);
    }
}

template <typename T, int VN>
__device__ __forceinline__ void gelu_backward_span(T* d, const T* inp, long long i) {
    float x[VN], g[VN];
    load_vec<T, VN>(inp + i, x);
    load_vec<T, VN>(d + i, g);
#pragma unroll
    for (int k = 0; k < VN; k++) {
        float th = tanhf(GELU_SQRT_2_OVER_PI * (x[k] + GELU_CUBIC * x[k] * x[k] * x[k]));
        float du = GELU_SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_CUBIC * x[k] * x[k]);
        g[k] *= 0.5f * (1.0f + th) + 0.5f * x[k] * (1.0f - th * th) * du;
    }
    store_vec<T, VN>(d + i, g);
}

// d (n): dL/d(out) on entry, dL/d(inp) on exit.
template <typename T>
__device__ __forceinline__ void gelu_backward(T* d, const T* inp, long long n, int vec) {
    const long long t = global_thread();
    if (vec) {
        constexpr int VN = Vec<T>::N;
        if (t * VN < n) gelu_backward_span<T, VN>(d, inp, t * VN);
    } else if (t < n) {
        gelu_backward_span<T, 1>(d, inp, t);
    }
}

// out (n) = a + b.
template <typename T>
__device__ __forceinline__ void residual_forward(T* out, const T* a, const T* b, long long n, int vec) {
    const long long t = global_thread();
    if (vec) {
        constexpr int VN = Vec<T>::N;
        if (t * VN < n) residual_span<T, VN>(out, a, b, t * VN);
    } else if (t < n) {
        residual_span<T, 1>(out, a, b, t);
    }
}

#define GELU_FWD_PARAMS(T) (T * out, const T* inp, long long n, int vec)
GPTK_ENTRY_POINTS(gelu_forward, ELEMENTWISE_BLOCK, GELU_FWD_PARAMS, (out, inp, n, vec))
#define GELU_BWD_PARAMS(T) (T * d, const T* inp, long long n, int vec)
GPTK_ENTRY_POINTS(gelu_backward, ELEMENTWISE_BLOCK, GELU_BWD_PARAMS, (d, inp, n, vec))
#define RESIDUAL_PARAMS(T) (T * out, const T* a, const T* b, long long n, int vec)
GPTK_ENTRY_POINTS(residual_forward, ELEMENTWISE_BLOCK, RESIDUAL_PARAMS, (out, a, b, n, vec))
