// schedulefree's AdamWScheduleFree / SGDScheduleFree / RAdamScheduleFree step
// (`funcopt.schedule_free_adamw` / `_sgd` / `_radam`) as one pass per parameter, in place
// (funcopt.torch's path on torch tensors; `funcopt.fused_schedule_free_adamw` under XLA):
// reads y (the parameter), g, z (and exp_avg_sq v), writes y, z (and v): 5 (SGD) or 7 memory
// accesses per parameter.
//
// The rules' float32 arithmetic (funcopt/_schedule_free_rule.py), operation for operation,
// with std::fma exactly where XLA contracts (bitwise equal to the jitted XLA path +
// apply_updates, which `funcopt._schedule_free_kernel` and `funcopt._fused_schedule_free`
// check before first use):
//   v' = fma((1 - b2) * g, g, v * b2)                                  (adaptive: AdamW, RAdam)
//   d  = g / (sqrt(v' / bc2) + eps) where the step normalizes (AdamW; RAdam once rho_t > 4),
//        else g;  d = fma(y, wd, d) where the leaf decays
//   l  = fma(ckp1, z - y, y) when |ckp1| < 0.5, else fma(ckp1 - 1, z - y, z)   (torch's lerp)
//   z' = fma(-d, lr, z);  y* = fma(d, alpha, l);  y' = y + (y* - y)
// (`y + (y* - y)` is what `optax.apply_updates` makes of the `y* - y` the rule hands back.)
// The group-level scalars (lr, ckp1, alpha, bc2: the reference's Python floats rounded once
// to float32) come from the rule's own `group_step`, computed in JAX.
//
// Two entry points, the same numbers:
// * FFI handler FuncoptScheduleFreeF32 (`funcopt.fused_schedule_free_adamw` under jit):
//   argument `coefficients` f32[9] (below), then per leaf (y, g, z, v), or (y, g, z) for a
//   leaf without the adaptive flag; results (y', z', v') or (y', z') per leaf, aliasing
//   (y, z, v) (the call fails otherwise). Attribute `flags`: s64[L], the bits below.
// * C function funcopt_schedule_free_f32 (parallel.h's direct signature, funcopt.torch):
//   pointers (y, g, z, v or null) per leaf; coefficients f32[9] = (lr, ckp1, alpha, bc2, b2,
//   1 - b2, eps, wd, normalize: 1 or 0); flags per leaf: the bits below; no leaf scalars.
//   Returns 1 (nothing done) if an adaptive leaf has no v.

#include <cmath>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel.h"

namespace ffi = xla::ffi;

namespace {

enum Flag : uint8_t { kDecays = 1, kAdaptive = 2 };

struct Coefficients {
  float lr, ckp1, alpha, bc2, b2, one_minus_b2, eps, wd;
  bool normalize;
};

struct Leaf {
  float* y;
  const float* g;
  float* z;
  float* v;
  uint8_t flags;
};

template <bool kDecay, bool kAdapt, bool kNormalize, bool kSmall>
void Range(const Coefficients& c, const Leaf& l, int64_t begin, int64_t end) {
  float* __restrict yp = l.y;
  const float* __restrict gp = l.g;
  float* __restrict zp = l.z;
  float* __restrict vp = l.v;
  const float w = kSmall ? c.ckp1 : c.ckp1 - 1.0f;
  for (int64_t i = begin; i < end; ++i) {
    const float g = gp[i], y = yp[i], z = zp[i];
    float d = g;
    if constexpr (kAdapt) {
      const float v = std::fma(c.one_minus_b2 * g, g, vp[i] * c.b2);
      vp[i] = v;
      if constexpr (kNormalize) d = g / (std::sqrt(v / c.bc2) + c.eps);
    }
    if constexpr (kDecay) d = std::fma(y, c.wd, d);
    const float lerp = std::fma(w, z - y, kSmall ? y : z);
    zp[i] = std::fma(-d, c.lr, z);
    const float new_y = std::fma(d, c.alpha, lerp);
    yp[i] = y + (new_y - y);
  }
}

using RangeFn = void (*)(const Coefficients&, const Leaf&, int64_t, int64_t);

template <bool kDecay, bool kSmall>
RangeFn PickAdaptive(const Coefficients& c, uint8_t flags) {
  if (!(flags & kAdaptive)) return Range<kDecay, false, false, kSmall>;
  return c.normalize ? Range<kDecay, true, true, kSmall> : Range<kDecay, true, false, kSmall>;
}

RangeFn Pick(const Coefficients& c, uint8_t flags) {
  const bool small = std::fabs(c.ckp1) < 0.5f;
  if (flags & kDecays) {
    return small ? PickAdaptive<true, true>(c, flags) : PickAdaptive<true, false>(c, flags);
  }
  return small ? PickAdaptive<false, true>(c, flags) : PickAdaptive<false, false>(c, flags);
}

Coefficients CoefficientsOf(const float* k) {
  return {k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8] != 0};
}

