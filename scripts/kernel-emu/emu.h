// emu.h: builds the kernels of kernels/*.cu as ordinary C++ for the CPU, so that their logic
// (indexing, vector paths, warp and block reductions, online softmax, stochastic rounding) can be
// tested on a machine without a GPU. Included before the kernel sources by check_kernels.py.
//
// Execution model: a launch runs its blocks one after another (by index, or in reverse:
// emu_set_block_order); each block runs its CUDA threads as fibers on the launching OS thread,
// each running until it waits at a barrier or ends, so that __syncthreads and warp shuffles
// behave as on a GPU: shuffles exchange through a per-warp buffer between two warp barriers, __syncthreads is a block barrier, and a thread that
// returns leaves the barriers (arrive_and_drop), as an exited CUDA thread stops counting. A block
// whose threads all wait at barriers that none of the others will reach stops the run (it would
// hang on a GPU). Switching fibers costs no system call, where an OS thread per CUDA thread spent
// most of its time in the kernel. Shared memory is what `static` gives a function-local array: one
// copy for the block running. Nothing here models timing, the memory model beyond these
// barriers, or the hardware's float rounding modes beyond IEEE single precision.
//
// Asynchronous work (cp.async copies, wgmma products) completes, on the hardware, at some moment
// between its issue and the wait that covers it. The emulation takes either end for each kind
// (emu_set_deferred): at issue (the default), or at that wait, each thread keeping its commit
// groups in order. A kernel must give the same results every way: one that reads what a copy
// has not been waited for yet fails with copies at the wait; one that refills a stage a product
// still reads, with copies at issue and products at the wait; one that touches a product's
// registers (accumulator, A operand) before waiting for it, with products at the wait. wgmma
// reads shared memory through the async proxy; here through a copy of the block's shared memory
// taken when every thread has fenced (proxy_fence), and a read where that copy and the threads'
// memory differ stops the run. TMA copies (cp.async.bulk.tensor) are a third kind: they write
// both views (they are the async proxy's writes) and complete on an mbarrier, at issue or, with
// copies deferred, when a thread first waits for that barrier; an mbarrier is a phase counter of
// arrivals and announced bytes, waited for by parity as on the GPU (one waited for with the wrong
// parity, or never completed, leaves the block hanging, which stops the run).
//
// Race checking (GPTK_EMU_RACECHECK, check_kernels.py --racecheck): built with ThreadSanitizer,
// each CUDA thread is a sanitizer fiber of its own, switched without synchronizing, so that the
// only happens-before order between two CUDA threads is what the GPU would give: a barrier they
// both pass (__syncthreads, and the warp's and warpgroup's collective instructions, which are
// taken to order memory too), an mbarrier's phase (what came before an arrival, and a TMA copy
// with what its issuing thread saw before it, comes before a wait that sees the phase complete),
// the end of the block before the next one (the blocks of a launch run one after another here,
// reusing shared memory) and the launch's beginning and end. An
// access to shared or global memory by one thread that conflicts with another's, with no such
// order between them, is reported with both stacks. The emulation's own bookkeeping (the fiber
// switch, barriers, operand exchange, wgmma's view of shared memory) is hidden from the checker.
// Atomic adds are relaxed atomics, as on the GPU: they do not order other accesses. A wgmma's
// shared-memory reads count as the issuing thread's (the operand rows its accumulator needs),
// made when its product runs (at issue or at the wait, as above).
//
// Memory checking (GPTK_EMU_MEMCHECK, check_kernels.py --memcheck): built with AddressSanitizer,
// a kernel's access outside the memory it may touch stops the run with its stack: global memory
// outside the arrays it was given (the caller marks their surroundings unaddressable) and dynamic
// shared memory past the bytes the host gives the launch (marked here before each block, in the
// threads' view and in wgmma's). Each CUDA thread's stack is a sanitizer fiber. Static
// `__shared__` arrays inside kernel templates are not bounded: g++ pads no variable that
// templates share across translation units (COMDAT), and these are such variables.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <vector_types.h>

#include <algorithm>
#include <atomic>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <utility>
#include <functional>
#include <memory>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#ifdef GPTK_EMU_RACECHECK
#include <sanitizer/tsan_interface.h>
// The runtime's entry points for ignoring a thread's accesses and synchronization, and for an
// access made outside instrumented code, which its headers do not declare.
extern "C" void __tsan_read_range(void* address, unsigned long size);
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
extern "C" void AnnotateIgnoreSyncBegin(const char* file, int line);
extern "C" void AnnotateIgnoreSyncEnd(const char* file, int line);
#endif

#ifdef GPTK_EMU_MEMCHECK
#include <sanitizer/asan_interface.h>
#endif

#undef __global__
#undef __device__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#undef __grid_constant__
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(n)
#define __grid_constant__

// The running CUDA thread's own variables (the fiber switch saves and restores them).
inline dim3 threadIdx;
inline dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

using std::max;
using std::min;
using std::isfinite;

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline unsigned int __float_as_uint(float x) {
    unsigned int u;
    std::memcpy(&u, &x, sizeof u);
    return u;
}

