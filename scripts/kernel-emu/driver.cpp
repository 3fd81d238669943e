// driver.cpp: the part of the CUDA driver API that gptk's CUDA backend uses (through cudarc),
// emulated on the CPU, so that the backend's own host code (context, arenas, copies, launches
// with their grids, shared memory and arguments, events, CUDA graphs) runs end to end on a
// machine without a GPU, with the kernels of kernels/*.cu executed by the emulation of emu.h.
// build.py compiles it with the kernels (and cublaslt.cpp) into one library, which stands in for
// libcuda.so and libcublasLt.so on LD_LIBRARY_PATH.
//
// The device: one "Emulated GPU" of compute capability 9.0 (so the sm_90a kernels load), with
// Hopper's limits (1024 threads and 227 KB of opt-in shared memory per block, grid y and z up to
// 65535). Device memory is host memory: a device pointer is a host address. Fresh allocations
// are filled with 0xFF bytes (a NaN in f32 and bf16), as a GPU's are not zeroed.
//
// Streams run their work at once, in the calling thread, in issue order: every stream is
// synchronous, which is one of the orders a GPU may take. A launch runs its blocks by index, or
// in reverse with GPTK_EMU_BLOCK_ORDER=reverse (see cuInit). While a stream is captured, its
// work is recorded into the graph instead and runs at each launch of the graph. What the real
// driver refuses during a capture is refused here too, and the capture is then invalidated:
// waiting for the stream or the context, allocating memory, and copies between host and device
// (the backend records no host copies in its graph).
//
// Tensor maps (cuTensorMapEncodeTiled, for the kernels' TMA copies) are encoded by emu.h's
// emu_tensor_map_encode after the driver's enums are mapped to what it takes; it refuses what the
// real driver would (or what it does not model), and so do the enums here.
//
// Checks that a GPU makes and the emulation adds: a launch's block no larger than the kernel's
// __launch_bounds__, its dynamic shared memory within what the function was allowed (48 KB
// without the attribute), a grid within the device's limits, copies and fills inside one
// allocation, a tensor map's tensor inside one allocation, frees of live allocations only. A
// failed check returns the driver's error for it and prints one line to stderr saying which.
//
// Not modelled: concurrency between streams, timing (events measure the host's time), memory
// access faults inside kernels, multi-dimensional blocks, three-dimensional grids, tensor maps of
// other than tiled layout, the rounding data types (TF32, FTZ) and the swizzles with atoms.

#include <cuda.h>

#include <chrono>
#include <map>

namespace drv {

constexpr int kComputeMajor = 9, kComputeMinor = 0;
constexpr int kMultiprocessors = 132;
constexpr int kMaxThreads = 1024;
constexpr int kDefaultSmem = 48 * 1024;
constexpr int kMaxSmemOptin = 227 * 1024;
constexpr size_t kTotalMemory = size_t{16} << 30;
constexpr size_t kAlign = 256;
constexpr const char* kName = "Emulated GPU (kernel emulation on the CPU)";

// Every call runs under this lock: the emulation's launch state is global.
std::recursive_mutex lock;

using Work = std::shared_ptr<std::function<void()>>;

struct Graph {
    std::vector<Work> nodes;
};

struct Stream {
    Graph* capture = nullptr;
    bool invalidated = false;
};

struct Event {
    unsigned flags = 0;
    bool recorded = false;
    double ms = 0;
};

struct Function {
    const emu::EntryPoint* entry;
    int max_dynamic_smem = kDefaultSmem;
};

struct Module {
    std::map<std::string, std::unique_ptr<Function>> functions;
};

Stream default_stream;
std::map<uintptr_t, size_t> allocations;  // start → bytes
size_t allocated = 0;
int context_token = 0;
const auto started = std::chrono::steady_clock::now();

CUresult fail(CUresult code, const char* what) {
    std::fprintf(stderr, "emulated driver: %s\n", what);
    return code;
}

Stream* stream_of(CUstream s) { return s ? reinterpret_cast<Stream*>(s) : &default_stream; }

// Runs `work` now, or records it when the stream is captured.
CUresult submit(CUstream s, std::function<void()> work) {
    Stream* stream = stream_of(s);
    if (stream->capture) {
        stream->capture->nodes.push_back(std::make_shared<std::function<void()>>(std::move(work)));
    } else {
        work();
    }
    return CUDA_SUCCESS;
}

// The streams cuStreamCreate made (only those can be captured).
std::vector<Stream*> streams;

bool any_capture() {
    for (Stream* s : streams)
        if (s->capture) return true;
    return false;
}

// An operation the driver refuses while `s` is captured: invalidates the capture.
CUresult refuse_in_capture(Stream* s, const char* what) {
    s->invalidated = true;
    std::fprintf(stderr, "emulated driver: %s while the stream is captured into a graph\n", what);
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}

// Whether [p, p + bytes) lies inside one allocation.
bool inside(uintptr_t p, size_t bytes) {
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin()) return false;
    --it;
    return p >= it->first && p + bytes <= it->first + it->second;
}

