// funcopt's fused AdamW step for XLA:CPU: one pass per parameter, the update applied in place.
//
// XLA:CPU has no multi-output loop fusion, so `funcopt.adamw` + `optax.apply_updates` runs
// three loops per leaf (new m, new v, new p reading both back): 10 memory accesses per
// parameter where 7 are compulsory (read p, g, m, v; write p, m, v). This kernel makes the 7,
// over all float32 leaves in one call, split into blocks over XLA's intra-op thread pool.
//
// The arithmetic is `funcopt.adamw`'s, operation for operation, so the results are bitwise
// equal to the jitted XLA path (which is what `tests/test_fused_adamw.py` checks):
//   m' = fma(1 - b1, g, m * b1)                       torch: exp_avg.mul_(b1).add_(g, alpha=1-b1)
//   v' = fma((1 - b2) * g, g, v * b2)                 torch: exp_avg_sq.mul_(b2).addcmul_(g, g, ...)
//   u  = (-step_size * m') / (sqrt(v') + eps)         torch: p.addcdiv_(m', denom, value=-step_size)
//   p' = p + u, then with decay  n = fma(decay, p', p'),  p' = p + (n - p)
// (`p + (n - p)` is what `optax.apply_updates` makes of the `n - p` that adamw hands back.)
// It is compiled with -ffp-contract=off, so the only fused multiply-adds are the explicit ones,
// and every block runs with the calling thread's floating-point control word (XLA flushes
// subnormals to zero; the pool threads then do the same).
//
// Buffers: arguments `coefficients` f32[6] = (b1, 1 - b1, b2, 1 - b2, eps, decay),
// `step_sizes` f32[L], `addresses` u32[2L] or u32[0], then (p, g, m, v) for each of the L
// leaves. p, m and v are updated in place. Results, per leaf: (p', m', v') aliasing (p, m, v)
// when the attribute `param_results` is true (XLA owns the parameters); otherwise (m', v')
// only, and p is memory XLA does not own (a torch tensor imported through DLPack) that this
// kernel writes as torch's own optimizers do; `addresses` then holds each such tensor's data
// pointer (low and high 32 bits: JAX has no 64-bit integers by default), and the call fails rather than update a copy. Attribute `decays`: s64[L], 1 where
// a leaf decays.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define FUNCOPT_GET_FP_CONTROL() _mm_getcsr()
#define FUNCOPT_SET_FP_CONTROL(x) _mm_setcsr(x)
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
// calling thread, so everything runs on the calling thread.
#define FUNCOPT_SINGLE_THREADED 1
using FpControl = int;
#define FUNCOPT_GET_FP_CONTROL() 0
#define FUNCOPT_SET_FP_CONTROL(x) ((void)(x))
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 1 << 16;  // elements per unit of work: 256 KiB per stream

struct Coefficients {
  float b1, one_minus_b1, b2, one_minus_b2, eps, decay;
};

// One block of one leaf, updated in place.
template <bool kDecay>
void Block(const Coefficients& c, float step_size, const float* __restrict g,
           float* __restrict m, float* __restrict v, float* __restrict p, int64_t n) {
  const float minus_step_size = -step_size;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = std::fma(c.one_minus_b1, gi, m[i] * c.b1);
    const float vi = std::fma(c.one_minus_b2 * gi, gi, v[i] * c.b2);
    const float u = (minus_step_size * mi) / (std::sqrt(vi) + c.eps);
    const float pi = p[i];
    float new_p = pi + u;
    if constexpr (kDecay) new_p = pi + (std::fma(c.decay, new_p, new_p) - pi);
    m[i] = mi;
    v[i] = vi;
    p[i] = new_p;
  }
}

struct Leaf {
  const float* g;
  float* m;
  float* v;
  float* p;
  float step_size;
  bool decay;
};

struct Unit {
  int32_t leaf;
  int64_t begin, end;
};

// Work shared by the calling thread and the pool tasks. Tasks that start after all units are
// taken return without touching the buffers, so a late task can outlive the call safely.
struct Work {
  Coefficients c;
  std::vector<Leaf> leaves;
  std::vector<Unit> units;
  FpControl fp_control;
  std::atomic<size_t> next{0};
  std::atomic<size_t> done{0};