namespace emu {

constexpr int kWarp = 32;

// Race checking's hooks (see the top); nothing without GPTK_EMU_RACECHECK. A thread's accesses
// and synchronization inside an `Internal` scope are the emulation's, not the kernel's: ignored.
#ifdef GPTK_EMU_RACECHECK
struct Internal {
    Internal() {
        __tsan_ignore_thread_begin();
        AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
    }
    ~Internal() {
        AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
        __tsan_ignore_thread_end();
    }
    Internal(const Internal&) = delete;
    Internal& operator=(const Internal&) = delete;
};
inline void happens_before(void* sync) { __tsan_release(sync); }
inline void happens_after(void* sync) { __tsan_acquire(sync); }
#else
struct Internal {
    Internal() {}
    Internal(const Internal&) = delete;
    Internal& operator=(const Internal&) = delete;
};
inline void happens_before(void*) {}
inline void happens_after(void*) {}
#endif
// The most dynamic shared memory a Hopper block can have.
constexpr int kMaxDynamicSmem = 227 * 1024;

// Memory checking's hooks (see the top); nothing without GPTK_EMU_MEMCHECK: `n` bytes at `p`
// made unaddressable to the kernels, or addressable again.
inline void poison([[maybe_unused]] const void* p, [[maybe_unused]] size_t n) {
#ifdef GPTK_EMU_MEMCHECK
    __asan_poison_memory_region(p, n);
#endif
}
inline void unpoison([[maybe_unused]] const void* p, [[maybe_unused]] size_t n) {
#ifdef GPTK_EMU_MEMCHECK
    __asan_unpoison_memory_region(p, n);
#endif
}

// Hands the OS thread from the running fiber back to the block's scheduler (see run).
inline void yield();
// Arrivals at barriers since the scheduler last looked: none in a whole round of the block's
// fibers means every live one waits for a phase that cannot complete.
inline uint64_t arrivals = 0;

// A barrier among fibers, as std::barrier: a phase completes when the expected count has arrived;
// arrive_and_drop also lowers the count for this and every later phase.
struct Barrier {
    explicit Barrier(int n) : expected(n) {}
    int expected, arrived = 0;
    uint64_t phase = 0;
    void arrive_and_wait() {
        happens_before(this);
        {
            Internal in;
            arrivals++;
            const uint64_t mine = phase;
            if (++arrived == expected) {
                arrived = 0;
                phase++;
            } else {
                while (phase == mine) yield();
            }
        }
        happens_after(this);
    }
    void arrive_and_drop() {
        happens_before(this);
        Internal in;
        arrivals++;
        if (--expected == arrived && arrived > 0) {
            arrived = 0;
            phase++;
        }
    }
};

struct Warp {
    explicit Warp(int lanes) : barrier(lanes), live(lanes == kWarp ? ~0u : (1u << lanes) - 1) {}
    Barrier barrier;
    // The lanes that exist and have not ended.
    uint32_t live;
    double slots[kWarp];
    // What each lane hands the warp-wide matrix instructions (ldmatrix, mma).
    const unsigned char* rows[kWarp];
    uint32_t regs[kWarp][6];
};

// An mbarrier of shared memory (mbarrier.init): a phase completes when `expected` arrivals have
// been made and every byte of the transactions announced to it (expect_tx) has landed
// (complete_tx, by the TMA copies that signal it). Copies that complete at their wait (see the top)
// wait here until a thread waits for this barrier.
struct MBarrier {
    int expected = 0, pending = 0;
    long long tx = 0;
    uint64_t phase = 0;
    std::vector<std::function<void()>> copies;
};

struct Block {
    explicit Block(int threads) : barrier(threads), live(threads), fenced(threads, false) {}
    Barrier barrier;
    // The mbarriers initialised by the block's threads, by shared address.
    std::map<uintptr_t, MBarrier> mbarriers;
    // The proxy fences (fence_proxy_async) of the running block's threads since the view that
    // wgmma reads was last brought up to date (see shared_view below).
    std::mutex proxy;
    int live, fenced_count = 0;
    std::vector<bool> fenced;
};

// Four consecutive warps, as Hopper's warpgroup instructions (wgmma) see them.
constexpr int kWarpGroup = 128;
struct WarpGroup {
    explicit WarpGroup(int threads) : barrier(threads) {}
    Barrier barrier;
    // What each thread hands a wgmma whose A comes from registers.
    uint32_t a[kWarpGroup][4];
    // What each thread issues a wgmma with (descriptors, accumulate flag), which `.aligned`
    // requires to be the same across the warpgroup.
    uint64_t issued[kWarpGroup][3];
};

// This thread's asynchronous work of one kind: run at issue, or, deferred, kept in commit groups
// until a wait leaves at most N of them pending.
struct AsyncQueue {
    bool deferred = false;
    std::vector<std::function<void()>> open;
    std::deque<std::vector<std::function<void()>>> groups;
    void issue(std::function<void()> work) {
        if (deferred) {
            Internal in;
            open.push_back(std::move(work));
        } else {
            work();
        }
    }
    void commit() {
        Internal in;
        if (deferred) groups.push_back(std::exchange(open, {}));
    }
    void wait(size_t pending) {
        while (groups.size() > pending) {
            std::vector<std::function<void()>> group;
            {
                Internal in;
                group = std::move(groups.front());
                groups.pop_front();
            }
            for (auto& work : group) work();
            Internal in;
            std::vector<std::function<void()>>().swap(group);
        }
    }
    bool idle() const { return open.empty() && groups.empty(); }
};
// The running thread's two queues (its fiber's own: a switch moves a pointer, not the queues).
inline AsyncQueue *copies = nullptr, *products = nullptr;
// Whether this thread ran wgmma.fence since its last commit.
inline bool wgmma_fenced = false;
// Whether each kind is deferred in the next launch's threads.
inline bool defer_copies = false, defer_products = false;
// Whether the next launches run their blocks in reverse index order.
inline bool reverse_blocks = false;

inline Warp* current_warp = nullptr;
inline Block* current_block = nullptr;
inline WarpGroup* current_warpgroup = nullptr;
// The kernels' dynamic shared memory: one buffer (blocks run one at a time), aligned to 2^18
// bytes, so that the low 18 bits of an address in it are its offset, as in the GPU's shared window
// (wgmma's descriptors hold those 18 bits).
constexpr uintptr_t kSmemWindowAlign = uintptr_t{1} << 18;
alignas(kSmemWindowAlign) inline unsigned char dynamic_smem[kMaxDynamicSmem];

// What wgmma reads of shared memory (the async proxy's view of it): a copy of the dynamic shared
// memory taken when every live thread of the block has executed fence.proxy.async since the last
// copy, so that a thread's generic writes (stores, cp.async copies) reach wgmma only through its
// own fence. `view_block` says which block's copy it is (blocks run one after another).
inline unsigned char async_view[kMaxDynamicSmem];
inline uint64_t block_serial = 0, view_block = 0;

// With `config_smem` set, the bytes of dynamic shared memory the host gives the launch (less any
// alignment slack the kernel spends), each block starts with the whole of dynamic_smem poisoned
// (0xFF: NaN in f32 and bf16), so that a read of shared memory nothing wrote shows in the
// results, and a block that writes past `config_smem` stops the run (with memory checking, the
// access itself does, and so does a read).
inline size_t config_smem = 0;
constexpr unsigned char kSmemPoison = 0xFF;
// The bytes of dynamic shared memory a block may touch.
inline size_t smem_in_use() { return config_smem > 0 ? config_smem : sizeof dynamic_smem; }

// fence.proxy.async by this thread; the last thread of the block to fence brings the view up to
// date.
inline void proxy_fence(bool leaving = false) {
    Internal in;
    Block* b = current_block;
    std::lock_guard<std::mutex> hold(b->proxy);
    const unsigned t = threadIdx.x;
    if (leaving) {
        b->live--;
        if (b->fenced[t]) b->fenced_count--;
        b->fenced[t] = false;
        if (b->fenced_count == 0) return;  // nobody has fenced: nothing to bring
    } else if (!b->fenced[t]) {
        b->fenced[t] = true;
        b->fenced_count++;
    }
    if (b->fenced_count < b->live) return;
    std::memcpy(async_view, dynamic_smem, smem_in_use());
    view_block = block_serial;
    std::fill(b->fenced.begin(), b->fenced.end(), false);
    b->fenced_count = 0;
}

// Leaves the barriers when a CUDA thread ends, however it ends. A wgmma not waited for by then
// is a kernel error (its accumulators are gone); copies never waited for are dropped.
struct Exit {
    ~Exit() {
        if (Internal in; !products->idle()) {
            std::fprintf(stderr, "emulation: thread %u of block %u ended with wgmma products not waited for\n",
                         threadIdx.x, blockIdx.x);
            std::abort();
        }
        proxy_fence(true);
        {
            Internal in;
            current_warp->live &= ~(1u << threadIdx.x % kWarp);
        }
        current_warp->barrier.arrive_and_drop();
        current_warpgroup->barrier.arrive_and_drop();
        current_block->barrier.arrive_and_drop();
    }
};

// The rules of a warp's collective instructions that the emulation would otherwise pass over:
// the lanes `needed` must be in the instruction's `mask` and still running. On a GPU a shuffle
// or __syncwarp by a lane outside its mask, or a shuffle reading a lane that has ended or is
// outside the mask, is undefined, and ldmatrix and mma (`.aligned`) need every lane of the warp.
inline void expect_lanes(const Warp* w, uint32_t mask, uint32_t needed, const char* what) {
    if (const uint32_t missing = needed & ~(mask & w->live)) {
        std::fprintf(stderr,
                     "emulation: %s by thread %u of block (%u, %u) needs lanes %08x, which have ended or are "
                     "outside its mask %08x (undefined on a GPU)\n",
                     what, threadIdx.x, blockIdx.x, blockIdx.y, missing, mask);
        std::abort();
    }
}

// A shuffle: this lane gives `v` and gets lane `lane`'s.
template <typename F>
inline F exchange(F v, int lane, uint32_t mask) {
    Warp* w = current_warp;
    const int me = threadIdx.x % kWarp;
    {
        Internal in;
        expect_lanes(w, mask, 1u << me, "a warp shuffle");
        w->slots[me] = static_cast<double>(v);
    }
    w->barrier.arrive_and_wait();
    {
        Internal in;
        expect_lanes(w, mask, 1u << lane, "a warp shuffle");
    }
    F r = static_cast<F>(w->slots[lane]);
    w->barrier.arrive_and_wait();
    return r;
}

// A misaligned vector access, vector atomic or asynchronous copy faults on a GPU; here it stops
// the run.
inline void expect_aligned(const void* p, int bytes, const char* where) {
    if (reinterpret_cast<uintptr_t>(p) % bytes != 0) {
        std::fprintf(stderr, "emulation: %s at %p is not %d-byte aligned (thread %u of block %u)\n", where, p, bytes,
                     threadIdx.x, blockIdx.x);
        std::abort();
    }
}

inline dim3 config_grid{1, 1, 1};
inline dim3 config_block{1, 1, 1};

inline void check_smem_bounds() {
    const unsigned char* past = std::find_if(dynamic_smem + config_smem, dynamic_smem + kMaxDynamicSmem,
                                             [](unsigned char b) { return b != kSmemPoison; });
    if (past != dynamic_smem + kMaxDynamicSmem) {
        std::fprintf(stderr, "emulation: block %u wrote shared byte %zu, past the %zu bytes the host gives it\n",
                     blockIdx.x, static_cast<size_t>(past - dynamic_smem), config_smem);
        std::abort();
    }
}

// A block's shared memory before it starts and after it ends (see config_smem): both views
// poisoned, and the bytes past config_smem unaddressable to the block.
inline void start_block_smem() {
    if (config_smem == 0) return;
    std::memset(dynamic_smem, kSmemPoison, sizeof dynamic_smem);
    std::memset(async_view, kSmemPoison, sizeof async_view);
    view_block = block_serial;  // the two views agree: nothing has been written
    poison(dynamic_smem + config_smem, sizeof dynamic_smem - config_smem);
    poison(async_view + config_smem, sizeof async_view - config_smem);
}
inline void end_block_smem() {
    if (config_smem == 0) return;
    unpoison(dynamic_smem, sizeof dynamic_smem);
    unpoison(async_view, sizeof async_view);
    check_smem_bounds();
}

// A fiber's saved registers. On x86-64 a switch is a few instructions that push the
// callee-saved registers, swap stack pointers and pop them (swapcontext would also save and
// restore the signal mask, two system calls per switch, most of the emulation's time);
// elsewhere it is swapcontext.
#if defined(__x86_64__)
struct Context {
    void* sp = nullptr;
};
}  // namespace emu
extern "C" void gptk_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .globl gptk_emu_switch
    .hidden gptk_emu_switch
    .type gptk_emu_switch, @function