CUresult check_span(CUdeviceptr p, size_t bytes, const char* what) {
    if (bytes == 0 || inside(static_cast<uintptr_t>(p), bytes)) return CUDA_SUCCESS;
    char line[200];
    std::snprintf(line, sizeof line, "%s of %zu bytes at 0x%llx is not inside one allocation", what, bytes,
                  static_cast<unsigned long long>(p));
    return fail(CUDA_ERROR_INVALID_VALUE, line);
}

CUresult allocate(CUdeviceptr* out, size_t bytes) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (bytes == 0) return fail(CUDA_ERROR_INVALID_VALUE, "an allocation of 0 bytes");
    if (allocated + bytes > kTotalMemory) return CUDA_ERROR_OUT_OF_MEMORY;
    size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
    void* p = std::aligned_alloc(kAlign, rounded);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    std::memset(p, 0xFF, rounded);
    allocations[reinterpret_cast<uintptr_t>(p)] = bytes;
    allocated += bytes;
    *out = reinterpret_cast<CUdeviceptr>(p);
    return CUDA_SUCCESS;
}

CUresult release(CUdeviceptr p) {
    auto it = allocations.find(static_cast<uintptr_t>(p));
    if (it == allocations.end()) return fail(CUDA_ERROR_INVALID_VALUE, "freeing memory that is not allocated");
    allocated -= it->second;
    allocations.erase(it);
    std::free(reinterpret_cast<void*>(p));
    return CUDA_SUCCESS;
}

double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
}

}  // namespace drv

#define GUARD std::lock_guard<std::recursive_mutex> guard(drv::lock)

// Runs `run(arg)` in stream order on `stream` (now, or at each launch of the graph the stream is
// being captured into); `release(arg)` once it can never run again. For cublaslt.cpp.
extern "C" int emu_stream_submit(void* stream, void (*run)(void*), void* arg, void (*release)(void*)) {
    GUARD;
    auto owner = std::shared_ptr<void>(arg, release ? release : [](void*) {});
    return drv::submit(static_cast<CUstream>(stream), [run, owner] { run(owner.get()); });
}

// Whether [p, p + bytes) lies inside one device allocation. For cublaslt.cpp.
extern "C" int emu_device_span(unsigned long long p, unsigned long long bytes) {
    GUARD;
    return drv::inside(static_cast<uintptr_t>(p), bytes);
}

