// funcopt's CPU kernels: the work split and the threads that run it (included by each kernel).
//
// A step is a list of units (up to kBlock elements of one leaf) taken from an atomic counter
// by every thread that runs `Work::Run`, so a thread that starts late (or never) only means
// that the others take more units. Every unit runs with one floating-point control word
// (MXCSR on x86-64, FPCR on AArch64): XLA's, which flushes subnormals, so that the pool
// threads and the direct entry points round exactly like the XLA computations.
//
// Two ways in, a kernel's step over its leaves taking one each (`RunLeavesOnPool`,
// `RunLeavesDirect`):
// * an XLA FFI handler (`RunOnPool`): the calling thread and tasks on XLA's intra-op pool;
// * a plain C entry point called with raw pointers (torch tensors; `RunDirect`): the calling
//   thread and the threads of the OpenMP runtime that `funcopt_set_parallel` was given
//   (libgomp's `GOMP_parallel`, the one torch runs its own intra-op work on, so that no
//   second pool spins against torch's), else short-lived threads of its own.

#ifndef FUNCOPT_KERNELS_PARALLEL_H_
#define FUNCOPT_KERNELS_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define FUNCOPT_GET_FP_CONTROL() _mm_getcsr()
#define FUNCOPT_SET_FP_CONTROL(x) _mm_setcsr(static_cast<unsigned int>(x))
using FpControl = unsigned int;
#elif defined(__aarch64__)
using FpControl = uint64_t;
static inline FpControl FUNCOPT_GET_FP_CONTROL() {
  FpControl fpcr;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
  return fpcr;
}
static inline void FUNCOPT_SET_FP_CONTROL(FpControl fpcr) {
  __asm__ __volatile__("msr fpcr, %0" : : "r"(fpcr));
}
#else
// Unknown control register: the pool threads could flush subnormals differently from the
// calling thread, so everything runs on the calling thread (and the direct entry points,
// which cannot set XLA's control word, fail their self-check on subnormals).
#define FUNCOPT_SINGLE_THREADED 1
using FpControl = int;
#define FUNCOPT_GET_FP_CONTROL() 0
#define FUNCOPT_SET_FP_CONTROL(x) ((void)(x))
#endif

namespace funcopt {

constexpr int64_t kBlock = 1 << 16;  // elements per unit of work: 256 KiB per stream

struct Unit {
  int32_t leaf;
  int64_t begin, end;
};

// Units shared by the threads of one step. Tasks that start after all units are taken return
// without touching the buffers, so a late pool task can outlive the call safely.
class Work {
 public:
  Work(FpControl fp_control, std::function<void(const Unit&)> body)
      : fp_control_(fp_control), body_(std::move(body)) {}

  void Add(int32_t leaf, int64_t n, int64_t block = kBlock) {
    for (int64_t b = 0; b < n; b += block) units_.push_back({leaf, b, std::min(n, b + block)});
  }
  size_t size() const { return units_.size(); }

  void Run() {
    size_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= units_.size()) return;
    const FpControl saved = FUNCOPT_GET_FP_CONTROL();
    FUNCOPT_SET_FP_CONTROL(fp_control_);
    for (; i < units_.size(); i = next_.fetch_add(1, std::memory_order_relaxed)) {
      body_(units_[i]);
      done_.fetch_add(1, std::memory_order_release);
    }
    FUNCOPT_SET_FP_CONTROL(saved);
  }

  void Wait() const {
    while (done_.load(std::memory_order_acquire) < units_.size()) std::this_thread::yield();
  }

 private:
  FpControl fp_control_;
  std::function<void(const Unit&)> body_;
  std::vector<Unit> units_;
  std::atomic<size_t> next_{0};
  std::atomic<size_t> done_{0};
};

inline size_t Helpers(size_t units, int64_t threads) {
#ifdef FUNCOPT_SINGLE_THREADED
  return 0;
#else
  return std::min(units > 0 ? units - 1 : 0, static_cast<size_t>(std::max<int64_t>(0, threads)));
#endif
}

// The calling thread and `helpers` tasks of an XLA FFI thread pool (anything with
// `Schedule(std::function<void()>)`).
template <class Pool>
void RunOnPool(Pool& pool, int64_t pool_threads, const std::shared_ptr<Work>& work) {
  const size_t helpers = Helpers(work->size(), pool_threads);
  for (size_t i = 0; i < helpers; ++i) pool.Schedule([work] { work->Run(); });
  work->Run();
  work->Wait();
}