// Every leaf's Range function, run on the units of one step.
struct Step {
  Coefficients c;
  std::vector<Leaf> leaves;
  std::vector<RangeFn> ranges;

  void operator()(const funcopt::Unit& u) const {
    ranges[u.leaf](c, leaves[u.leaf], u.begin, u.end);
  }
};

ffi::Error ScheduleFreeImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> coefficients,
                            ffi::RemainingArgs args, ffi::RemainingRets rets,
                            ffi::Span<const int64_t> flags) {
  if (coefficients.element_count() != 9) {
    return ffi::Error::InvalidArgument("funcopt_schedule_free_f32: coefficients are f32[9]");
  }
  Step step{CoefficientsOf(coefficients.typed_data()), {}, {}};
  std::vector<int64_t> sizes;
  size_t arg = 0, ret = 0;
  for (const int64_t flag : flags) {
    const uint8_t f = static_cast<uint8_t>(flag);
    const size_t width = (f & kAdaptive) ? 4 : 3;  // (y, g, z[, v])
    if (arg + width > args.size() || ret + width - 1 > rets.size()) {
      return ffi::Error::InvalidArgument("funcopt_schedule_free_f32: too few operands");
    }
    float* in[4] = {nullptr, nullptr, nullptr, nullptr};
    int64_t n = -1;
    for (size_t j = 0; j < width; ++j) {
      auto buffer = args.get<ffi::Buffer<ffi::F32>>(arg + j);
      if (!buffer.has_value()) {
        return ffi::Error::InvalidArgument(
            "funcopt_schedule_free_f32: every operand must be float32");
      }
      if (n >= 0 && static_cast<int64_t>(buffer->element_count()) != n) {
        return ffi::Error::InvalidArgument("funcopt_schedule_free_f32: leaf sizes differ");
      }
      n = buffer->element_count();
      in[j] = buffer->typed_data();
    }
    // Results (y', z'[, v']) must be the operands' own buffers (y, z[, v]).
    for (size_t j = 0; j + 1 < width; ++j) {
      auto buffer = rets.get<ffi::Buffer<ffi::F32>>(ret + j);
      if (!buffer.has_value() || (*buffer)->typed_data() != in[j == 0 ? 0 : j + 1]) {
        return ffi::Error::InvalidArgument(
            "funcopt_schedule_free_f32: results must alias operands");
      }
    }
    step.leaves.push_back({in[0], in[1], in[2], in[3], f});
    step.ranges.push_back(Pick(step.c, f));
    sizes.push_back(n);
    arg += width;
    ret += width - 1;
  }
  if (arg != args.size() || ret != rets.size()) {
    return ffi::Error::InvalidArgument("funcopt_schedule_free_f32: inconsistent operand counts");
  }
  funcopt::RunLeavesOnPool(pool, std::move(step), sizes.data(), sizes.size());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FuncoptScheduleFreeF32, ScheduleFreeImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // coefficients
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<ffi::Span<const int64_t>>("flags"));

FUNCOPT_DEFINE_COMMON_ENTRY_POINTS()

extern "C" int funcopt_schedule_free_f32(int64_t n_leaves, float* const* pointers,
                                         const int64_t* sizes, const float* coefficients,
                                         const float* leaf_scalars, const uint8_t* flags,
                                         uint64_t fp_control, int64_t threads) {
  (void)leaf_scalars;
  const Coefficients c = CoefficientsOf(coefficients);
  std::vector<Leaf> leaves;
  std::vector<RangeFn> ranges;
  for (int64_t i = 0; i < n_leaves; ++i) {
    float* const* q = pointers + 4 * i;
    if ((flags[i] & kAdaptive) && q[3] == nullptr) return 1;
    leaves.push_back({q[0], q[1], q[2], q[3], flags[i]});
    ranges.push_back(Pick(c, flags[i]));
  }
  funcopt::RunLeavesDirect(
      static_cast<FpControl>(fp_control),
      [&](const funcopt::Unit& u) { ranges[u.leaf](c, leaves[u.leaf], u.begin, u.end); }, sizes,
      n_leaves, threads);
  return 0;
}