extern "C" {

// ---- errors, driver, device -------------------------------------------------------------------

CUresult cuGetErrorString(CUresult error, const char** str) {
    if (!str) return CUDA_ERROR_INVALID_VALUE;
    switch (error) {
        case CUDA_SUCCESS: *str = "no error"; break;
        case CUDA_ERROR_INVALID_VALUE: *str = "invalid argument"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *str = "out of memory"; break;
        case CUDA_ERROR_NOT_FOUND: *str = "named symbol not found"; break;
        case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: *str = "operation not permitted when stream is capturing"; break;
        case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: *str = "operation failed due to a previous error during capture"; break;
        default: *str = "emulated driver error"; break;
    }
    return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char** str) { return cuGetErrorString(error, str); }

// GPTK_EMU_BLOCK_ORDER=reverse runs every launch's blocks in reverse index order (a GPU may take
// any): results that depend on the order show against a run by index.
CUresult cuInit(unsigned int flags) {
    const char* order = std::getenv("GPTK_EMU_BLOCK_ORDER");
    emu_set_block_order(order && std::strcmp(order, "reverse") == 0);
    return flags == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuDriverGetVersion(int* version) {
    if (!version) return CUDA_ERROR_INVALID_VALUE;
    *version = CUDA_VERSION;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int* count) {
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    *count = 1;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice* device, int ordinal) {
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *device = 0;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice device) {
    if (!name || len <= 0 || device != 0) return CUDA_ERROR_INVALID_VALUE;
    std::snprintf(name, static_cast<size_t>(len), "%s", drv::kName);
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem(size_t* bytes, CUdevice device) {
    if (!bytes || device != 0) return CUDA_ERROR_INVALID_VALUE;
    *bytes = drv::kTotalMemory;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* value, CUdevice_attribute attribute, CUdevice device) {
    if (!value || device != 0) return CUDA_ERROR_INVALID_VALUE;
    switch (attribute) {
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *value = drv::kComputeMajor; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *value = drv::kComputeMinor; break;
        case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *value = drv::kMultiprocessors; break;
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = drv::kMaxThreads; break;
        case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *value = 32; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *value = drv::kDefaultSmem; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *value = drv::kMaxSmemOptin; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: *value = 228 * 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *value = 2147483647; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y:
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *value = 65535; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X:
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *value = 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *value = 64; break;
        case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *value = 1; break;
        case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *value = 1; break;
        case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: *value = 50 * 1024 * 1024; break;
        case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: *value = 1980000; break;
        case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: *value = 2619000; break;
        case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: *value = 6144; break;
        case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID:
        case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID:
        case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: *value = 0; break;
        default: {
            char line[100];
            std::snprintf(line, sizeof line, "device attribute %d is not modelled", static_cast<int>(attribute));
            return drv::fail(CUDA_ERROR_INVALID_VALUE, line);
        }
    }
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetUuid(CUuuid* uuid, CUdevice device) {
    if (!uuid || device != 0) return CUDA_ERROR_INVALID_VALUE;
    std::memset(uuid, 0, sizeof *uuid);
    return CUDA_SUCCESS;
}

// ---- context ----------------------------------------------------------------------------------

CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice device) {
    if (!ctx || device != 0) return CUDA_ERROR_INVALID_VALUE;
    *ctx = reinterpret_cast<CUcontext>(&drv::context_token);
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease(CUdevice device) { return device == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE; }

CUresult cuCtxSetCurrent(CUcontext) { return CUDA_SUCCESS; }

CUresult cuCtxGetCurrent(CUcontext* ctx) {
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = reinterpret_cast<CUcontext>(&drv::context_token);
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice* device) {
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    *device = 0;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize() {
    GUARD;
    for (drv::Stream* s : drv::streams)
        if (s->capture) return drv::refuse_in_capture(s, "cuCtxSynchronize");
    return CUDA_SUCCESS;
}

CUresult cuMemGetInfo(size_t* free, size_t* total) {
    GUARD;
    if (!free || !total) return CUDA_ERROR_INVALID_VALUE;
    *total = drv::kTotalMemory;
    *free = drv::kTotalMemory - drv::allocated;
    return CUDA_SUCCESS;
}

// ---- streams ----------------------------------------------------------------------------------

CUresult cuStreamCreate(CUstream* stream, unsigned int) {
    GUARD;
    if (!stream) return CUDA_ERROR_INVALID_VALUE;
    auto* s = new drv::Stream;
    drv::streams.push_back(s);
    *stream = reinterpret_cast<CUstream>(s);
    return CUDA_SUCCESS;
}

CUresult cuStreamCreateWithPriority(CUstream* stream, unsigned int flags, int) { return cuStreamCreate(stream, flags); }

CUresult cuStreamDestroy(CUstream stream) {
    GUARD;
    auto* s = reinterpret_cast<drv::Stream*>(stream);
    auto it = std::find(drv::streams.begin(), drv::streams.end(), s);
    if (it == drv::streams.end()) return drv::fail(CUDA_ERROR_INVALID_HANDLE, "destroying an unknown stream");
    drv::streams.erase(it);
    delete s;
    return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream stream) {
    GUARD;
    drv::Stream* s = drv::stream_of(stream);
    if (s->capture) return drv::refuse_in_capture(s, "cuStreamSynchronize");
    return CUDA_SUCCESS;
}

CUresult cuStreamQuery(CUstream) { return CUDA_SUCCESS; }

CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned int) { return CUDA_SUCCESS; }

CUresult cuStreamGetPriority(CUstream, int* priority) {
    if (!priority) return CUDA_ERROR_INVALID_VALUE;
    *priority = 0;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = 0;
    return CUDA_SUCCESS;
}

// ---- memory -----------------------------------------------------------------------------------

CUresult cuMemAlloc(CUdeviceptr* p, size_t bytes) {
    GUARD;
    if (drv::any_capture()) return drv::fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuMemAlloc during a capture");
    return drv::allocate(p, bytes);
}

CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream stream) {
    GUARD;
    drv::Stream* s = drv::stream_of(stream);
    if (s->capture) return drv::refuse_in_capture(s, "cuMemAllocAsync (an allocation inside a step)");
    return drv::allocate(p, bytes);
}

CUresult cuMemFree(CUdeviceptr p) {
    GUARD;
    return drv::release(p);
}

CUresult cuMemFreeAsync(CUdeviceptr p, CUstream stream) {
    GUARD;
    drv::Stream* s = drv::stream_of(stream);
    if (s->capture) return drv::refuse_in_capture(s, "cuMemFreeAsync");
    return drv::release(p);
}

CUresult cuMemAllocHost(void** p, size_t bytes) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    *p = std::aligned_alloc(drv::kAlign, (bytes + drv::kAlign - 1) / drv::kAlign * drv::kAlign);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuMemFreeHost(void* p) {
    std::free(p);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t bytes, CUstream stream) {
    GUARD;
    drv::Stream* s = drv::stream_of(stream);
    if (s->capture) return drv::refuse_in_capture(s, "a host-to-device copy");
    if (CUresult r = drv::check_span(dst, bytes, "a host-to-device copy")) return r;
    std::memcpy(reinterpret_cast<void*>(dst), src, bytes);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t bytes, CUstream stream) {
    GUARD;
    drv::Stream* s = drv::stream_of(stream);
    if (s->capture) return drv::refuse_in_capture(s, "a device-to-host copy");
    if (CUresult r = drv::check_span(src, bytes, "a device-to-host copy")) return r;
    std::memcpy(dst, reinterpret_cast<const void*>(src), bytes);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream) {
    GUARD;
    if (CUresult r = drv::check_span(dst, bytes, "a device-to-device copy's destination")) return r;
    if (CUresult r = drv::check_span(src, bytes, "a device-to-device copy's source")) return r;
    return drv::submit(stream, [=] {
        std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
    });
}

CUresult cuMemcpyHtoD(CUdeviceptr dst, const void* src, size_t bytes) { return cuMemcpyHtoDAsync(dst, src, bytes, nullptr); }
CUresult cuMemcpyDtoH(void* dst, CUdeviceptr src, size_t bytes) { return cuMemcpyDtoHAsync(dst, src, bytes, nullptr); }
CUresult cuMemcpyDtoD(CUdeviceptr dst, CUdeviceptr src, size_t bytes) { return cuMemcpyDtoDAsync(dst, src, bytes, nullptr); }

CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t n, CUstream stream) {
    GUARD;
    if (CUresult r = drv::check_span(dst, n, "a memset")) return r;
    return drv::submit(stream, [=] { std::memset(reinterpret_cast<void*>(dst), value, n); });
}

CUresult cuMemsetD8(CUdeviceptr dst, unsigned char value, size_t n) { return cuMemsetD8Async(dst, value, n, nullptr); }

CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int value, size_t n, CUstream stream) {
    GUARD;
    if (CUresult r = drv::check_span(dst, n * 4, "a 32-bit memset")) return r;
    return drv::submit(stream, [=] {
        auto* p = reinterpret_cast<unsigned int*>(dst);
        for (size_t i = 0; i < n; i++) p[i] = value;
    });
}

// ---- modules and launches ---------------------------------------------------------------------

CUresult cuModuleLoadData(CUmodule* module, const void* image) {
    GUARD;
    if (!module || !image) return CUDA_ERROR_INVALID_VALUE;
    unsigned magic;
    std::memcpy(&magic, image, sizeof magic);
    if (magic != 0xBA55ED50u) return drv::fail(CUDA_ERROR_INVALID_IMAGE, "a module image that is not a fatbin");
    *module = reinterpret_cast<CUmodule>(new drv::Module);
    return CUDA_SUCCESS;
}

CUresult cuModuleUnload(CUmodule module) {
    GUARD;
    delete reinterpret_cast<drv::Module*>(module);
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name) {
    GUARD;
    if (!function || !module || !name) return CUDA_ERROR_INVALID_VALUE;
    auto* m = reinterpret_cast<drv::Module*>(module);
    auto& slot = m->functions[name];
    if (!slot) {
        const auto& all = emu::entry_points();
        auto it = std::find_if(all.begin(), all.end(), [&](const emu::EntryPoint& e) { return !std::strcmp(e.name, name); });
        if (it == all.end()) {
            m->functions.erase(name);
            return CUDA_ERROR_NOT_FOUND;
        }
        slot = std::make_unique<drv::Function>(drv::Function{&*it});
    }
    *function = reinterpret_cast<CUfunction>(slot.get());
    return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction function, CUfunction_attribute attribute, int value) {
    GUARD;
    auto* f = reinterpret_cast<drv::Function*>(function);
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    switch (attribute) {
        case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES:
            if (value < 0 || value > drv::kMaxSmemOptin)
                return drv::fail(CUDA_ERROR_INVALID_VALUE, "dynamic shared memory past the device's opt-in limit");
            f->max_dynamic_smem = value;
            return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: return CUDA_SUCCESS;
        default: return drv::fail(CUDA_ERROR_INVALID_VALUE, "a function attribute that is not modelled");
    }
}

CUresult cuFuncGetAttribute(int* value, CUfunction_attribute attribute, CUfunction function) {
    GUARD;
    auto* f = reinterpret_cast<drv::Function*>(function);
    if (!f || !value) return CUDA_ERROR_INVALID_VALUE;
    switch (attribute) {
        case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = static_cast<int>(f->entry->max_threads); break;
        case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *value = f->max_dynamic_smem; break;
        default: return drv::fail(CUDA_ERROR_INVALID_VALUE, "a function attribute that is not modelled");
    }
    return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned smem, CUstream stream, void** params, void** extra) {
    GUARD;
    auto* f = reinterpret_cast<drv::Function*>(function);
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    char line[300];
    const char* name = f->entry->name;
    if (extra) return drv::fail(CUDA_ERROR_INVALID_VALUE, "kernel arguments through `extra` are not modelled");
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0) {
        std::snprintf(line, sizeof line, "%s launched with an empty grid or block", name);
        return drv::fail(CUDA_ERROR_INVALID_VALUE, line);
    }
    if (gy > 65535 || gz > 65535 || gx > 2147483647u) {
        std::snprintf(line, sizeof line, "%s: grid (%u, %u, %u) past the device's limits", name, gx, gy, gz);
        return drv::fail(CUDA_ERROR_INVALID_VALUE, line);
    }
    unsigned threads = bx * by * bz;
    if (threads > f->entry->max_threads) {
        std::snprintf(line, sizeof line, "%s: %u threads per block, past its __launch_bounds__ of %u", name, threads,
                      f->entry->max_threads);
        return drv::fail(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, line);
    }
    if (static_cast<int>(smem) > f->max_dynamic_smem) {
        std::snprintf(line, sizeof line, "%s: %u bytes of dynamic shared memory, past the %d the function allows", name,
                      smem, f->max_dynamic_smem);
        return drv::fail(CUDA_ERROR_INVALID_VALUE, line);
    }
    if (gz != 1 || by != 1 || bz != 1) {
        std::snprintf(line, sizeof line, "%s: the emulation runs one-dimensional blocks and 2-D grids only", name);
        return drv::fail(CUDA_ERROR_NOT_SUPPORTED, line);
    }
    // The argument values are read now, as the driver copies them at the launch.
    std::function<void()> call = f->entry->bind(params);
    return drv::submit(stream, [=] {
        emu_config(gx, gy, bx, smem);
        call();
    });
}