// A step over `n_leaves` leaves of `sizes[i]` elements, `body` called on each unit: an FFI
// handler's way in (XLA's control word, the calling thread and its intra-op pool).
template <class Pool>
void RunLeavesOnPool(Pool& pool, std::function<void(const Unit&)> body, const int64_t* sizes,
                     size_t n_leaves) {
  auto work = std::make_shared<Work>(FUNCOPT_GET_FP_CONTROL(), std::move(body));
  for (size_t i = 0; i < n_leaves; ++i) work->Add(static_cast<int32_t>(i), sizes[i]);
  RunOnPool(pool, pool.num_threads(), work);
}

// libgomp's `GOMP_parallel(fn, data, num_threads, flags)`: runs fn(data) on a team of
// num_threads threads, the caller included, and returns when all have.
using ParallelFn = void (*)(void (*)(void*), void*, unsigned, unsigned);
inline std::atomic<ParallelFn>& Parallel() {
  static std::atomic<ParallelFn> parallel{nullptr};
  return parallel;
}

// The calling thread and up to `threads - 1` more.
inline void RunDirect(Work& work, int64_t threads) {
  const size_t helpers = Helpers(work.size(), threads - 1);
  if (helpers == 0) {
    work.Run();
    return;
  }
  if (ParallelFn parallel = Parallel().load()) {
    parallel([](void* w) { static_cast<Work*>(w)->Run(); }, &work,
             static_cast<unsigned>(helpers + 1), 0);
    return;
  }
  std::vector<std::thread> team;
  for (size_t i = 0; i < helpers; ++i) team.emplace_back([&work] { work.Run(); });
  work.Run();
  for (auto& t : team) t.join();
}

// The same on the threads of `RunDirect` with the control word `fp_control`: a direct entry
// point's way in (`block`: elements per unit).
inline void RunLeavesDirect(FpControl fp_control, std::function<void(const Unit&)> body,
                            const int64_t* sizes, int64_t n_leaves, int64_t threads,
                            int64_t block = kBlock) {
  Work work(fp_control, std::move(body));
  for (int64_t i = 0; i < n_leaves; ++i) work.Add(static_cast<int32_t>(i), sizes[i], block);
  RunDirect(work, threads);
}

}  // namespace funcopt

// What every kernel library defines besides its own handlers (after including ffi.h):
//   funcopt_set_parallel(fn): the OpenMP runtime's GOMP_parallel for RunDirect (or null);
//   funcopt_copy(n, dst, src, bytes, threads): n memcpy's on RunDirect's threads;
//   FuncoptFpControl: an FFI handler writing the control word XLA runs it with into a u32[2]
//   (low, high), the word the direct entry points are given to round like XLA.
#define FUNCOPT_DEFINE_COMMON_ENTRY_POINTS()                                              \
  extern "C" void funcopt_set_parallel(void* fn) {                                        \
    funcopt::Parallel().store(reinterpret_cast<funcopt::ParallelFn>(fn));                 \
  }                                                                                       \
  static xla::ffi::Error FuncoptFpControlImpl(xla::ffi::Result<xla::ffi::BufferR1<        \
                                              xla::ffi::U32>> out) {                     \
    if (out->element_count() != 2) {                                                      \
      return xla::ffi::Error::InvalidArgument("funcopt_fp_control: the result is u32[2]"); \
    }                                                                                     \
    const uint64_t word = static_cast<uint64_t>(FUNCOPT_GET_FP_CONTROL());                \
    out->typed_data()[0] = static_cast<uint32_t>(word);                                   \
    out->typed_data()[1] = static_cast<uint32_t>(word >> 32);                             \
    return xla::ffi::Error::Success();                                                    \
  }                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(FuncoptFpControl, FuncoptFpControlImpl,                   \
                                xla::ffi::Ffi::Bind().Ret<xla::ffi::BufferR1<xla::ffi::U32>>()); \
  extern "C" int funcopt_copy(int64_t n, void* const* dst, const void* const* src,           \
                              const int64_t* bytes, int64_t threads) {                    \
    funcopt::RunLeavesDirect(                                                             \
        FUNCOPT_GET_FP_CONTROL(),                                                         \
        [&](const funcopt::Unit& u) {                                                     \
          std::memcpy(static_cast<char*>(dst[u.leaf]) + u.begin,                          \
                      static_cast<const char*>(src[u.leaf]) + u.begin, u.end - u.begin);  \
        },                                                                                \
        bytes, n, threads, 1 << 18);                                                      \
    return 0;                                                                             \
  }

#endif  // FUNCOPT_KERNELS_PARALLEL_H_
