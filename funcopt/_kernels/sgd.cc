// torch.optim.SGD's step (`funcopt.sgd`) as one pass per parameter on raw memory, for
// funcopt.torch's in-place path: reads p, g (and the momentum buffer b), writes p (and b).
//
// `funcopt.sgd`'s float32 arithmetic, operation for operation (bitwise equal to its jitted
// XLA path + apply_updates, which `funcopt._sgd_kernel` checks before first use):
//   g  = -g with maximize;  g = fma(wd, p, g) where the leaf decays
//   b' = g at the first step, else fma(1 - dampening, g, b * momentum)      (with momentum)
//   d  = fma(momentum, b', g) with nesterov, else b' (with momentum), else g
//   p' = fma(-lr, d, p)
//
// C function funcopt_sgd_f32 (parallel.h's direct signature): pointers (p, g, b or null) per
// leaf; coefficients f32[5] = (-lr, wd, momentum, 1 - dampening, 1 at the first step else 0);
// flags per leaf: the bits below; no leaf scalars.

#include <cmath>
#include <cstdint>

#include "xla/ffi/api/ffi.h"
#include "parallel.h"

namespace {

enum Flag : uint8_t { kDecays = 1, kMaximize = 2, kMomentum = 4, kNesterov = 8 };

struct Leaf {
  float* p;
  const float* g;
  float* b;
  uint8_t flags;
};

template <bool kDecay, bool kHasMomentum, bool kNest>
void Range(const float* c, const Leaf& l, int64_t begin, int64_t end) {
  float* __restrict pp = l.p;
  const float* __restrict gp = l.g;
  float* __restrict bp = l.b;
  const float sign = (l.flags & kMaximize) ? -1.0f : 1.0f;  // exact: g * -1 is -g
  const float neg_lr = c[0], wd = c[1], mu = c[2], keep = c[3];
  const bool first = c[4] != 0;
  for (int64_t i = begin; i < end; ++i) {
    float g = gp[i] * sign;
    const float p = pp[i];
    if constexpr (kDecay) g = std::fma(wd, p, g);
    float d = g;
    if constexpr (kHasMomentum) {
      const float b = first ? g : std::fma(keep, g, bp[i] * mu);
      bp[i] = b;
      d = kNest ? std::fma(mu, b, g) : b;
    }
    pp[i] = std::fma(neg_lr, d, p);
  }
}

using RangeFn = void (*)(const float*, const Leaf&, int64_t, int64_t);

template <bool kDecay>
RangeFn Pick(uint8_t flags) {
  if (!(flags & kMomentum)) return Range<kDecay, false, false>;
  return (flags & kNesterov) ? Range<kDecay, true, true> : Range<kDecay, true, false>;
}

}  // namespace

FUNCOPT_DEFINE_COMMON_ENTRY_POINTS()

extern "C" int funcopt_sgd_f32(int64_t n_leaves, float* const* pointers, const int64_t* sizes,
                               const float* coefficients, const float* leaf_scalars,
                               const uint8_t* flags, uint64_t fp_control, int64_t threads) {
  (void)leaf_scalars;
  std::vector<Leaf> leaves;
  for (int64_t i = 0; i < n_leaves; ++i) {
    float* const* q = pointers + 3 * i;
    if ((flags[i] & kMomentum) && q[2] == nullptr) return 1;
    leaves.push_back({q[0], q[1], q[2], flags[i]});
  }
  funcopt::RunLeavesDirect(
      static_cast<FpControl>(fp_control),
      [&](const funcopt::Unit& u) {
        const Leaf& l = leaves[u.leaf];
        ((l.flags & kDecays) ? Pick<true>(l.flags) : Pick<false>(l.flags))(
            coefficients, l, u.begin, u.end);
      },
      sizes, n_leaves, threads);
  return 0;
}