// ---- tensor maps ------------------------------------------------------------------------------

CUresult cuTensorMapEncodeTiled(CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank, void* base,
                                const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box,
                                const cuuint32_t* elem_strides, CUtensorMapInterleave interleave,
                                CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2, CUtensorMapFloatOOBfill fill) {
    GUARD;
    auto refuse = [](const char* why) {
        char line[200];
        std::snprintf(line, sizeof line, "cuTensorMapEncodeTiled: %s", why);
        return drv::fail(CUDA_ERROR_INVALID_VALUE, line);
    };
    if (!map || !dims || !box || !elem_strides || (rank > 1 && !strides)) return refuse("a null pointer");
    unsigned elem_bytes;
    switch (type) {
        case CU_TENSOR_MAP_DATA_TYPE_UINT8: elem_bytes = 1; break;
        case CU_TENSOR_MAP_DATA_TYPE_UINT16:
        case CU_TENSOR_MAP_DATA_TYPE_FLOAT16:
        case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16: elem_bytes = 2; break;
        case CU_TENSOR_MAP_DATA_TYPE_UINT32:
        case CU_TENSOR_MAP_DATA_TYPE_INT32:
        case CU_TENSOR_MAP_DATA_TYPE_FLOAT32: elem_bytes = 4; break;
        case CU_TENSOR_MAP_DATA_TYPE_UINT64:
        case CU_TENSOR_MAP_DATA_TYPE_INT64:
        case CU_TENSOR_MAP_DATA_TYPE_FLOAT64: elem_bytes = 8; break;
        default: return refuse("a data type the emulation does not model (one that rounds, or a packed one)");
    }
    if (interleave != CU_TENSOR_MAP_INTERLEAVE_NONE) return refuse("an interleaved layout, which is not modelled");
    unsigned swizzle_bytes;
    switch (swizzle) {
        case CU_TENSOR_MAP_SWIZZLE_NONE: swizzle_bytes = 0; break;
        case CU_TENSOR_MAP_SWIZZLE_32B: swizzle_bytes = 32; break;
        case CU_TENSOR_MAP_SWIZZLE_64B: swizzle_bytes = 64; break;
        case CU_TENSOR_MAP_SWIZZLE_128B: swizzle_bytes = 128; break;
        default: return refuse("a swizzle the emulation does not model");
    }
    // A cache hint: no effect here.
    if (l2 != CU_TENSOR_MAP_L2_PROMOTION_NONE && l2 != CU_TENSOR_MAP_L2_PROMOTION_L2_64B &&
        l2 != CU_TENSOR_MAP_L2_PROMOTION_L2_128B && l2 != CU_TENSOR_MAP_L2_PROMOTION_L2_256B)
        return refuse("an unknown L2 promotion");
    if (fill != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE && fill != CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA)
        return refuse("an unknown out-of-bounds fill");
    const int nan_fill = fill == CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA;
    // (emu_tensor_map_encode says why on stderr.)
    if (emu_tensor_map_encode(map, elem_bytes, rank, base, dims, strides, box, elem_strides, swizzle_bytes, nan_fill))
        return CUDA_ERROR_INVALID_VALUE;
    // The tensor's last byte, from the dimensions and strides the encode accepted (each under
    // 2^32 and 2^40: the sum fits 128 bits).
    unsigned __int128 extent = elem_bytes;
    for (cuuint32_t d = 0; d < rank; d++)
        extent += static_cast<unsigned __int128>(dims[d] - 1) * (d == 0 ? elem_bytes : strides[d - 1]);
    const auto start = reinterpret_cast<uintptr_t>(base);
    if (extent > SIZE_MAX - start || !drv::inside(start, static_cast<size_t>(extent))) {
        std::memset(map, 0, sizeof *map);
        return refuse("the tensor is not inside one allocation");
    }
    return CUDA_SUCCESS;
}

