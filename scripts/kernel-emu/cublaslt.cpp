// cublaslt.cpp: the part of cuBLASLt that gptk's CUDA backend uses (src/backend/cuda/blas.rs, through
// cudarc's dynamic loading), emulated on the CPU, with the real library's ABI and documented
// semantics, so that the backend's GEMMs run on a machine without a GPU and a wrong call gives a
// wrong result or an error here as on a GPU. Device pointers are host addresses (driver.cpp).
//
// Exported: cublasLtCreate/Destroy, cublasLtGetVersion/GetCudartVersion/GetProperty,
// cublasLtGetStatusName/GetStatusString, cublasLtMatrixLayoutCreate/Destroy/SetAttribute,
// cublasLtMatmulDescCreate/Destroy/SetAttribute, cublasLtMatmulPreferenceCreate/Destroy/
// SetAttribute, cublasLtMatmulAlgoGetHeuristic and cublasLtMatmul.
//
// What is emulated: one column-major, non-batched GEMM D = alpha·op(A)·op(B) + beta·C, with
// A/B/C/D all bf16 (CUDA_R_16BF) or all f32, or bf16 A/B with f32 C/D; compute type
// CUBLAS_COMPUTE_32F (or _PEDANTIC), f32 scale type, host alpha and beta. Products accumulate in
// f32, results are rounded to the storage type as __float2bfloat16_rn does. Epilogues: DEFAULT,
// BIAS, GELU, GELU_BIAS, GELU_AUX, GELU_AUX_BIAS, DGELU, BGRADA, BGRADB (tanh-GELU, GPT-2's).
// Anything else the header defines is refused: NOT_SUPPORTED from the heuristic and the matmul.
//
// Checks beyond what a GPU reports (each failure returns a status, and every one but NOT_SUPPORTED
// prints one line to stderr): descriptors must be live (a destroyed or unknown one is
// INVALID_VALUE), an attribute's id and value size must be those of cublasLt.h, and
// cublasLtMatmul refuses an algo found for another problem (types, transposes, epilogue),
// pointers less aligned than the heuristic was told (the MIN_ALIGNMENT_* preferences; for the
// bias and aux vectors, their pointers' alignment when the heuristic ran), and outputs whose
// address ranges overlap an input (except C == D with equal layouts): on a GPU those give
// garbage or a fault, here an error.
//
// Stream order and graph capture: cublasLtMatmul validates the call, copies everything it needs
// (alpha and beta by value) into a job and hands it to the emulated driver's emu_stream_submit,
// which runs it in stream order now or at each launch of the graph being captured.
//
// Built either into one library with driver.cpp (emulated_gpu.py) or alone:
//   g++ -std=c++20 -O2 -shared -fPIC -pthread cublaslt.cpp -o libcublasLt.so
// It includes no CUDA header: the types and values below follow cublasLt.h, cublas_api.h and
// library_types.h of CUDA 13 (cuBLAS 13.x).

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace lt_emu {
namespace {  // nothing but the C API below leaves this file

// ---- ABI constants (cublas_api.h, library_types.h, cublasLt.h of CUDA 13) ----------------------

// cublasStatus_t
enum : int {
    kSuccess = 0, kNotInitialized = 1, kAllocFailed = 3, kInvalidValue = 7, kArchMismatch = 8,
    kMappingError = 11, kExecutionFailed = 13, kInternalError = 14, kNotSupported = 15, kLicenseError = 16,
};
// cudaDataType_t (the two emulated), cublasOperation_t, cublasFillMode_t (FULL)
enum : int { kR32F = 0, kR16BF = 14 };
enum : int { kOpN = 0, kOpT = 1, kOpC = 2 };
constexpr int kFillFull = 2;
// cublasComputeType_t: every value the header defines (others are INVALID_VALUE at creation).
enum : int { kCompute32F = 68, kCompute32FPedantic = 69 };
constexpr int kComputeTypes[] = {64, 65, 68, 69, 70, 71, 72, 73, 74, 75, 77, 78, 79};
// cublasLtEpilogue_t (the emulated ones)
enum : uint32_t {
    kEpiDefault = 1, kEpiBias = 4, kEpiGelu = 32, kEpiGeluBias = 36, kEpiGeluAux = 160, kEpiGeluAuxBias = 164,
    kEpiDGelu = 192, kEpiBGradA = 256, kEpiBGradB = 512,
};
// cublasLtMatmulDescAttributes_t
enum : int {
    kDescComputeType = 0, kDescScaleType = 1, kDescPointerMode = 2, kDescTransA = 3, kDescTransB = 4,
    kDescTransC = 5, kDescFillMode = 6, kDescEpilogue = 7, kDescBiasPointer = 8, kDescAuxPointer = 11,
    kDescAuxLd = 12, kDescSmCountTarget = 15, kDescAuxDataType = 22, kDescFastAccum = 25, kDescBiasDataType = 26,
};
// Past EPILOGUE, the descriptor attributes the emulation reads, or may ignore: SM_COUNT_TARGET and
// FAST_ACCUM (fp8 only) do not change results; the batch strides (10, 13, 14, 39, 40) are unused
// with one matrix. Every other one must keep its default (scale and amax pointers, scale modes,
// emulation descriptor): not emulated.
constexpr int kDescFree[] = {kDescBiasPointer, 10, kDescAuxPointer, kDescAuxLd, 13, 14, kDescSmCountTarget,
                             kDescAuxDataType, kDescFastAccum, kDescBiasDataType, 39, 40};
// cublasLtMatmulPreferenceAttributes_t
enum : int {
    kPrefSearchMode = 0, kPrefMaxWorkspace = 1, kPrefReductionMask = 3, kPrefAlignA = 5, kPrefAlignB = 6,
    kPrefAlignC = 7, kPrefAlignD = 8, kPrefMaxWaves = 9, kPrefImplMask = 12,
};
// cublasLtMatrixLayoutAttribute_t
enum : int {
    kLayoutType = 0, kLayoutOrder = 1, kLayoutRows = 2, kLayoutCols = 3, kLayoutLd = 4, kLayoutBatchCount = 5,
    kLayoutBatchStride = 6,
};

// Attribute tables: the value size in bytes of each attribute id (0: no such id) and its default.
// Matmul descriptor: ids 0..40 (9, 16 and 27..30 do not exist); FILL_MODE defaults to FULL, the
// epilogue to DEFAULT, the aux and bias data types to -1 (= D's type), compute and scale type are
// given at creation.
constexpr int8_t kDescSize[] = {4, 4, 4, 4, 4, 4, 4, 4, 8, 0, 8, 8, 8, 8, 8, 4, 0, 8, 8, 8, 8,
                                8, 4, 8, 8, 1, 4, 0, 0, 0, 0, 4, 4, 4, 4, 4, 8, 4, 8, 8, 8};
// Preference: ids 0..15 (2, 4, 10, 11 do not exist); alignments default to 256 bytes, the
// reduction scheme mask to all (7), the implementation mask to all (-1).
constexpr int8_t kPrefSize[] = {4, 8, 0, 4, 0, 4, 4, 4, 4, 4, 0, 0, 8, 4, 4, 4};
// Matrix layout: ids 0..13; the batch count defaults to 1, the order to CUBLASLT_ORDER_COL (0).
constexpr int8_t kLayoutSize[] = {4, 4, 8, 8, 8, 4, 8, 8, 4, 8, 8, 8, 4, 4};

// The values of one descriptor's attributes, each widened to 64 bits (signed for 1- and 4-byte
// values, as the header's int32_t/int8_t ones; uint32_t ones compare equal after a cast back).
struct Attrs {
    const int8_t* size;
    int count;
    int64_t value[48] = {};

    // cublasLt*SetAttribute: the id must exist and sizeInBytes match the header's type.
    int set(int attr, const void* buf, size_t bytes) {
        if (attr < 0 || attr >= count || size[attr] == 0 || buf == nullptr || bytes != size_t(size[attr]))
            return kInvalidValue;
        if (bytes == 1) { int8_t v; std::memcpy(&v, buf, 1); value[attr] = v; }
        if (bytes == 4) { int32_t v; std::memcpy(&v, buf, 4); value[attr] = v; }
        if (bytes == 8) std::memcpy(&value[attr], buf, 8);
        return kSuccess;
    }
    int32_t i32(int attr) const { return int32_t(value[attr]); }
    uint64_t u64(int attr) const { return uint64_t(value[attr]); }
};

struct Handle { int unused = 0; };
struct Layout { Attrs a{kLayoutSize, int(std::size(kLayoutSize))}; };
struct Desc { Attrs a{kDescSize, int(std::size(kDescSize))}; };
struct Pref { Attrs a{kPrefSize, int(std::size(kPrefSize))}; };

// The semi-opaque structs of the header, byte for byte.
struct Algo { uint64_t data[8]; };
struct HeuristicResult {
    Algo algo;
    size_t workspaceSize;
    int state;
    float wavesCount;
    int reserved[4];
};
static_assert(sizeof(Algo) == 64 && sizeof(HeuristicResult) == 96, "cublasLt.h layouts");

// ---- live objects -------------------------------------------------------------------------------
// Every handle and descriptor is registered with its kind while it lives, so that a destroyed,
// foreign or mistyped one is refused instead of read.

enum class Kind { Handle, Layout, Desc, Pref };
std::mutex registry_lock;
std::unordered_map<const void*, Kind> registry;

int fail(int status, const char* fn, const char* what) {
    if (status != kNotSupported) std::fprintf(stderr, "emulated cuBLASLt: %s: %s\n", fn, what);
    return status;
}

template <class T>
int create(T** out, Kind kind, const char* fn) {
    if (out == nullptr) return fail(kInvalidValue, fn, "null output pointer");
    T* obj = new (std::nothrow) T();
    if (obj == nullptr) return kAllocFailed;
    std::lock_guard<std::mutex> guard(registry_lock);
    registry[obj] = kind;
    *out = obj;
    return kSuccess;
}

template <class T>
T* live(const void* p, Kind kind) {
    std::lock_guard<std::mutex> guard(registry_lock);
    auto it = registry.find(p);
    return it != registry.end() && it->second == kind ? static_cast<T*>(const_cast<void*>(p)) : nullptr;
}

template <class T>
int destroy(void* p, Kind kind, const char* fn) {
    if (p == nullptr) return kSuccess;  // as the library: destroying NULL is a no-op
    {
        std::lock_guard<std::mutex> guard(registry_lock);
        auto it = registry.find(p);
        if (it == registry.end() || it->second != kind)
            return fail(kInvalidValue, fn, "not a live object of this kind");
        registry.erase(it);
    }
    delete static_cast<T*>(p);
    return kSuccess;
}

// The attribute setters of layouts, descriptors and preferences: `p` must be a live object of
// `kind` (named `what` in the message), and the attribute one it has, with its value's size.
template <class T>
int set_attribute(void* p, Kind kind, const char* fn, const char* what, int attr, const void* buf, size_t bytes) {
    T* obj = live<T>(p, kind);
    if (obj == nullptr) return fail(kInvalidValue, fn, what);
    int s = obj->a.set(attr, buf, bytes);
    return s ? fail(s, fn, "unknown attribute or wrong value size") : s;
}

// ---- numbers ------------------------------------------------------------------------------------

float bf16_to_f32(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Round to nearest even, NaN to 0x7fff: __float2bfloat16_rn.
uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

size_t type_size(int type) { return type == kR16BF ? 2 : 4; }

float load(const void* p, int64_t i, int type) {
    return type == kR16BF ? bf16_to_f32(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}

void store(void* p, int64_t i, int type, float x) {
    if (type == kR16BF) static_cast<uint16_t*>(p)[i] = f32_to_bf16(x);
    else static_cast<float*>(p)[i] = x;
}

// tanh-GELU and its derivative, in f32 as the epilogue computes them.
constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluC = 0.044715f;
float gelu(float x) { return 0.5f * x * (1.0f + std::tanh(kGeluK * (x + kGeluC * x * x * x))); }
float gelu_grad(float x) {
    float t = std::tanh(kGeluK * (x + kGeluC * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kGeluK * (1.0f + 3.0f * kGeluC * x * x);
}

bool has_bias(uint32_t e) { return e == kEpiBias || e == kEpiGeluBias || e == kEpiGeluAuxBias; }
bool has_bias_grad(uint32_t e) { return e == kEpiBGradA || e == kEpiBGradB; }
bool has_aux(uint32_t e) { return e == kEpiGeluAux || e == kEpiGeluAuxBias || e == kEpiDGelu; }
bool is_gelu(uint32_t e) { return e == kEpiGelu || e == kEpiGeluBias || e == kEpiGeluAux || e == kEpiGeluAuxBias; }

// ---- the problem a descriptor and four layouts describe -----------------------------------------

struct Problem {
    int64_t m = 0, n = 0, k = 0;
    bool ta = false, tb = false;
    int atype = 0, btype = 0, ctype = 0, dtype = 0;
    int64_t lda = 0, ldb = 0, ldc = 0, ldd = 0;
    uint32_t epilogue = kEpiDefault;
    int bias_type = 0, aux_type = 0;  // resolved (-1 replaced by D's type)
    uint64_t bias = 0, aux = 0;       // BIAS_POINTER, EPILOGUE_AUX_POINTER as set now
    int64_t aux_ld = 0;

    // What an algo is tied to: everything but sizes and pointers.
    uint64_t fingerprint() const {
        return uint64_t(atype) | uint64_t(btype) << 5 | uint64_t(ctype) << 10 | uint64_t(dtype) << 15 |
               uint64_t(bias_type & 31) << 20 | uint64_t(aux_type & 31) << 25 | uint64_t(ta) << 30 |
               uint64_t(tb) << 31 | uint64_t(epilogue) << 32;
    }
};

// Reads one layout: column order, one matrix, rows and cols within int32, ld >= max(1, rows).
int read_layout(const void* handle, const char* name, int* type, int64_t* rows, int64_t* cols, int64_t* ld,
                const char* fn) {
    Layout* l = live<Layout>(handle, Kind::Layout);
    if (l == nullptr) return fail(kInvalidValue, fn, name);
    const Attrs& a = l->a;
    *type = a.i32(kLayoutType);
    *rows = a.value[kLayoutRows];
    *cols = a.value[kLayoutCols];
    *ld = a.value[kLayoutLd];
    // Non-default order, batching, planar complex or grouped layouts are not emulated.
    for (int id = kLayoutOrder; id < a.count; ++id) {
        if (id == kLayoutRows || id == kLayoutCols || id == kLayoutLd || id == kLayoutBatchStride) continue;
        if (a.value[id] != (id == kLayoutBatchCount ? 1 : 0)) return kNotSupported;
    }
    if (*rows < 0 || *cols < 0 || *rows > INT32_MAX || *cols > INT32_MAX) return kNotSupported;
    if (*ld < std::max<int64_t>(1, *rows)) return fail(kInvalidValue, fn, "leading dimension below the row count");
    return kSuccess;
}

// Validates a descriptor and four layouts and reads the problem from them: INVALID_VALUE for what
// conflicts (dimensions, leading dimensions, enum values), NOT_SUPPORTED for valid settings the
// library (or this emulation) has no kernel for.
int describe(const void* desc_handle, const void* a, const void* b, const void* c, const void* d, Problem* p,
             const char* fn) {
    Desc* desc = live<Desc>(desc_handle, Kind::Desc);
    if (desc == nullptr) return fail(kInvalidValue, fn, "matmul descriptor is not live");
    const Attrs& at = desc->a;
    int64_t ar, ac, br, bc, cr, cc, dr, dc;
    int s;
    if ((s = read_layout(a, "A layout is not live", &p->atype, &ar, &ac, &p->lda, fn)) ||
        (s = read_layout(b, "B layout is not live", &p->btype, &br, &bc, &p->ldb, fn)) ||
        (s = read_layout(c, "C layout is not live", &p->ctype, &cr, &cc, &p->ldc, fn)) ||
        (s = read_layout(d, "D layout is not live", &p->dtype, &dr, &dc, &p->ldd, fn)))
        return s;

    // Transposes: N, T, or C (= T for real types); C itself cannot be transposed.
    int opa = at.i32(kDescTransA), opb = at.i32(kDescTransB);
    if (opa < kOpN || opa > kOpC || opb < kOpN || opb > kOpC || at.i32(kDescTransC) < kOpN ||
        at.i32(kDescTransC) > kOpC)
        return fail(kInvalidValue, fn, "TRANSA/TRANSB/TRANSC is not a cublasOperation_t");
    if (at.i32(kDescTransC) != kOpN || at.i32(kDescFillMode) != kFillFull) return kNotSupported;
    p->ta = opa != kOpN;
    p->tb = opb != kOpN;

    // Shapes: op(A) m×k, op(B) k×n, C and D m×n.
    p->m = dr;
    p->n = dc;
    p->k = p->ta ? ar : ac;
    if ((p->ta ? ac : ar) != p->m) return fail(kInvalidValue, fn, "op(A) rows differ from D rows");
    if ((p->tb ? bc : br) != p->k) return fail(kInvalidValue, fn, "op(B) rows differ from op(A) columns");
    if ((p->tb ? br : bc) != p->n) return fail(kInvalidValue, fn, "op(B) columns differ from D columns");
    if (cr != dr || cc != dc) return fail(kInvalidValue, fn, "C and D dimensions differ");

    // Types: the emulated rows of the cublasLtMatmul table; C's type is D's.
    int compute = at.i32(kDescComputeType), scale = at.i32(kDescScaleType);
    if (compute != kCompute32F && compute != kCompute32FPedantic) return kNotSupported;
    if (scale != kR32F || at.i32(kDescPointerMode) != 0) return kNotSupported;  // f32 alpha/beta on the host
    bool bf16_in = p->atype == kR16BF && p->btype == kR16BF;
    bool f32_in = p->atype == kR32F && p->btype == kR32F;
    if (p->ctype != p->dtype) return kNotSupported;
    if (!(bf16_in && (p->dtype == kR16BF || p->dtype == kR32F)) && !(f32_in && p->dtype == kR32F))
        return kNotSupported;

    // Epilogue and its vectors. The bias (and bias gradient) type defaults to D's; f32 is also
    // accepted for a bf16 D. The GELU input (aux) matrix has D's type and an ld >= m divisible by 8.
    uint32_t e = uint32_t(at.i32(kDescEpilogue));
    p->epilogue = e;
    if (e != kEpiDefault && !has_bias(e) && !has_bias_grad(e) && !has_aux(e) && !is_gelu(e)) return kNotSupported;
    p->bias_type = at.i32(kDescBiasDataType) == -1 ? p->dtype : at.i32(kDescBiasDataType);
    bool bias_ok = p->bias_type == p->dtype || (p->dtype == kR16BF && p->bias_type == kR32F);
    if ((has_bias(e) || has_bias_grad(e)) && !bias_ok) return kNotSupported;
    p->aux_type = at.i32(kDescAuxDataType) == -1 ? p->dtype : at.i32(kDescAuxDataType);
    p->bias = at.u64(kDescBiasPointer);
    p->aux = at.u64(kDescAuxPointer);
    p->aux_ld = at.value[kDescAuxLd];
    if (has_aux(e)) {
        if (p->aux_type != p->dtype) return kNotSupported;
        if (p->aux_ld < std::max<int64_t>(1, p->m)) return fail(kInvalidValue, fn, "EPILOGUE_AUX_LD below D's rows");
        if (p->aux_ld % 8 != 0) return kNotSupported;
    }
    for (int id = kDescEpilogue + 1; id < at.count; ++id)
        if (std::find(std::begin(kDescFree), std::end(kDescFree), id) == std::end(kDescFree) && at.value[id] != 0)
            return kNotSupported;
    return kSuccess;
}

// log2 of the largest power of two dividing `ptr`, at most 8 (256 bytes); null counts as 256.
unsigned align_log2(uint64_t ptr) { return ptr == 0 ? 8u : std::min(8u, unsigned(__builtin_ctzll(ptr))); }

// The algo: a magic, the problem's fingerprint and the alignments (log2, 4 bits each, for A, B, C,
// D, bias, aux) every later call must meet. Needs no workspace.
constexpr uint64_t kAlgoMagic = 0x454d554c41544544ull;  // "DETALUME"
enum { kAlignA, kAlignB, kAlignC, kAlignD, kAlignBias, kAlignAux };

// The heuristic's answer for a described problem and the alignments it may assume.
int choose(const Problem& p, const unsigned align[6], Algo* algo) {
    const unsigned elem[6] = {unsigned(type_size(p.atype)), unsigned(type_size(p.btype)), unsigned(type_size(p.ctype)),
                              unsigned(type_size(p.dtype)), unsigned(type_size(p.bias_type)),
                              unsigned(type_size(p.aux_type))};
    uint64_t packed = 0;
    for (int i = 0; i < 6; ++i) {
        if ((1u << align[i]) < elem[i]) return kNotSupported;  // no kernel reads misaligned elements
        packed |= uint64_t(align[i]) << (4 * i);
    }
    *algo = Algo{{kAlgoMagic, p.fingerprint(), packed, 0, 0, 0, 0, 0}};
    return kSuccess;
}

// ---- the computation ----------------------------------------------------------------------------

// Everything one GEMM needs, by value: what cublasLtMatmul saw when it was called.
struct Job {
    Problem p;
    const void *a, *b, *c;
    void* d;
    float alpha, beta;
};

typedef float v4f __attribute__((vector_size(16)));
constexpr int64_t MR = 8, NR = 4;  // register tile of D: 8 rows × 4 columns
constexpr int64_t NB = 64;         // columns of D per block (their op(B) stays in cache)

// op(A) packed in panels of MR rows, p-major (panel[p * MR + r], zero rows past m); op(B) packed
// by column (col[j * k + p], zero columns past n up to a multiple of NR). Both in f32.
struct Packed {
    std::vector<float> a, b;
    int64_t m, n, k, n_pad;
};

void pack(const Job& job, Packed* pk) {
    const Problem& p = job.p;
    pk->m = p.m, pk->n = p.n, pk->k = p.k;
    pk->n_pad = (p.n + NR - 1) / NR * NR;
    int64_t panels = (p.m + MR - 1) / MR;
    pk->a.assign(size_t(panels * MR * p.k), 0.0f);
    pk->b.assign(size_t(pk->n_pad * p.k), 0.0f);
    // Each loop nest walks its source's leading dimension innermost.
    auto put_a = [&](int64_t i, int64_t q) {
        int64_t at = p.ta ? q + i * p.lda : i + q * p.lda;
        pk->a[size_t((i / MR) * MR * p.k + q * MR + i % MR)] = load(job.a, at, p.atype);
    };
    auto put_b = [&](int64_t q, int64_t j) {
        pk->b[size_t(j * p.k + q)] = load(job.b, p.tb ? j + q * p.ldb : q + j * p.ldb, p.btype);
    };
    for (int64_t x = 0; x < (p.ta ? p.m : p.k); ++x)
        for (int64_t y = 0; y < (p.ta ? p.k : p.m); ++y) p.ta ? put_a(x, y) : put_a(y, x);
    for (int64_t x = 0; x < (p.tb ? p.k : p.n); ++x)
        for (int64_t y = 0; y < (p.tb ? p.n : p.k); ++y) p.tb ? put_b(x, y) : put_b(y, x);
}

// The epilogue of one element of D: scale, C, bias, GELU (storing its input) or its gradient.
inline void finish(const Job& job, int64_t i, int64_t j, float acc) {
    const Problem& p = job.p;
    float x = job.alpha * acc;
    if (job.beta != 0.0f) x += job.beta * load(job.c, i + j * p.ldc, p.ctype);  // beta 0: C is not read
    if (has_bias(p.epilogue)) x += load(reinterpret_cast<const void*>(p.bias), i, p.bias_type);
    void* aux = reinterpret_cast<void*>(p.aux);
    if (is_gelu(p.epilogue)) {
        if (has_aux(p.epilogue)) store(aux, i + j * p.aux_ld, p.aux_type, x);
        x = gelu(x);
    } else if (p.epilogue == kEpiDGelu) {
        x *= gelu_grad(load(aux, i + j * p.aux_ld, p.aux_type));
    }
    store(job.d, i + j * p.ldd, p.dtype, x);
}

// D's columns [j_begin, j_end) (multiples of NR, or n_pad): 8×4 tiles over all of k, f32 multiply-adds.
void gemm_columns(const Job& job, const Packed& pk, int64_t j_begin, int64_t j_end) {
    const int64_t k = pk.k, panels = (pk.m + MR - 1) / MR;
    for (int64_t jb = j_begin; jb < j_end; jb += NB) {
        int64_t jb_end = std::min(j_end, jb + NB);
        for (int64_t panel = 0; panel < panels; ++panel) {
            const float* ap = pk.a.data() + panel * MR * k;
            for (int64_t j0 = jb; j0 < jb_end; j0 += NR) {
                const float* b0 = pk.b.data() + j0 * k;
                const float *b1 = b0 + k, *b2 = b1 + k, *b3 = b2 + k;
                v4f c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {}, c30 = {}, c31 = {};
                for (int64_t q = 0; q < k; ++q) {
                    v4f lo, hi;
                    std::memcpy(&lo, ap + q * MR, 16);
                    std::memcpy(&hi, ap + q * MR + 4, 16);
                    c00 += lo * b0[q], c01 += hi * b0[q];
                    c10 += lo * b1[q], c11 += hi * b1[q];
                    c20 += lo * b2[q], c21 += hi * b2[q];
                    c30 += lo * b3[q], c31 += hi * b3[q];
                }
                const v4f tile[NR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
                for (int64_t c = 0; c < NR && j0 + c < pk.n; ++c)
                    for (int64_t r = 0; r < MR && panel * MR + r < pk.m; ++r)
                        finish(job, panel * MR + r, j0 + c, tile[c][r / 4][r % 4]);
            }
        }
    }
}

// BGRADA: the m row sums of op(A) over k; BGRADB: the n column sums of op(B) over k. Written to
// BIAS_POINTER in the bias type, overwriting. Not scaled by alpha.
void bias_gradient(const Job& job, const Packed& pk) {
    const Problem& p = job.p;
    void* out = reinterpret_cast<void*>(p.bias);
    if (p.epilogue == kEpiBGradA) {
        for (int64_t i = 0; i < p.m; ++i) {
            double s = 0;
            for (int64_t q = 0; q < p.k; ++q) s += pk.a[size_t((i / MR) * MR * p.k + q * MR + i % MR)];
            store(out, i, p.bias_type, float(s));
        }
    } else {
        for (int64_t j = 0; j < p.n; ++j) {
            double s = 0;
            for (int64_t q = 0; q < p.k; ++q) s += pk.b[size_t(j * p.k + q)];
            store(out, j, p.bias_type, float(s));
        }
    }
}

// Runs a job (called by the driver in stream order): packs, sums, then the GEMM on up to one
// thread per core, each over its own range of columns.
void run(void* arg) {
    const Job& job = *static_cast<const Job*>(arg);
    Packed pk;
    pack(job, &pk);
    if (has_bias_grad(job.p.epilogue)) bias_gradient(job, pk);
    if (pk.m == 0 || pk.n == 0) return;
    int64_t groups = pk.n_pad / NR;
    double flops = 2.0 * double(pk.m) * double(pk.n) * double(std::max<int64_t>(pk.k, 1));
    int64_t threads = std::min<int64_t>({int64_t(std::max(1u, std::thread::hardware_concurrency())), groups,
                                         int64_t(flops / 4e6) + 1});
    std::vector<int64_t> bound(size_t(threads + 1));
    for (int64_t t = 0; t <= threads; ++t) bound[size_t(t)] = t * groups / threads * NR;
    std::vector<std::thread> pool;
    int64_t started = 1;
    try {
        for (; started < threads; ++started)
            pool.emplace_back([&, t = size_t(started)] { gemm_columns(job, pk, bound[t], bound[t + 1]); });
    } catch (...) {  // no more threads: this one does the rest too
    }
    gemm_columns(job, pk, 0, bound[1]);
    if (started < threads) gemm_columns(job, pk, bound[size_t(started)], bound[size_t(threads)]);
    for (auto& t : pool) t.join();
}

void release(void* arg) { delete static_cast<Job*>(arg); }

// The emulated driver's entry point, found at the first call: in the global scope, else in this
// library and what it links (the backend loads libraries with RTLD_LOCAL).
void* find_driver_symbol(const char* name) {
    void* sym = dlsym(RTLD_DEFAULT, name);
    Dl_info info;
    if (sym == nullptr && dladdr(reinterpret_cast<void*>(&find_driver_symbol), &info) && info.dli_fname) {
        if (void* self = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD)) {
            sym = dlsym(self, name);
            dlclose(self);
        }
    }
    return sym;
}
using SubmitFn = int (*)(void*, void (*)(void*), void*, void (*)(void*));
SubmitFn find_submit() {
    static std::atomic<SubmitFn> cached{nullptr};
    if (SubmitFn f = cached.load()) return f;
    auto f = reinterpret_cast<SubmitFn>(find_driver_symbol("emu_stream_submit"));
    cached.store(f);
    return f;
}
// The driver's check that a byte range lies inside one device allocation (none: not checked).
using InsideFn = int (*)(unsigned long long, unsigned long long);
InsideFn find_inside() {
    static InsideFn f = reinterpret_cast<InsideFn>(find_driver_symbol("emu_device_span"));
    return f;
}

// The byte range a column-major matrix occupies ([0, 0) when empty).
struct Span {
    uint64_t lo = 0, hi = 0;
    Span(const void* ptr, int64_t rows, int64_t cols, int64_t ld, int type) {
        if (ptr == nullptr || rows <= 0 || cols <= 0) return;
        lo = reinterpret_cast<uint64_t>(ptr);
        hi = lo + uint64_t((cols - 1) * ld + rows) * type_size(type);
    }
    bool overlaps(const Span& o) const { return lo < o.hi && o.lo < hi; }
};

}  // namespace
}  // namespace lt_emu

// ---- the C API ------------------------------------------------------------------------------------

using namespace lt_emu;

extern "C" {

int cublasLtCreate(void** handle) { return create(reinterpret_cast<Handle**>(handle), Kind::Handle, "cublasLtCreate"); }
int cublasLtDestroy(void* handle) { return destroy<Handle>(handle, Kind::Handle, "cublasLtDestroy"); }

// cuBLAS 13.4.1 (CUBLAS_VERSION = major·10000 + minor·100 + patch), for CUDA 13.0.
size_t cublasLtGetVersion(void) { return 130401; }
size_t cublasLtGetCudartVersion(void) { return 13000; }

// libraryPropertyType: MAJOR_VERSION 0, MINOR_VERSION 1, PATCH_LEVEL 2.
int cublasLtGetProperty(int type, int* value) {
    if (value == nullptr || type < 0 || type > 2) return fail(kInvalidValue, "cublasLtGetProperty", "bad argument");
    *value = type == 0 ? 13 : type == 1 ? 4 : 1;
    return kSuccess;
}

// cublasStatus_t's names and the library's descriptions of them (internal to this file).
static const char* status_text(int status, bool name) {
    static const struct { int status; const char *name, *text; } table[] = {
        {kSuccess, "CUBLAS_STATUS_SUCCESS", "success"},
        {kNotInitialized, "CUBLAS_STATUS_NOT_INITIALIZED", "the library was not initialized"},
        {kAllocFailed, "CUBLAS_STATUS_ALLOC_FAILED", "the resource allocation failed"},
        {kInvalidValue, "CUBLAS_STATUS_INVALID_VALUE", "an invalid numeric value was used as an argument"},
        {kArchMismatch, "CUBLAS_STATUS_ARCH_MISMATCH", "an absent device architectural feature is required"},
        {kMappingError, "CUBLAS_STATUS_MAPPING_ERROR", "an access to GPU memory space failed"},
        {kExecutionFailed, "CUBLAS_STATUS_EXECUTION_FAILED", "the GPU program failed to execute"},
        {kInternalError, "CUBLAS_STATUS_INTERNAL_ERROR", "an internal operation failed"},
        {kNotSupported, "CUBLAS_STATUS_NOT_SUPPORTED", "the functionality requested is not supported"},
        {kLicenseError, "CUBLAS_STATUS_LICENSE_ERROR", "error detected trying to check the license"},
    };
    for (const auto& t : table)
        if (t.status == status) return name ? t.name : t.text;
    return name ? "CUBLAS_STATUS_UNKNOWN" : "unknown error";
}
const char* cublasLtGetStatusName(int status) { return status_text(status, true); }
const char* cublasLtGetStatusString(int status) { return status_text(status, false); }

// Layout: any data type and sizes are stored; read_layout checks them when used.
int cublasLtMatrixLayoutCreate(void** layout, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    if (layout == nullptr) return fail(kInvalidValue, "cublasLtMatrixLayoutCreate", "null output pointer");
    Layout* l = nullptr;
    int s = create(&l, Kind::Layout, "cublasLtMatrixLayoutCreate");
    if (s != kSuccess) return s;
    l->a.value[kLayoutType] = type;
    l->a.value[kLayoutRows] = int64_t(rows);
    l->a.value[kLayoutCols] = int64_t(cols);
    l->a.value[kLayoutLd] = ld;
    l->a.value[kLayoutBatchCount] = 1;
    *layout = l;
    return kSuccess;
}
int cublasLtMatrixLayoutDestroy(void* layout) {
    return destroy<Layout>(layout, Kind::Layout, "cublasLtMatrixLayoutDestroy");
}
int cublasLtMatrixLayoutSetAttribute(void* layout, int attr, const void* buf, size_t bytes) {
    return set_attribute<Layout>(layout, Kind::Layout, "cublasLtMatrixLayoutSetAttribute", "layout is not live", attr,
                                 buf, bytes);
}

// Descriptor: the compute type must be a cublasComputeType_t; the scale type is checked when used.
int cublasLtMatmulDescCreate(void** desc, int compute_type, int scale_type) {
    if (std::find(std::begin(kComputeTypes), std::end(kComputeTypes), compute_type) == std::end(kComputeTypes))
        return fail(kInvalidValue, "cublasLtMatmulDescCreate", "unknown compute type");
    if (desc == nullptr) return fail(kInvalidValue, "cublasLtMatmulDescCreate", "null output pointer");
    Desc* d = nullptr;
    int s = create(&d, Kind::Desc, "cublasLtMatmulDescCreate");
    if (s != kSuccess) return s;
    d->a.value[kDescComputeType] = compute_type;
    d->a.value[kDescScaleType] = scale_type;
    d->a.value[kDescFillMode] = kFillFull;
    d->a.value[kDescEpilogue] = kEpiDefault;
    d->a.value[kDescAuxDataType] = -1;
    d->a.value[kDescBiasDataType] = -1;
    *desc = d;
    return kSuccess;
}
int cublasLtMatmulDescDestroy(void* desc) { return destroy<Desc>(desc, Kind::Desc, "cublasLtMatmulDescDestroy"); }
int cublasLtMatmulDescSetAttribute(void* desc, int attr, const void* buf, size_t bytes) {
    return set_attribute<Desc>(desc, Kind::Desc, "cublasLtMatmulDescSetAttribute", "descriptor is not live", attr, buf,
                               bytes);
}

int cublasLtMatmulPreferenceCreate(void** pref) {
    if (pref == nullptr) return fail(kInvalidValue, "cublasLtMatmulPreferenceCreate", "null output pointer");
    Pref* p = nullptr;
    int s = create(&p, Kind::Pref, "cublasLtMatmulPreferenceCreate");
    if (s != kSuccess) return s;
    for (int id : {kPrefAlignA, kPrefAlignB, kPrefAlignC, kPrefAlignD}) p->a.value[id] = 256;
    p->a.value[kPrefReductionMask] = 7;
    p->a.value[kPrefImplMask] = -1;
    *pref = p;
    return kSuccess;
}
int cublasLtMatmulPreferenceDestroy(void* pref) {
    return destroy<Pref>(pref, Kind::Pref, "cublasLtMatmulPreferenceDestroy");
}
int cublasLtMatmulPreferenceSetAttribute(void* pref, int attr, const void* buf, size_t bytes) {
    return set_attribute<Pref>(pref, Kind::Pref, "cublasLtMatmulPreferenceSetAttribute", "preference is not live", attr,
                               buf, bytes);
}

// One algorithm (needing no workspace) for a problem the emulation runs, assuming the preference's
// A/B/C/D alignments (powers of two) and the bias and aux pointers' alignment as set in the
// descriptor now; NOT_SUPPORTED with none otherwise. Only the best-fit search mode is emulated.
int cublasLtMatmulAlgoGetHeuristic(void* handle, void* desc, void* a, void* b, void* c, void* d, void* pref,
                                   int requested, HeuristicResult* results, int* returned) {
    const char* fn = "cublasLtMatmulAlgoGetHeuristic";
    if (live<Handle>(handle, Kind::Handle) == nullptr) return fail(kInvalidValue, fn, "handle is not live");
    Pref* pr = live<Pref>(pref, Kind::Pref);
    if (pr == nullptr) return fail(kInvalidValue, fn, "preference is not live");
    if (requested <= 0 || results == nullptr || returned == nullptr) return fail(kInvalidValue, fn, "bad result array");
    *returned = 0;
    Problem p;
    if (int s = describe(desc, a, b, c, d, &p, fn)) return s;
    if (pr->a.i32(kPrefSearchMode) != 0) return kNotSupported;
    unsigned align[6];
    int ids[4] = {kPrefAlignA, kPrefAlignB, kPrefAlignC, kPrefAlignD};
    for (int i = 0; i < 4; ++i) {
        uint32_t v = uint32_t(pr->a.value[ids[i]]);
        if (v == 0 || (v & (v - 1)) != 0) return fail(kInvalidValue, fn, "MIN_ALIGNMENT is not a power of two");
        align[i] = std::min(8u, unsigned(__builtin_ctz(v)));
    }
    align[kAlignBias] = align_log2(has_bias(p.epilogue) || has_bias_grad(p.epilogue) ? p.bias : 0);
    align[kAlignAux] = align_log2(has_aux(p.epilogue) ? p.aux : 0);
    HeuristicResult r{};
    if (int s = choose(p, align, &r.algo)) return s;
    r.workspaceSize = 0;  // within any MAX_WORKSPACE_BYTES, 0 included
    r.state = kSuccess;
    r.wavesCount = 1.0f;
    results[0] = r;
    *returned = 1;
    return kSuccess;
}

// Validates the call completely, then submits it to the stream as a job holding its values.
int cublasLtMatmul(void* handle, void* desc, const void* alpha, const void* a, void* adesc, const void* b,
                   void* bdesc, const void* beta, const void* c, void* cdesc, void* d, void* ddesc,
                   const Algo* algo, void* workspace, size_t workspace_bytes, void* stream) {
    const char* fn = "cublasLtMatmul";
    if (live<Handle>(handle, Kind::Handle) == nullptr) return fail(kInvalidValue, fn, "handle is not live");
    Job job{};
    if (int s = describe(desc, adesc, bdesc, cdesc, ddesc, &job.p, fn)) return s;
    const Problem& p = job.p;
    if (alpha == nullptr || beta == nullptr) return fail(kInvalidValue, fn, "null alpha or beta");
    std::memcpy(&job.alpha, alpha, 4);  // host pointers, f32 scale type: read now
    std::memcpy(&job.beta, beta, 4);
    job.a = a, job.b = b, job.c = c, job.d = d;

    // Pointers: each matrix with elements needs one; C only when beta reads it.
    if ((a == nullptr && p.m * p.k > 0) || (b == nullptr && p.k * p.n > 0) || (d == nullptr && p.m * p.n > 0))
        return fail(kInvalidValue, fn, "null A, B or D");
    if (c == nullptr && job.beta != 0.0f && p.m * p.n > 0) return fail(kInvalidValue, fn, "null C with beta != 0");
    if (c == d && c != nullptr && p.ldc != p.ldd) return fail(kInvalidValue, fn, "C == D with different ld");
    if ((has_bias(p.epilogue) || has_bias_grad(p.epilogue)) && p.bias == 0)
        return fail(kInvalidValue, fn, "the epilogue needs BIAS_POINTER");
    if (has_aux(p.epilogue) && p.aux == 0) return fail(kInvalidValue, fn, "the epilogue needs EPILOGUE_AUX_POINTER");
    if (workspace_bytes > 0 && workspace == nullptr) return fail(kInvalidValue, fn, "null workspace of nonzero size");

    // The algo: from the heuristic for this kind of problem; the pointers as aligned as it assumed.
    uint64_t ptrs[6] = {uint64_t(uintptr_t(a)), uint64_t(uintptr_t(b)), uint64_t(uintptr_t(c)),
                        uint64_t(uintptr_t(d)), p.bias, p.aux};
    bool used[6] = {true, true, job.beta != 0.0f, true, has_bias(p.epilogue) || has_bias_grad(p.epilogue),
                    has_aux(p.epilogue)};
    Algo chosen;
    if (algo == nullptr) {  // as documented: the library runs the heuristic itself, for these pointers
        unsigned align[6];
        for (int i = 0; i < 6; ++i) align[i] = align_log2(ptrs[i]);
        if (int s = choose(p, align, &chosen)) return s;
        algo = &chosen;
    }
    if (algo->data[0] != kAlgoMagic) return fail(kInvalidValue, fn, "algo was not returned by the heuristic");
    if (algo->data[1] != p.fingerprint())
        return fail(kInvalidValue, fn, "algo was found for another problem (types, transposes or epilogue)");
    if (workspace_bytes < algo->data[3]) return fail(kInvalidValue, fn, "workspace smaller than the algo needs");
    for (int i = 0; i < 6; ++i) {
        unsigned need = unsigned(algo->data[2] >> (4 * i)) & 15u;
        if (used[i] && ptrs[i] != 0 && align_log2(ptrs[i]) < need) {
            static const char* names[6] = {"A", "B", "C", "D", "bias", "aux"};
            std::fprintf(stderr, "emulated cuBLASLt: cublasLtMatmul: %s at %#llx is less aligned than the %u bytes "
                         "the heuristic was told\n", names[i], (unsigned long long)ptrs[i], 1u << need);
            return kInvalidValue;
        }
    }

    // Outputs must not overlap inputs (C may be D itself).
    Span sa(a, p.ta ? p.k : p.m, p.ta ? p.m : p.k, p.lda, p.atype);
    Span sb(b, p.tb ? p.n : p.k, p.tb ? p.k : p.n, p.ldb, p.btype);
    Span sc(job.beta != 0.0f ? c : nullptr, p.m, p.n, p.ldc, p.ctype), sd(d, p.m, p.n, p.ldd, p.dtype);
    Span none(nullptr, 0, 0, 1, kR32F);
    Span sx = has_aux(p.epilogue) ? Span(reinterpret_cast<void*>(p.aux), p.m, p.n, p.aux_ld, p.aux_type) : none;
    Span sg = has_bias_grad(p.epilogue)
                  ? Span(reinterpret_cast<void*>(p.bias), p.epilogue == kEpiBGradA ? p.m : p.n, 1,
                         std::max<int64_t>(1, p.epilogue == kEpiBGradA ? p.m : p.n), p.bias_type)
                  : none;
    if (sd.overlaps(sa) || sd.overlaps(sb) || (c != d && sd.overlaps(sc)))
        return fail(kInvalidValue, fn, "D overlaps A, B or C");
    if (sx.overlaps(sa) || sx.overlaps(sb) || sx.overlaps(sc) || sx.overlaps(sd))
        return fail(kInvalidValue, fn, "the aux matrix overlaps A, B, C or D");
    if (sg.overlaps(sa) || sg.overlaps(sb) || sg.overlaps(sc) || sg.overlaps(sd))
        return fail(kInvalidValue, fn, "the bias gradient overlaps A, B, C or D");

    // Every operand inside one device allocation, where the driver can tell.
    if (InsideFn inside = find_inside()) {
        Span sbias = has_bias(p.epilogue) ? Span(reinterpret_cast<void*>(p.bias), p.m, 1, std::max<int64_t>(1, p.m),
                                                 p.bias_type)
                                          : none;
        Span sw = none;
        if (workspace != nullptr) sw.lo = reinterpret_cast<uint64_t>(workspace), sw.hi = sw.lo + workspace_bytes;
        const Span* spans[] = {&sa, &sb, &sc, &sd, &sx, &sg, &sbias, &sw};
        const char* names[] = {"A", "B", "C", "D", "the aux matrix", "the bias gradient", "the bias", "the workspace"};
        for (int i = 0; i < 8; ++i)
            if (spans[i]->hi > spans[i]->lo && !inside(spans[i]->lo, spans[i]->hi - spans[i]->lo)) {
                std::fprintf(stderr, "emulated cuBLASLt: cublasLtMatmul: %s is not inside one device allocation\n",
                             names[i]);
                return kInvalidValue;
            }
    }

    SubmitFn submit = find_submit();
    if (submit == nullptr) return fail(kNotInitialized, fn, "emu_stream_submit not found (no emulated driver)");
    Job* owned = new (std::nothrow) Job(job);
    if (owned == nullptr) return kAllocFailed;
    // From here the driver owns the job: it calls release even when it refuses the work.
    int r = submit(stream, &run, owned, &release);
    if (r != 0) {
        std::fprintf(stderr, "emulated cuBLASLt: cublasLtMatmul: the stream refused the work (CUresult %d)\n", r);
        return kExecutionFailed;
    }
    return kSuccess;
}

}  // extern "C"
