// schedulefree's AdamWScheduleFree / SGDScheduleFree / RAdamScheduleFree step
// (`funcopt.schedule_free_adamw` / `_sgd` / `_radam`) as one pass per parameter on raw memory,
// for funcopt.torch's in-place path: reads y (the parameter), g, z (and exp_avg_sq v), writes
// y, z (and v): 5 (SGD) or 7 memory accesses per parameter.
//
// The rules' float32 arithmetic (funcopt/_schedule_free_rule.py), operation for operation,
// with std::fma exactly where XLA contracts (bitwise equal to the jitted XLA path +
// apply_updates, which `funcopt._schedule_free_kernel` checks before first use):
//   v' = fma((1 - b2) * g, g, v * b2)                                  (adaptive: AdamW, RAdam)
//   d  = g / (sqrt(v' / bc2) + eps) where the step normalizes (AdamW; RAdam once rho_t > 4),
//        else g;  d = fma(y, wd, d) where the leaf decays
//   l  = fma(ckp1, z - y, y) when |ckp1| < 0.5, else fma(ckp1 - 1, z - y, z)   (torch's lerp)
//   z' = fma(-d, lr, z);  y* = fma(d, alpha, l);  y' = y + (y* - y)
// (`y + (y* - y)` is what `optax.apply_updates` makes of the `y* - y` the rule hands back.)
// The group-level scalars (lr, ckp1, alpha, bc2: the reference's Python floats rounded once
// to float32) come from the rule's own `group_step`, computed in JAX.
//
// C function funcopt_schedule_free_f32 (parallel.h's direct signature): pointers (y, g, z,
// v or null) per leaf; coefficients f32[9] = (lr, ckp1, alpha, bc2, b2, 1 - b2, eps, wd,
// normalize: 1 or 0); flags per leaf: the bits below; no leaf scalars. Returns 1 (nothing
// done) if an adaptive leaf has no v.

#include <cmath>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel.h"

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

}  // namespace

FUNCOPT_DEFINE_COMMON_ENTRY_POINTS()

extern "C" int funcopt_schedule_free_f32(int64_t n_leaves, float* const* pointers,
                                         const int64_t* sizes, const float* coefficients,
                                         const float* leaf_scalars, const uint8_t* flags,
                                         uint64_t fp_control, int64_t threads) {
  (void)leaf_scalars;
  const float* k = coefficients;
  const Coefficients c{k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8] != 0};
  std::vector<Leaf> leaves;
  std::vector<RangeFn> ranges;
  for (int64_t i = 0; i < n_leaves; ++i) {
    float* const* q = pointers + 4 * i;
    if ((flags[i] & kAdaptive) && q[3] == nullptr) return 1;
    leaves.push_back({q[0], q[1], q[2], q[3], flags[i]});
    ranges.push_back(Pick(c, flags[i]));
  }
  funcopt::Work work(static_cast<FpControl>(fp_control), [&](const funcopt::Unit& u) {
    ranges[u.leaf](c, leaves[u.leaf], u.begin, u.end);
  });
  for (int64_t i = 0; i < n_leaves; ++i) work.Add(static_cast<int32_t>(i), sizes[i]);
  funcopt::RunDirect(work, threads);
  return 0;
}