// ---- events -----------------------------------------------------------------------------------

CUresult cuEventCreate(CUevent* event, unsigned int flags) {
    if (!event) return CUDA_ERROR_INVALID_VALUE;
    *event = reinterpret_cast<CUevent>(new drv::Event{flags});
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy(CUevent event) {
    delete reinterpret_cast<drv::Event*>(event);
    return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent event, CUstream stream) {
    GUARD;
    auto* e = reinterpret_cast<drv::Event*>(event);
    if (!e) return CUDA_ERROR_INVALID_HANDLE;
    return drv::submit(stream, [e] {
        e->recorded = true;
        e->ms = drv::now_ms();
    });
}

CUresult cuEventSynchronize(CUevent) { return CUDA_SUCCESS; }
CUresult cuEventQuery(CUevent) { return CUDA_SUCCESS; }

CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) {
    GUARD;
    auto *a = reinterpret_cast<drv::Event*>(start), *b = reinterpret_cast<drv::Event*>(end);
    if (!ms || !a || !b) return CUDA_ERROR_INVALID_VALUE;
    if ((a->flags | b->flags) & CU_EVENT_DISABLE_TIMING)
        return drv::fail(CUDA_ERROR_INVALID_HANDLE, "timing between events created without timing");
    if (!a->recorded || !b->recorded) return drv::fail(CUDA_ERROR_INVALID_HANDLE, "timing an event never recorded");
    *ms = static_cast<float>(b->ms - a->ms);
    return CUDA_SUCCESS;
}