gptk_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gptk_emu_switch, .-gptk_emu_switch
)");
namespace emu {
// Saves the running context in `from` and resumes `to`. Inlined, as the sanitizer's fiber
// switches are (see enter_fiber).
[[gnu::always_inline]] inline void switch_context(Context& from, const Context& to) {
    gptk_emu_switch(&from.sp, to.sp);
}
// Makes `c` start `entry` (which must never return) on `stack` when first resumed: zeros for the
// six registers the switch pops, then `entry` as the address it returns to, placed so that
// `entry` starts with the stack aligned as after a call.
inline void start_context(Context& c, char* stack, size_t size, void (*entry)()) {
    auto top = reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t{15};
    auto* slot = reinterpret_cast<void**>(top - 16);
    slot[1] = nullptr;
    slot[0] = reinterpret_cast<void*>(entry);
    std::memset(slot - 6, 0, 6 * sizeof(void*));
    c.sp = slot - 6;
}
#else
struct Context {
    ucontext_t uc;
};
[[gnu::always_inline]] inline void switch_context(Context& from, const Context& to) {
    swapcontext(&from.uc, &to.uc);
}
inline void start_context(Context& c, char* stack, size_t size, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

// One CUDA thread of the running block: its fiber, and its own variables while another runs.
struct Fiber {
    Context context;
    bool done = false;
    dim3 thread_idx, block_idx;
    AsyncQueue copies, products;
    bool wgmma_fenced = false;
    Warp* warp = nullptr;
    WarpGroup* warpgroup = nullptr;
    char* stack = nullptr;
    void* checker_stack = nullptr;  // memory checking: the sanitizer's saved state of this stack
};
constexpr size_t kFiberStack = 256 * 1024;
inline Context scheduler;
inline Fiber* running = nullptr;
inline const std::function<void()>* running_kernel = nullptr;

// Race checking: the sanitizer's fiber of each thread index (kept from block to block, as the
// stacks are) and of the launching thread, which runs the scheduler. `block_order[s % 2]` is
// what the threads of block s release when they end and those of block s + 1 acquire when they
// start.
inline std::vector<void*> checker_fibers;
inline void* checker_scheduler = nullptr;
inline char block_order[2];
// Makes the sanitizer's fiber of thread `thread` and names it after the CUDA thread it runs.
inline void prepare_fiber([[maybe_unused]] size_t thread, [[maybe_unused]] dim3 block) {
#ifdef GPTK_EMU_RACECHECK
    while (checker_fibers.size() <= thread) checker_fibers.push_back(__tsan_create_fiber(0));
    char name[64];
    std::snprintf(name, sizeof name, "CUDA thread %zu of block (%u, %u)", thread, block.x, block.y);
    __tsan_set_fiber_name(checker_fibers[thread], name);
#endif
}
#ifdef GPTK_EMU_MEMCHECK
// The stack the scheduler runs on, as the sanitizer gave it to the first fiber that started, and
// the sanitizer's saved state of it while a fiber runs.
inline const void* scheduler_stack = nullptr;
inline size_t scheduler_stack_size = 0;
inline void* scheduler_checker_stack = nullptr;

// A report names the CUDA thread that made the access (the stack names the kernel).
inline const bool death_note = [] {
    __sanitizer_set_death_callback([] {
        if (running)
            std::fprintf(stderr, "emulation: the access above was made by CUDA thread %u of block (%u, %u)\n",
                         threadIdx.x, blockIdx.x, blockIdx.y);
    });
    return true;
}();
#endif

// The sanitizers' side of a switch. ThreadSanitizer keeps a stack of calls per fiber: a function
// must return in the fiber it was called in, so its switches are inlined into the function that
// also switches the stacks. AddressSanitizer is told of each switch before it (the stack it goes
// to) and after it (in the code that runs next on the stack switched to).
[[gnu::always_inline]] inline void enter_fiber([[maybe_unused]] size_t thread, [[maybe_unused]] const Fiber& f) {
#ifdef GPTK_EMU_RACECHECK
    __tsan_switch_to_fiber(checker_fibers[thread], __tsan_switch_to_fiber_no_sync);
#endif
#ifdef GPTK_EMU_MEMCHECK
    __sanitizer_start_switch_fiber(&scheduler_checker_stack, f.stack, kFiberStack);
#endif
}
// In the scheduler, back from a fiber.
inline void back_in_scheduler() {
#ifdef GPTK_EMU_MEMCHECK
    __sanitizer_finish_switch_fiber(scheduler_checker_stack, nullptr, nullptr);
#endif
}
// `ending`: the fiber will not be resumed (its stack is then the next block's thread's).
[[gnu::always_inline]] inline void leave_fiber([[maybe_unused]] Fiber& f, [[maybe_unused]] bool ending) {
#ifdef GPTK_EMU_RACECHECK
    __tsan_switch_to_fiber(checker_scheduler, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef GPTK_EMU_MEMCHECK
    __sanitizer_start_switch_fiber(ending ? nullptr : &f.checker_stack, scheduler_stack, scheduler_stack_size);
#endif
}
// In a fiber, started or resumed.
inline void in_fiber([[maybe_unused]] Fiber& f) {
#ifdef GPTK_EMU_MEMCHECK
    __sanitizer_finish_switch_fiber(f.checker_stack, &scheduler_stack, &scheduler_stack_size);
#endif
}

inline void switch_in(Fiber& f) {
    threadIdx = f.thread_idx, blockIdx = f.block_idx;
    copies = &f.copies, products = &f.products;
    wgmma_fenced = f.wgmma_fenced, current_warp = f.warp, current_warpgroup = f.warpgroup;
}

inline void switch_out(Fiber& f) {
    f.thread_idx = threadIdx, f.block_idx = blockIdx;
    f.wgmma_fenced = wgmma_fenced, f.warp = current_warp, f.warpgroup = current_warpgroup;
}

// Called inside the barriers' `Internal` scope.
inline void yield() {
    Fiber* f = running;
    switch_out(*f);
    leave_fiber(*f, false);
    switch_context(f->context, scheduler);
    in_fiber(*f);
}

// A fiber's body: the kernel, then leaving the barriers; back to the scheduler for good. Not
// instrumented: the sanitizer would enter it in a fiber it never leaves (see enter_fiber).
[[noreturn]] __attribute__((no_sanitize_thread)) inline void fiber_main() {
    in_fiber(*running);
    happens_after(&block_order[(block_serial - 1) % 2]);
    {
        Exit exit;
        (*running_kernel)();
    }
    happens_before(&block_order[block_serial % 2]);
    {
        Internal in;
        switch_out(*running);
        running->done = true;
    }
    leave_fiber(*running, true);
    switch_context(running->context, scheduler);
    __builtin_unreachable();
}

// The blocks of a launch, one after another (see run).
inline void run_blocks(const std::function<void()>& kernel) {
#ifdef GPTK_EMU_RACECHECK
    checker_scheduler = __tsan_get_current_fiber();
#endif
    gridDim = config_grid;
    blockDim = config_block;
    const int threads = static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
    static std::vector<std::unique_ptr<char[]>> stacks;
    while (stacks.size() < static_cast<size_t>(threads)) stacks.push_back(std::make_unique<char[]>(kFiberStack));
    running_kernel = &kernel;
    // Blocks in index order, or the reverse (emu_set_block_order): a GPU runs them in any order.
    const uint64_t blocks = uint64_t{gridDim.x} * gridDim.y * gridDim.z;
    for (uint64_t n = 0; n < blocks; n++) {
        const uint64_t index = reverse_blocks ? blocks - 1 - n : n;
        const auto bx = static_cast<unsigned>(index % gridDim.x);
        const auto by = static_cast<unsigned>(index / gridDim.x % gridDim.y);
        const auto bz = static_cast<unsigned>(index / gridDim.x / gridDim.y);
        Block block(threads);
        block_serial++;
        start_block_smem();
        std::vector<std::unique_ptr<Warp>> warps;
        for (int w = 0; w < (threads + kWarp - 1) / kWarp; w++)
            warps.push_back(std::make_unique<Warp>(std::min(kWarp, threads - w * kWarp)));
        std::vector<std::unique_ptr<WarpGroup>> groups;
        for (int w = 0; w < (threads + kWarpGroup - 1) / kWarpGroup; w++)
            groups.push_back(std::make_unique<WarpGroup>(std::min(kWarpGroup, threads - w * kWarpGroup)));
        current_block = &block;
        std::vector<Fiber> fibers(threads);
        for (int t = 0; t < threads; t++) {
            Fiber& f = fibers[t];
            f.thread_idx = dim3(t, 0, 0);
            f.block_idx = dim3(bx, by, bz);
            f.copies.deferred = defer_copies;
            f.products.deferred = defer_products;
            f.warp = warps[t / kWarp].get();
            f.warpgroup = groups[t / kWarpGroup].get();
            f.stack = stacks[t].get();
            unpoison(f.stack, kFiberStack);  // the frames the last block's thread left there
            start_context(f.context, f.stack, kFiberStack, fiber_main);
            prepare_fiber(t, f.block_idx);
        }
        // Round robin until every thread has ended; a round in which nobody arrived at a
        // barrier or ended is a hang.
        for (int left = threads; left > 0;) {
            const uint64_t before = arrivals;
            const int left_before = left;
            for (Fiber& f : fibers) {
                if (f.done) continue;
                running = &f;
                switch_in(f);
                enter_fiber(static_cast<size_t>(&f - fibers.data()), f);
                switch_context(scheduler, f.context);
                back_in_scheduler();
                if (f.done) left--;
            }
            if (left > 0 && left == left_before && arrivals == before) {
                std::fprintf(stderr,
                             "emulation: block (%u, %u) hangs: its %d live threads all wait at barriers the "
                             "others do not reach\n",
                             bx, by, left);
                std::abort();
            }
        }
        running = nullptr;
        blockIdx = dim3(bx, by, bz);
        end_block_smem();
    }
}

// Runs `kernel` over the configured grid. What the launching thread wrote before (the kernel's
// arguments) comes before every block, and what the blocks wrote before whatever it does next.
inline void run(const std::function<void()>& kernel) {
    happens_before(&block_order[block_serial % 2]);
    {
        Internal in;
        run_blocks(kernel);
    }
    happens_after(&block_order[block_serial % 2]);
}

}  // namespace emu

#define GPTK_EXPECT_ALIGNED(p, bytes) emu::expect_aligned((p), (bytes), __func__)

inline float __shfl_xor_sync(unsigned mask, float v, int offset) {
    return emu::exchange(v, (threadIdx.x % emu::kWarp) ^ offset, mask);
}
inline double __shfl_xor_sync(unsigned mask, double v, int offset) {
    return emu::exchange(v, (threadIdx.x % emu::kWarp) ^ offset, mask);
}
inline int __shfl_sync(unsigned mask, int v, int lane) { return emu::exchange(v, lane, mask); }
inline void __syncthreads() { emu::current_block->barrier.arrive_and_wait(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    {
        emu::Internal in;
        emu::expect_lanes(emu::current_warp, mask, 1u << threadIdx.x % emu::kWarp, "__syncwarp");
    }
    emu::current_warp->barrier.arrive_and_wait();
}

// ---- the tensor-core kernels' primitives (common.cuh declares them for the GPU) ----------------
// Shared memory is ordinary memory here, so its "addresses" are plain pointers; the asynchronous
// copies land at issue or at their wait (see the top); ldmatrix and mma exchange operands
// through the warp, as the hardware does, with the fragment layouts of the PTX ISA.
#define GPTK_HOST_EMULATION 1
typedef uintptr_t shared_addr;
inline shared_addr shared_address(const void* p) { return reinterpret_cast<shared_addr>(p); }

inline void cp_async_bytes(shared_addr dst, const void* src, int size, int src_bytes) {
    emu::expect_aligned(reinterpret_cast<const void*>(dst), size, "cp.async's shared destination");
    emu::expect_aligned(src, size, "cp.async's global source");
    emu::copies->issue([=] {
        std::memset(reinterpret_cast<void*>(dst), 0, size);
        std::memcpy(reinterpret_cast<void*>(dst), src, src_bytes);
    });
}
inline void cp_async_16(shared_addr dst, const void* src, int src_bytes) { cp_async_bytes(dst, src, 16, src_bytes); }
inline void cp_async_4(shared_addr dst, const void* src, int src_bytes) { cp_async_bytes(dst, src, 4, src_bytes); }
inline void cp_async_commit() { emu::copies->commit(); }
template <int N>
inline void cp_async_wait() {
    emu::copies->wait(N);
}

inline float fast_exp2(float x) { return std::exp2(x); }

// Atomic adds to global memory: relaxed atomic read-modify-writes, which, as the GPU's, order no
// other access (see race checking at the top).
inline float atomicAdd(float* address, float v) {
    std::atomic_ref<float> target(*address);
    return target.fetch_add(v, std::memory_order_relaxed);
}

namespace emu {
inline uint16_t half_at(const unsigned char* row, int col) {
    uint16_t v;
    std::memcpy(&v, row + 2 * col, 2);
    return v;
}

// Shared-memory bank conflicts of ldmatrix since the last emu_ldmatrix_conflicts: each matrix's
// eight 16-byte rows are one phase, conflict-free when they fall in the eight different 16-byte
// bank groups of a 128-byte line; a phase whose rows share a group takes one more wavefront per
// row beyond the first in that group.
inline std::atomic<long long> ldmatrix_phases{0}, ldmatrix_extra_wavefronts{0};

// Lane l gives the row address l % 8 of matrix l / 8 and gets, per matrix i, the pair at (row
// l / 4, cols 2(l % 4), +1), or with `trans` at (rows 2(l % 4), +1, col l / 4).
inline void ldmatrix(uint32_t* r, shared_addr p, bool trans) {
    Warp* w = current_warp;
    const int lane = threadIdx.x % kWarp;
    expect_aligned(reinterpret_cast<const void*>(p), 16, "an ldmatrix row");
    {
        Internal in;
        expect_lanes(w, ~0u, ~0u, "ldmatrix");
        w->rows[lane] = reinterpret_cast<const unsigned char*>(p);
    }
    w->barrier.arrive_and_wait();
    if (Internal in; lane == 0) {
        for (int i = 0; i < 4; i++) {
            int in_group[8] = {};
            for (int row = 0; row < 8; row++) in_group[(reinterpret_cast<uintptr_t>(w->rows[8 * i + row]) >> 4) & 7]++;
            ldmatrix_phases++;
            ldmatrix_extra_wavefronts += *std::max_element(in_group, in_group + 8) - 1;
        }
    }
    for (int i = 0; i < 4; i++) {
        uint16_t lo, hi;
        if (trans) {
            lo = half_at(w->rows[8 * i + 2 * (lane % 4)], lane / 4);
            hi = half_at(w->rows[8 * i + 2 * (lane % 4) + 1], lane / 4);
        } else {
            lo = half_at(w->rows[8 * i + lane / 4], 2 * (lane % 4));
            hi = half_at(w->rows[8 * i + lane / 4], 2 * (lane % 4) + 1);
        }
        r[i] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
    }
    w->barrier.arrive_and_wait();
}

inline float bf16_bits(uint32_t reg, int high) {
    const uint32_t bits = (high ? reg >> 16 : reg & 0xffffu) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
}  // namespace emu

inline void ldmatrix_x4(uint32_t* r, shared_addr p) { emu::ldmatrix(r, p, false); }
inline void ldmatrix_x4_trans(uint32_t* r, shared_addr p) { emu::ldmatrix(r, p, true); }

// d (16×8) += a (16×16) · b (16×8): every lane posts its fragments, then computes its own four
// outputs from the whole matrices.
inline void mma_bf16_16x8x16(float* d, const uint32_t* a, const uint32_t* b) {
    emu::Warp* w = emu::current_warp;
    const int lane = threadIdx.x % emu::kWarp;
    {
        emu::Internal in;
        emu::expect_lanes(w, ~0u, ~0u, "mma");
        for (int i = 0; i < 4; i++) w->regs[lane][i] = a[i];
        w->regs[lane][4] = b[0];
        w->regs[lane][5] = b[1];
    }
    w->barrier.arrive_and_wait();
    auto A = [&](int row, int k) {
        const int reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        return emu::bf16_bits(w->regs[(row % 8) * 4 + (k % 8) / 2][reg], k % 2);
    };
    auto B = [&](int k, int col) { return emu::bf16_bits(w->regs[col * 4 + (k % 8) / 2][4 + (k >= 8 ? 1 : 0)], k % 2); };
    const int g = lane / 4, t = lane % 4;
    float out[4];
    for (int e = 0; e < 4; e++) {
        const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
        float acc = d[e];
        for (int k = 0; k < 16; k++) acc += A(row, k) * B(k, col);
        out[e] = acc;
    }
    w->barrier.arrive_and_wait();
    for (int e = 0; e < 4; e++) d[e] = out[e];
}

// ---- Hopper's warpgroup matrix instructions (wgmma.cuh declares them for the GPU) -------------
// A wgmma runs at issue or at the wait that covers it (see the top); it reads its operands and
// accumulator then, from shared memory and from the issuing thread's registers. Operands in
// shared memory are read through the descriptor as the PTX ISA lays
// out 128-byte-swizzled tiles (the only mode the kernels use; any other stops the run): the
// descriptor's 18-bit start address and byte offsets locate the element, then the 16-byte chunk
// index (address bits 4–6) is XORed with the 128-byte row index (bits 7–9).
namespace emu {
// Checks made when a thread issues a wgmma. The PTX ISA asks for wgmma.fence before a wgmma whose
// registers other instructions touched; the kernels open every batch with one, and a wgmma issued
// without it stops the run. `.sync.aligned`: every thread of the warpgroup issues the same
// instruction together, with the same descriptors (desc_a 0 for A from registers) and the same
// accumulate flag; a warp that skips it or differs stops the run (on a GPU it would hang or be
// undefined).
inline void wgmma_issue_check(uint64_t desc_a, uint64_t desc_b, int accumulate) {
    if (!wgmma_fenced) {
        std::fprintf(stderr, "emulated wgmma: thread %u of block %u issues a batch without wgmma.fence\n",
                     threadIdx.x, blockIdx.x);
        std::abort();
    }
    WarpGroup* wg = current_warpgroup;
    const int tid = static_cast<int>(threadIdx.x) % kWarpGroup;
    {
        Internal in;
        wg->issued[tid][0] = desc_a;
        wg->issued[tid][1] = desc_b;
        wg->issued[tid][2] = static_cast<uint64_t>(accumulate);
    }
    wg->barrier.arrive_and_wait();
    if (std::memcmp(wg->issued[tid], wg->issued[0], sizeof wg->issued[0]) != 0) {
        std::fprintf(stderr, "emulated wgmma: thread %u of block %u issues other operands than its warpgroup's first\n",
                     threadIdx.x, blockIdx.x);
        std::abort();
    }
    wg->barrier.arrive_and_wait();
}
}  // namespace emu
inline void wgmma_fence() {
    emu::Internal in;
    emu::wgmma_fenced = true;
}
inline void wgmma_commit() {
    emu::Internal in;
    emu::wgmma_fenced = false;
    emu::products->commit();
}
template <int N>
inline void wgmma_wait() {
    emu::products->wait(N);
}
inline void fence_proxy_async() { emu::proxy_fence(); }
inline void wgmma_pin(float&) {}

namespace emu {
struct Descriptor {
    uintptr_t start, leading, stride;
};
inline Descriptor decode(uint64_t d) {
    if ((d >> 62) != 1 || ((d >> 49) & 7) != 0) {
        std::fprintf(stderr, "emulated wgmma: descriptor %016llx is not a 128-byte swizzle at base offset 0\n",
                     static_cast<unsigned long long>(d));
        std::abort();
    }
    return {(d & 0x3FFF) << 4, ((d >> 16) & 0x3FFF) << 4, ((d >> 32) & 0x3FFF) << 4};
}
// The bf16 at byte `offset` of the shared window, 128-byte swizzle applied, as the async proxy
// sees it. A read of bytes that differ from what the threads see (written through the generic
// proxy and not yet fenced by every thread) stops the run: on the GPU it may read either.
inline uintptr_t swizzled(uintptr_t offset) { return offset ^ ((offset >> 7) & 7) << 4; }
inline float swizzled_bf16(uintptr_t offset) {
    offset = swizzled(offset);
    if (offset + 2 > smem_in_use()) {
        std::fprintf(stderr, "emulated wgmma: block %u reads shared byte %zu, past the %zu bytes the host gives it\n",
                     blockIdx.x, static_cast<size_t>(offset), smem_in_use());
        std::abort();
    }
    if (view_block != block_serial || half_at(async_view, offset / 2) != half_at(dynamic_smem, offset / 2)) {
        std::fprintf(stderr,
                     "emulated wgmma: block %u reads shared byte %zu, written through the generic proxy since "
                     "its threads' last fence.proxy.async\n",
                     blockIdx.x, static_cast<size_t>(offset));
        std::abort();
    }
    const uint32_t bits = static_cast<uint32_t>(half_at(async_view, offset / 2)) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
// Element (mn, k) of a K-major operand: 128-byte rows along k, 8-row atoms `stride` apart.
inline float k_major(const Descriptor& d, int mn, int k) {
    return swizzled_bf16(d.start + (mn / 8) * d.stride + (mn % 8) * 128 + 2 * k);
}
// Element (k, n) of an MN-major operand: 128-byte rows along n (64 columns, the next 64
// `leading` bytes on), 8-row atoms of k `stride` apart.
inline float mn_major(const Descriptor& d, int k, int n) {
    return swizzled_bf16(d.start + (n / 64) * d.leading + (k / 8) * d.stride + (k % 8) * 128 + 2 * (n % 64));
}
// The accumulator of this thread: element i is (row, col) of the 64×N result.
inline void accumulator_at(int i, int& row, int& col) {
    const int tid = static_cast<int>(threadIdx.x) % kWarpGroup, warp = tid / kWarp, lane = tid % kWarp;
    row = 16 * warp + lane / 4 + 8 * ((i % 4) / 2);
    col = 8 * (i / 4) + 2 * (lane % 4) + i % 2;
}
}  // namespace emu

namespace emu {
// Race checking: a product reads the 16 elements along k of its operands' rows `mn` through the
// issuing thread (the product's own reads, from wgmma's view, are hidden from the checker).
inline void note_operand_reads([[maybe_unused]] const Descriptor& d, [[maybe_unused]] int mn,
                               [[maybe_unused]] bool transposed) {
#ifdef GPTK_EMU_RACECHECK
    if (!transposed) {
        const uintptr_t row = d.start + (mn / 8) * d.stride + (mn % 8) * 128;
        for (uintptr_t chunk = row; chunk < row + 32; chunk += 16) __tsan_read_range(dynamic_smem + swizzled(chunk), 16);
    } else {
        for (int k = 0; k < 16; k++)
            __tsan_read_range(dynamic_smem + swizzled(d.start + (mn / 64) * d.leading + (k / 8) * d.stride +
                                                      (k % 8) * 128 + 2 * (mn % 64)), 2);
    }
#endif
}
// The rows of A (none where A is in registers) and the columns of B whose products this thread's
// accumulator holds (see accumulator_at).
template <int N>
inline void note_product_reads([[maybe_unused]] const Descriptor* a, [[maybe_unused]] bool trans_a,
                               [[maybe_unused]] const Descriptor& b, [[maybe_unused]] bool trans_b) {
#ifdef GPTK_EMU_RACECHECK
    int row, col;
    for (int i = 0; a && i < 4; i += 2) {
        accumulator_at(i, row, col);
        note_operand_reads(*a, row, trans_a);
    }
    for (int i = 0; i < N / 2; i += 4)
        for (int e = 0; e < 2; e++) {
            accumulator_at(i + e, row, col);
            note_operand_reads(b, col, trans_b);
        }
#endif
}
// Element (mn, k) of an operand from shared memory: K-major, or MN-major where the instruction's
// transpose bit is set.
inline float operand(const Descriptor& d, int mn, int k, bool transposed) {
    return transposed ? mn_major(d, k, mn) : k_major(d, mn, k);
}
// A wgmma with both operands from shared memory.
template <int N>
inline void wgmma_smem(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate, bool trans_a, bool trans_b) {
    wgmma_issue_check(desc_a, desc_b, accumulate);
    const Descriptor a = decode(desc_a), b = decode(desc_b);
    products->issue([=] {
        note_product_reads<N>(&a, trans_a, b, trans_b);
        Internal in;
        for (int i = 0; i < N / 2; i++) {
            int row, col;
            accumulator_at(i, row, col);
            float acc = accumulate ? d[i] : 0.0f;
            for (int k = 0; k < 16; k++) acc += operand(a, row, k, trans_a) * operand(b, col, k, trans_b);
            d[i] = acc;
        }
    });
}
}  // namespace emu

template <int N>
inline void wgmma_ss(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
    emu::wgmma_smem<N>(d, desc_a, desc_b, accumulate, false, false);
}

template <int N>
inline void wgmma_ss_tt(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
    emu::wgmma_smem<N>(d, desc_a, desc_b, accumulate, true, true);
}

template <int N>
inline void wgmma_rs_tb(float* d, const uint32_t* a, uint64_t desc_b, int accumulate) {
    emu::wgmma_issue_check(0, desc_b, accumulate);
    emu::products->issue([=] {
        emu::WarpGroup* wg = emu::current_warpgroup;
        const int tid = static_cast<int>(threadIdx.x) % emu::kWarpGroup;
        {
            emu::Internal in;
            for (int i = 0; i < 4; i++) wg->a[tid][i] = a[i];
        }
        wg->barrier.arrive_and_wait();
        const emu::Descriptor b = emu::decode(desc_b);
        emu::note_product_reads<N>(nullptr, false, b, true);
        // A's (row, k) in warp row / 16's mma.m16n8k16 A layout.
        auto A = [&](int row, int k) {
            const int r = row % 16, reg = (r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
            return emu::bf16_bits(wg->a[(row / 16) * emu::kWarp + (r % 8) * 4 + (k % 8) / 2][reg], k % 2);
        };
        float out[N / 2];
        {
            emu::Internal in;
            for (int i = 0; i < N / 2; i++) {
                int row, col;
                emu::accumulator_at(i, row, col);
                float acc = accumulate ? d[i] : 0.0f;
                for (int k = 0; k < 16; k++) acc += A(row, k) * emu::mn_major(b, k, col);
                out[i] = acc;
            }
        }
        wg->barrier.arrive_and_wait();
        for (int i = 0; i < N / 2; i++) d[i] = out[i];
    });
}

// ---- TMA and mbarriers (tma.cuh declares them for the GPU) ----------------------------------------
// A tensor map (cuTensorMapEncodeTiled) is 128 opaque bytes that the driver encodes; here
// emu_tensor_map_encode writes this into them, for the emulated driver and check_kernels.py alike.
// A tensor copy (cp.async.bulk.tensor, tile mode) moves one box of the map's tensor into shared
// memory: elements outside the tensor are filled (zeros, or NaN), the box's rows are stored one
// after another and, with the 128-byte swizzle, 16-byte chunk c of a row at c ^ (address bits 7–9),
// as wgmma's descriptors read them. It writes through the async proxy, so wgmma sees it without a
// fence (both views of shared memory are written), and it completes on its mbarrier: at issue, or
// with copies deferred (emu_set_deferred), when a thread first waits for that barrier.
namespace emu {
constexpr uint64_t kTensorMapMagic = 0x676d7074656e736fULL;
struct TensorMap {
    uint64_t magic;
    const unsigned char* base;
    uint32_t elem_bytes, swizzle, oob_nan;  // dimensions past the rank have size 1
    uint64_t dims[3], strides[2];
    uint32_t box[3];
};
static_assert(sizeof(TensorMap) <= 128, "a tensor map is 128 bytes");

inline MBarrier& mbarrier_at(shared_addr bar, const char* what) {
    auto it = current_block->mbarriers.find(bar);
    if (it == current_block->mbarriers.end()) {
        std::fprintf(stderr, "emulation: %s by thread %u of block %u on shared byte %zu, which is no mbarrier\n", what,
                     threadIdx.x, blockIdx.x, static_cast<size_t>(bar - shared_address(dynamic_smem)));
        std::abort();
    }
    return it->second;
}

// The current phase completes once every arrival and every announced byte are in.
inline void mbarrier_settle(MBarrier& b) {
    arrivals++;
    if (b.pending == 0 && b.tx == 0) {
        b.phase++;
        b.pending = b.expected;
    }
}

inline void mbarrier_arrive(shared_addr bar, long long tx, const char* what) {
    MBarrier& b = mbarrier_at(bar, what);
    happens_before(&b);
    Internal in;
    if (b.pending == 0) {
        std::fprintf(stderr, "emulation: %s by thread %u of block %u: more arrivals than the mbarrier's count %d\n",
                     what, threadIdx.x, blockIdx.x, b.expected);
        std::abort();
    }
    b.tx += tx;
    b.pending--;
    mbarrier_settle(b);
}

// One box of `map` at coordinates c into shared memory at dst, as the hardware lays it out.
inline void tensor_copy(shared_addr dst, const TensorMap& m, const int* c) {
    size_t at = dst - shared_address(dynamic_smem);  // the box's next byte, before the swizzle
    for (uint32_t z = 0; z < m.box[2]; z++) {
        for (uint32_t y = 0; y < m.box[1]; y++) {
            const long long cy = static_cast<long long>(c[1]) + y, cz = static_cast<long long>(c[2]) + z;
            for (uint32_t x = 0; x < m.box[0]; x++, at += m.elem_bytes) {
                const long long cx = static_cast<long long>(c[0]) + x;
                unsigned char e[8];
                if (cx < 0 || cy < 0 || cz < 0 || cx >= static_cast<long long>(m.dims[0]) ||
                    cy >= static_cast<long long>(m.dims[1]) || cz >= static_cast<long long>(m.dims[2])) {
                    // NaN fill: sign clear, every exponent and mantissa bit set.
                    std::memset(e, m.oob_nan ? 0xFF : 0, m.elem_bytes);
                    if (m.oob_nan) e[m.elem_bytes - 1] = 0x7F;
                } else {
                    std::memcpy(e, m.base + cx * m.elem_bytes + cy * m.strides[0] + cz * m.strides[1], m.elem_bytes);
                }
                const size_t to = m.swizzle == 128 ? swizzled(at) : at;
                if (to + m.elem_bytes > smem_in_use()) {
                    std::fprintf(stderr,
                                 "emulation: a TMA copy of block %u writes shared byte %zu, past the %zu bytes the host "
                                 "gives it\n",
                                 blockIdx.x, to, smem_in_use());
                    std::abort();
                }
                std::memcpy(dynamic_smem + to, e, m.elem_bytes);
                std::memcpy(async_view + to, e, m.elem_bytes);
            }
        }
    }
}
}  // namespace emu

// Writes a tiled tensor map into `map` (128 bytes): `rank` dimensions (1 to 3 here) of
// `elem_bytes`-byte elements at `base`, sizes `dims` innermost first, byte strides of dimensions
// 1.. in `strides`, a box of `box` elements, element strides `elem_strides` (1 only), the
// 128-byte swizzle (`swizzle_bytes` 128) or none (0), NaN or zero fill. Returns 0, or 1 after saying
// on stderr what cuTensorMapEncodeTiled would refuse (or what the emulation does not model).
extern "C" int emu_tensor_map_encode(void* map, unsigned elem_bytes, unsigned rank, const void* base,
                                     const uint64_t* dims, const uint64_t* strides, const uint32_t* box,
                                     const uint32_t* elem_strides, unsigned swizzle_bytes, int oob_nan) {
    auto refuse = [](const char* why) {
        std::fprintf(stderr, "emulated cuTensorMapEncodeTiled: %s\n", why);
        return 1;
    };
    if (reinterpret_cast<uintptr_t>(map) % 64 != 0) return refuse("the tensor map is not 64-byte aligned");
    if (rank < 1 || rank > 3) return refuse("only ranks 1 to 3 are modelled");
    if (elem_bytes != 1 && elem_bytes != 2 && elem_bytes != 4 && elem_bytes != 8)
        return refuse("an element of 1, 2, 4 or 8 bytes");
    if (reinterpret_cast<uintptr_t>(base) % 16 != 0) return refuse("the global address is not 16-byte aligned");
    if (swizzle_bytes != 0 && swizzle_bytes != 128) return refuse("only no swizzle and the 128-byte swizzle are modelled");
    emu::TensorMap m{};
    m.magic = emu::kTensorMapMagic;
    m.base = static_cast<const unsigned char*>(base);
    m.elem_bytes = elem_bytes, m.swizzle = swizzle_bytes, m.oob_nan = oob_nan != 0;
    for (unsigned d = 0; d < 3; d++) {
        m.dims[d] = d < rank ? dims[d] : 1;
        m.box[d] = d < rank ? box[d] : 1;
        if (d < rank && (dims[d] == 0 || dims[d] > (uint64_t{1} << 32))) return refuse("a dimension of 0 or over 2^32");
        if (d < rank && (box[d] == 0 || box[d] > 256)) return refuse("a box dimension of 0 or over 256");
        if (d < rank && elem_strides[d] != 1) return refuse("only element strides of 1 are modelled");
    }
    for (unsigned d = 0; d + 1 < rank; d++) {
        if (strides[d] % 16 != 0 || strides[d] >= (uint64_t{1} << 40))
            return refuse("a global stride that is not a multiple of 16 bytes under 2^40");
        m.strides[d] = strides[d];
    }
    const uint64_t row = uint64_t{m.box[0]} * elem_bytes;
    if (row % 16 != 0) return refuse("the box's inner dimension is not a multiple of 16 bytes");
    if (swizzle_bytes == 128 && row != 128) return refuse("the 128-byte swizzle with a box row other than 128 bytes");
    std::memset(map, 0, 128);
    std::memcpy(map, &m, sizeof m);
    return 0;
}

inline void mbar_init(shared_addr bar, int count) {
    emu::expect_aligned(reinterpret_cast<const void*>(bar), 8, "an mbarrier");
    std::memset(reinterpret_cast<void*>(bar), 0, 8);  // the barrier's bytes, as the GPU's object
    emu::Internal in;
    emu::MBarrier& b = emu::current_block->mbarriers[bar];
    b = emu::MBarrier{};
    b.expected = b.pending = count;
}
inline void mbar_init_fence() {}
inline void mbar_arrive(shared_addr bar) { emu::mbarrier_arrive(bar, 0, "mbarrier.arrive"); }
inline void mbar_arrive_expect_tx(shared_addr bar, uint32_t bytes) {
    emu::mbarrier_arrive(bar, bytes, "mbarrier.arrive.expect_tx");
}
// Waits until the phase of parity `parity` has completed, running the copies that complete on it
// where they were deferred to this wait.
inline void mbar_wait(shared_addr bar, int parity) {
    emu::MBarrier& b = emu::mbarrier_at(bar, "mbarrier.try_wait");
    for (;;) {
        std::vector<std::function<void()>> copies;
        {
            emu::Internal in;
            if ((b.phase & 1) != static_cast<uint64_t>(parity & 1)) break;
            copies.swap(b.copies);
            if (copies.empty()) {
                emu::yield();
                continue;
            }
        }
        for (auto& copy : copies) copy();
    }
    emu::happens_after(&b);
}
// One box of the tensor map at coordinates (c0, c1, c2) into shared memory at dst, completing
// its bytes on the mbarrier bar.
inline void tma_load_3d(shared_addr dst, const CUtensorMap* map, int c0, int c1, int c2, shared_addr bar) {
    emu::TensorMap m;
    std::memcpy(&m, map, sizeof m);
    if (m.magic != emu::kTensorMapMagic) {
        std::fprintf(stderr, "emulation: thread %u of block %u copies through a tensor map that was not encoded\n",
                     threadIdx.x, blockIdx.x);
        std::abort();
    }
    emu::expect_aligned(reinterpret_cast<const void*>(dst), m.swizzle == 128 ? 1024 : 128,
                        "a TMA copy's shared destination");
    emu::MBarrier& b = emu::mbarrier_at(bar, "a TMA copy");
    const long long bytes = static_cast<long long>(m.box[0]) * m.box[1] * m.box[2] * m.elem_bytes;
    // Run later (deferred) by whichever thread waits, the copy still comes after everything its
    // issuing thread saw when it issued it (what the race check orders by).
    auto issued = std::make_shared<char>();
    emu::happens_before(issued.get());
    auto copy = [dst, m, c0, c1, c2, mb = &b, bytes, issued] {
        emu::happens_after(issued.get());
        const int at[3] = {c0, c1, c2};
        emu::tensor_copy(dst, m, at);
        emu::happens_before(mb);
        emu::Internal in;
        mb->tx -= bytes;
        emu::mbarrier_settle(*mb);
    };
    if (emu::defer_copies) {
        emu::Internal in;
        b.copies.push_back(copy);
    } else {
        copy();
    }
}
// Where asynchronous work completes, per kind: at issue (0) or at its wait (1).
extern "C" void emu_set_deferred(int copies, int products) {
    emu::defer_copies = copies != 0;
    emu::defer_products = products != 0;
}

// The order in which launches run their blocks from now on: by index (0) or reversed (1). The
// blocks of a launch may run in any order on a GPU, so a kernel's results must not depend on it;
// one whose block reads what another block of the same launch writes gives other numbers one
// way or the other.
extern "C" void emu_set_block_order(int reverse) { emu::reverse_blocks = reverse != 0; }

// The ldmatrix phases run and the extra wavefronts their bank conflicts cost since the last call
// (see ldmatrix_phases); both counters restart.
extern "C" long long emu_ldmatrix_conflicts(long long* phases) {
    *phases = emu::ldmatrix_phases.exchange(0);
    return emu::ldmatrix_extra_wavefronts.exchange(0);
}

extern "C" void emu_config(unsigned gx, unsigned gy, unsigned bx, unsigned long long smem) {
    emu::config_smem = smem;
    emu::config_grid = dim3(gx, gy, 1);
    emu::config_block = dim3(bx, 1, 1);
}

// A kernel's dynamic shared memory: emu::dynamic_smem.
#define GPTK_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(emu::dynamic_smem)

// Every entry point by name, for the emulated driver (driver.cpp): its block size bound and a
// binder that reads its arguments as cuLaunchKernel passes them (an array of pointers to each
// argument's value), by the entry point's own parameter types, and returns the call.
namespace emu {
struct EntryPoint {
    const char* name;
    unsigned max_threads;
    std::function<void()> (*bind)(void** params);
};
inline std::vector<EntryPoint>& entry_points() {
    static std::vector<EntryPoint> all;
    return all;
}
template <typename F>
struct Binder;
template <typename... A>
struct Binder<void (*)(A...)> {
    template <void (*F)(A...)>
    static std::function<void()> bind(void** params) {
        return bind_at<F>(params, std::index_sequence_for<A...>{});
    }
    template <void (*F)(A...), size_t... I>
    static std::function<void()> bind_at([[maybe_unused]] void** params, std::index_sequence<I...>) {
        std::tuple<std::decay_t<A>...> values{*static_cast<std::decay_t<A>*>(params[I])...};
        return [values] { std::apply(F, values); };
    }
};
struct Registered {
    Registered(const char* name, unsigned max_threads, std::function<void()> (*bind)(void**)) {
        entry_points().push_back({name, max_threads, bind});
    }
};
}  // namespace emu
// Runs the entry point `name` with its arguments as cuLaunchKernel takes them (an array of
// pointers to each argument's value), over the configured grid; returns 1 when there is no such
// entry point. check_kernels.py launches through it the kernels whose parameters ctypes cannot
// pass by value (a 64-byte-aligned CUtensorMap).
extern "C" int emu_launch(const char* name, void** params) {
    for (const emu::EntryPoint& e : emu::entry_points()) {
        if (std::strcmp(e.name, name) == 0) {
            e.bind(params)();
            return 0;
        }
    }
    return 1;
}
#define GPTK_EMU_REGISTER(fn, BLOCK) \
    static emu::Registered fn##_registered(#fn, BLOCK, &emu::Binder<decltype(&fn)>::bind<&fn>);

// Each entry point runs its template over the configured grid.
#define GPTK_ENTRY_POINTS(name, BLOCK, PARAMS, ARGS)                                  \
    extern "C" void name##_f32 PARAMS(float) { emu::run([=] { name<float> ARGS; }); } \
    extern "C" void name##_bf16 PARAMS(bf16) { emu::run([=] { name<bf16> ARGS; }); } \
    GPTK_EMU_REGISTER(name##_f32, BLOCK)                                              \
    GPTK_EMU_REGISTER(name##_bf16, BLOCK)
#define GPTK_BF16_ENTRY_POINT(name, BLOCK, MIN_BLOCKS, PARAMS, CALL)   \
    extern "C" void name##_bf16 PARAMS { emu::run([=] { CALL; }); } \
    GPTK_EMU_REGISTER(name##_bf16, BLOCK)