  void Run() {
    size_t i = next.fetch_add(1, std::memory_order_relaxed);
    if (i >= units.size()) return;
    const FpControl saved = FUNCOPT_GET_FP_CONTROL();
    FUNCOPT_SET_FP_CONTROL(fp_control);
    for (; i < units.size(); i = next.fetch_add(1, std::memory_order_relaxed)) {
      const Unit& w = units[i];
      const Leaf& l = leaves[w.leaf];
      const int64_t o = w.begin;
      if (l.decay) {
        Block<true>(c, l.step_size, l.g + o, l.m + o, l.v + o, l.p + o, w.end - o);
      } else {
        Block<false>(c, l.step_size, l.g + o, l.m + o, l.v + o, l.p + o, w.end - o);
      }
      done.fetch_add(1, std::memory_order_release);
    }
    FUNCOPT_SET_FP_CONTROL(saved);
  }
};

ffi::Error AdamWImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> coefficients,
                     ffi::Buffer<ffi::F32> step_sizes, ffi::Buffer<ffi::U32> addresses,
                     ffi::RemainingArgs args,
                     ffi::RemainingRets rets, ffi::Span<const int64_t> decays,
                     bool param_results) {
  const size_t n_leaves = step_sizes.element_count();
  const size_t per_leaf = param_results ? 3 : 2;
  if (coefficients.element_count() != 6 || args.size() != 4 * n_leaves ||
      rets.size() != per_leaf * n_leaves || decays.size() != n_leaves ||
      addresses.element_count() != (param_results ? 0 : 2 * n_leaves)) {
    return ffi::Error::InvalidArgument("funcopt_adamw_f32: inconsistent operand counts");
  }
  auto work = std::make_shared<Work>();
  const float* k = coefficients.typed_data();
  work->c = {k[0], k[1], k[2], k[3], k[4], k[5]};
  work->fp_control = FUNCOPT_GET_FP_CONTROL();
  work->leaves.reserve(n_leaves);
  for (size_t i = 0; i < n_leaves; ++i) {
    float* in[4];
    int64_t n = -1;
    for (size_t j = 0; j < 4; ++j) {
      auto buffer = args.get<ffi::Buffer<ffi::F32>>(4 * i + j);
      if (!buffer.has_value()) {
        return ffi::Error::InvalidArgument("funcopt_adamw_f32: every operand must be float32");
      }
      if (n >= 0 && static_cast<int64_t>(buffer->element_count()) != n) {
        return ffi::Error::InvalidArgument("funcopt_adamw_f32: leaf sizes differ");
      }
      n = buffer->element_count();
      in[j] = buffer->typed_data();
    }
    // Results (p' if param_results, m', v') must be the operands' own buffers.
    for (size_t j = 0; j < per_leaf; ++j) {
      auto buffer = rets.get<ffi::Buffer<ffi::F32>>(per_leaf * i + j);
      float* operand = in[param_results ? (j == 0 ? 0 : j + 1) : j + 2];
      if (!buffer.has_value() || (*buffer)->typed_data() != operand) {
        return ffi::Error::InvalidArgument("funcopt_adamw_f32: results must alias operands");
      }
    }
    if (!param_results) {
      const uint32_t* a = addresses.typed_data() + 2 * i;
      if (reinterpret_cast<uint64_t>(in[0]) != (uint64_t{a[1]} << 32 | uint64_t{a[0]})) {
        return ffi::Error::Internal(
            "funcopt_adamw_f32: XLA passed a copy of an external parameter; not updated");
      }
    }
    work->leaves.push_back({in[1], in[2], in[3], in[0], step_sizes.typed_data()[i],
                            decays[i] != 0});
    for (int64_t b = 0; b < n; b += kBlock) {
      work->units.push_back({static_cast<int32_t>(i), b, std::min(n, b + kBlock)});
    }
  }
  const size_t n_units = work->units.size();
#ifdef FUNCOPT_SINGLE_THREADED
  const size_t helpers = 0;
#else
  const size_t helpers = std::min(n_units > 0 ? n_units - 1 : 0,
                                  static_cast<size_t>(std::max<int64_t>(0, pool.num_threads())));
#endif
  for (size_t i = 0; i < helpers; ++i) pool.Schedule([work] { work->Run(); });
  work->Run();
  while (work->done.load(std::memory_order_acquire) < n_units) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FuncoptAdamWF32, AdamWImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // coefficients
                                  .Arg<ffi::Buffer<ffi::F32>>()  // step_sizes
                                  .Arg<ffi::Buffer<ffi::U32>>()  // addresses
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<ffi::Span<const int64_t>>("decays")
                                  .Attr<bool>("param_results"));