// ---- graphs -----------------------------------------------------------------------------------

CUresult cuStreamBeginCapture(CUstream stream, CUstreamCaptureMode) {
    GUARD;
    if (!stream) return drv::fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "capturing the legacy default stream");
    drv::Stream* s = drv::stream_of(stream);
    if (s->capture) return drv::fail(CUDA_ERROR_ILLEGAL_STATE, "a capture begun on a stream already captured");
    s->capture = new drv::Graph;
    s->invalidated = false;
    return CUDA_SUCCESS;
}

CUresult cuStreamEndCapture(CUstream stream, CUgraph* graph) {
    GUARD;
    drv::Stream* s = drv::stream_of(stream);
    if (!graph) return CUDA_ERROR_INVALID_VALUE;
    if (!s->capture) return drv::fail(CUDA_ERROR_ILLEGAL_STATE, "a capture ended on a stream not captured");
    drv::Graph* g = s->capture;
    s->capture = nullptr;
    if (s->invalidated) {
        delete g;
        *graph = nullptr;
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    *graph = reinterpret_cast<CUgraph>(g);
    return CUDA_SUCCESS;
}

CUresult cuStreamIsCapturing(CUstream stream, CUstreamCaptureStatus* status) {
    GUARD;
    if (!status) return CUDA_ERROR_INVALID_VALUE;
    drv::Stream* s = drv::stream_of(stream);
    *status = !s->capture ? CU_STREAM_CAPTURE_STATUS_NONE
              : s->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                               : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    return CUDA_SUCCESS;
}

CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph graph, unsigned long long) {
    GUARD;
    if (!exec || !graph) return CUDA_ERROR_INVALID_VALUE;
    *exec = reinterpret_cast<CUgraphExec>(new drv::Graph(*reinterpret_cast<drv::Graph*>(graph)));
    return CUDA_SUCCESS;
}

CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream) {
    GUARD;
    auto* g = reinterpret_cast<drv::Graph*>(exec);
    if (!g) return CUDA_ERROR_INVALID_HANDLE;
    for (const drv::Work& node : g->nodes) drv::submit(stream, [node] { (*node)(); });
    return CUDA_SUCCESS;
}

CUresult cuGraphUpload(CUgraphExec, CUstream) { return CUDA_SUCCESS; }

CUresult cuGraphExecDestroy(CUgraphExec exec) {
    GUARD;
    delete reinterpret_cast<drv::Graph*>(exec);
    return CUDA_SUCCESS;
}

CUresult cuGraphDestroy(CUgraph graph) {
    GUARD;
    delete reinterpret_cast<drv::Graph*>(graph);
    return CUDA_SUCCESS;
}

}  // extern "C"
