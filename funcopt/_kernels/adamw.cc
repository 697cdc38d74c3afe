// funcopt's fused AdamW step for XLA:CPU: one pass per parameter, the update applied in place.
//
// XLA:CPU has no multi-output loop fusion, so `funcopt.adamw` + `optax.apply_updates` runs
// three loops per leaf (new m, new v, new p reading both back): 10 memory accesses per
// parameter where 7 are compulsory (read p, g, m, v; write p, m, v). This kernel makes the 7,
// over all float32 leaves in one call, split into blocks over several threads (parallel.h).
//
// The arithmetic is `funcopt.adamw`'s, operation for operation, so the results are bitwise
// equal to the jitted XLA path (which is what `tests/test_fused_adamw.py` checks):
//   m' = fma(1 - b1, g, m * b1)                       torch: exp_avg.mul_(b1).add_(g, alpha=1-b1)
//   v' = fma((1 - b2) * g, g, v * b2)                 torch: exp_avg_sq.mul_(b2).addcmul_(g, g, ...)
//   u  = (-step_size * m') / (sqrt(v') + eps)         torch: p.addcdiv_(m', denom, value=-step_size)
//   p' = p + u, then with decay  n = fma(decay, p', p'),  p' = p + (n - p)
// (`p + (n - p)` is what `optax.apply_updates` makes of the `n - p` that adamw hands back.)
// It is compiled with -ffp-contract=off, so the only fused multiply-adds are the explicit ones,
// and every block runs with XLA's floating-point control word (subnormals flushed).
//
// Two entry points:
// * FFI handler FuncoptAdamWF32 (`funcopt.fused_adamw` under jit). Arguments `coefficients`
//   f32[6] = (b1, 1 - b1, b2, 1 - b2, eps, decay), `step_sizes` f32[L], then (p, g, m, v) for
//   each of the L leaves; results (p', m', v') per leaf, aliasing (p, m, v) (the call fails
//   otherwise). Attribute `decays`: s64[L], 1 where a leaf decays.
// * C function funcopt_adamw_f32 (`funcopt.torch`: torch tensors' memory, updated in place as
//   torch's own optimizers do): the same numbers from raw pointers.

#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel.h"

namespace ffi = xla::ffi;

namespace {

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
  float* p;
  const float* g;
  float* m;
  float* v;
  float step_size;
  bool decay;
};

struct Step {
  Coefficients c;
  std::vector<Leaf> leaves;

  void operator()(const funcopt::Unit& w) const {
    const Leaf& l = leaves[w.leaf];
    const int64_t o = w.begin, n = w.end - w.begin;
    if (l.decay) {
      Block<true>(c, l.step_size, l.g + o, l.m + o, l.v + o, l.p + o, n);
    } else {
      Block<false>(c, l.step_size, l.g + o, l.m + o, l.v + o, l.p + o, n);
    }
  }
};

Coefficients CoefficientsOf(const float* k) { return {k[0], k[1], k[2], k[3], k[4], k[5]}; }

ffi::Error AdamWImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> coefficients,
                     ffi::Buffer<ffi::F32> step_sizes, ffi::RemainingArgs args,
                     ffi::RemainingRets rets, ffi::Span<const int64_t> decays) {
  const size_t n_leaves = step_sizes.element_count();
  if (coefficients.element_count() != 6 || args.size() != 4 * n_leaves ||
      rets.size() != 3 * n_leaves || decays.size() != n_leaves) {
    return ffi::Error::InvalidArgument("funcopt_adamw_f32: inconsistent operand counts");
  }
  Step step{CoefficientsOf(coefficients.typed_data()), {}};
  std::vector<int64_t> sizes;
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
    // Results (p', m', v') must be the operands' own buffers (p, m, v).
    for (size_t j = 0; j < 3; ++j) {
      auto buffer = rets.get<ffi::Buffer<ffi::F32>>(3 * i + j);
      if (!buffer.has_value() || (*buffer)->typed_data() != in[j == 0 ? 0 : j + 1]) {
        return ffi::Error::InvalidArgument("funcopt_adamw_f32: results must alias operands");
      }
    }
    step.leaves.push_back({in[0], in[1], in[2], in[3], step_sizes.typed_data()[i],
                           decays[i] != 0});
    sizes.push_back(n);
  }
  funcopt::RunLeavesOnPool(pool, std::move(step), sizes.data(), sizes.size());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FuncoptAdamWF32, AdamWImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // coefficients
                                  .Arg<ffi::Buffer<ffi::F32>>()  // step_sizes
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<ffi::Span<const int64_t>>("decays"));

FUNCOPT_DEFINE_COMMON_ENTRY_POINTS()

// The step on L leaves of raw memory: `pointers` holds (p, g, m, v) per leaf, `sizes` their
// element counts, `decays` 1 where a leaf decays; `fp_control` is the control word to run
// with (XLA's, from FuncoptFpControl), `threads` the most threads to use. Returns 0.
extern "C" int funcopt_adamw_f32(int64_t n_leaves, float* const* pointers,
                                 const int64_t* sizes, const float* coefficients,
                                 const float* step_sizes, const uint8_t* decays,
                                 uint64_t fp_control, int64_t threads) {
  Step step{CoefficientsOf(coefficients), {}};
  for (int64_t i = 0; i < n_leaves; ++i) {
    float* const* q = pointers + 4 * i;
    step.leaves.push_back({q[0], q[1], q[2], q[3], step_sizes[i], decays[i] != 0});
  }
  funcopt::RunLeavesDirect(static_cast<FpControl>(fp_control), std::move(step), sizes, n_leaves,
                           threads);
  return 0;
}
