// optimi.StableAdamW's step (`funcopt.stable_adamw`, float32 parameters) as one pass per
// parameter on raw memory, for funcopt.torch's in-place path: reads p, g, m, v; writes p, m, v.
//
// The per-tensor RMS that clips the learning rate is a reduction; its summation order is XLA's,
// so it is not formed here: `funcopt._stable_adamw_kernel` computes each leaf's clipped
// learning rate and decay factor with the rule's own JAX code (a read-only XLA pass) and
// hands them in as leaf scalars. The elementwise rest is `funcopt.stable_adamw`'s float32
// arithmetic, operation for operation (bitwise equal to its jitted XLA path + apply_updates,
// which the module checks before first use):
//   m' = fma(w, g - m, m) if |b1_comp| < 0.5, else fma(b1_comp - 1, g - m, g)  (torch.lerp)
//   v' = fma(b2_comp * g, g, v * b2_hat)
//   u  = (-lr * m') / (sqrt(v') + eps)
//   p' = p + u without decay; with decay  n = p * keep + u,  p' = p + (n - p)
// (`p + (n - p)` is what `optax.apply_updates` makes of the `n - p` the rule hands back.)
//
// C function funcopt_stable_adamw_f32 (parallel.h's direct signature): pointers (p, g, m, v)
// per leaf; coefficients f32[4] = (b1_comp, b2_hat, b2_comp, eps); leaf scalars f32[2] per
// leaf = (lr, keep): the leaf's clipped learning rate and decay factor; flags: 1 where a
// leaf decays.

#include <cmath>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel.h"

namespace {

struct Leaf {
  float* p;
  const float* g;
  float* m;
  float* v;
  float lr, keep;
  bool decay;
};

template <bool kDecay, bool kSmall>
void Range(const float* c, const Leaf& l, int64_t begin, int64_t end) {
  float* __restrict pp = l.p;
  const float* __restrict gp = l.g;
  float* __restrict mp = l.m;
  float* __restrict vp = l.v;
  const float b1_comp = c[0], b2_hat = c[1], b2_comp = c[2], eps = c[3];
  const float weight = kSmall ? b1_comp : b1_comp - 1.0f;
  const float minus_lr = -l.lr, keep = l.keep;
  for (int64_t i = begin; i < end; ++i) {
    const float g = gp[i], m = mp[i], p = pp[i];
    const float new_m = std::fma(weight, g - m, kSmall ? m : g);
    const float new_v = std::fma(b2_comp * g, g, vp[i] * b2_hat);
    const float u = (minus_lr * new_m) / (std::sqrt(new_v) + eps);
    float new_p;
    if constexpr (kDecay) {
      new_p = p + ((p * keep + u) - p);
    } else {
      new_p = p + u;
    }
    mp[i] = new_m;
    vp[i] = new_v;
    pp[i] = new_p;
  }
}

using RangeFn = void (*)(const float*, const Leaf&, int64_t, int64_t);

RangeFn Pick(bool decay, bool small) {
  if (decay) return small ? Range<true, true> : Range<true, false>;
  return small ? Range<false, true> : Range<false, false>;
}

}  // namespace

FUNCOPT_DEFINE_COMMON_ENTRY_POINTS()

extern "C" int funcopt_stable_adamw_f32(int64_t n_leaves, float* const* pointers,
                                        const int64_t* sizes, const float* coefficients,
                                        const float* leaf_scalars, const uint8_t* flags,
                                        uint64_t fp_control, int64_t threads) {
  std::vector<Leaf> leaves;
  for (int64_t i = 0; i < n_leaves; ++i) {
    float* const* q = pointers + 4 * i;
    leaves.push_back({q[0], q[1], q[2], q[3], leaf_scalars[2 * i], leaf_scalars[2 * i + 1],
                      flags[i] != 0});
  }
  const bool small = std::fabs(coefficients[0]) < 0.5f;
  funcopt::RunLeavesDirect(
      static_cast<FpControl>(fp_control),
      [&](const funcopt::Unit& u) {
        const Leaf& l = leaves[u.leaf];
        Pick(l.decay, small)(coefficients, l, u.begin, u.end);
      },
      sizes, n_leaves, threads);
  return 0;
}
