// bitsandbytes' 32-bit AdEMAMix step (`funcopt.ademamix`) + `optax.apply_updates` as one
// pass per parameter, in place (`funcopt.fused_ademamix` under jit; funcopt.torch's AdEMAMix).
//
// XLA:CPU writes each output of an elementwise computation in its own loop, so the XLA path
// writes the new moments in two loops and reads them back for p's: 52 bytes per float32
// parameter by XLA's cost analysis of the donated step, where 36 are compulsory (read p, g,
// m1, m2, nu; write p, m1, m2, nu). This kernel makes the 36, over all float32 leaves in one
// call, in blocks over several threads (parallel.h).
//
// The arithmetic is `AdEMAMix.float32_update` (funcopt/_ademamix.py) operation for operation,
// with std::fma exactly where XLA contracts a product into the sum (its `unfused` products are
// rounded on their own, its `divide`s are true divisions), so the results are bitwise equal
// to the jitted XLA path, which `funcopt._fused_ademamix` checks for both entry points
// before first use:
//   m1' = fma(1 - b1, g, m1 * b1);   m2' = fma(1 - b3(t), g, m2 * b3(t))
//   nu' = fma((1 - b2) * g, g, nu * b2)
//   q   = (m1' / c1 + alpha(t) * m2') / (sqrt(nu') / c2 + eps)
//   n   = fma(-lr, q, decays ? p * keep : p);    p' = p + (n - p)
// (`p + (n - p)` is what `optax.apply_updates` makes of the `n - p` the rule hands back.) It is
// compiled with -ffp-contract=off, so the only fused multiply-adds are the explicit ones, and
// every block runs with XLA's floating-point control word (subnormals flushed).
//
// Two entry points, the same numbers:
// * FFI handler FuncoptAdEMAMixF32 (`funcopt.fused_ademamix` under jit): argument
//   `coefficients` f32[7] = (-lr, keep = 1 - lr * wd, b1, 1 - b1, b2, 1 - b2, eps);
//   `leaf_scalars` f32[L, 5] = (c1, c2, alpha(t), b3(t), 1 - b3(t)) at each leaf's own step
//   t; then (p, g, state1, state2) per leaf, state1 being (m1, m2) stacked (2n floats);
//   results (p', state1', state2') per leaf, aliasing (p, state1, state2) (the call fails
//   otherwise). Attribute `decays`: s64[L], 1 where a leaf decays.
// * C function funcopt_ademamix_f32 (parallel.h's direct signature; funcopt.torch's AdEMAMix
//   through funcopt/torch/_direct.py): pointers (p, g, state1, state2) per leaf, the same
//   coefficients and leaf scalars, flags: 1 where a leaf decays.

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel.h"

namespace ffi = xla::ffi;

namespace {

constexpr size_t kCoefficients = 7, kLeafScalars = 5;

struct Coefficients {
  float neg_lr, keep, b1, one_minus_b1, b2, one_minus_b2, eps;
};

struct Leaf {
  float* p;
  const float* g;
  float* m1;  // state1[0]; state1[1] (m2) follows it
  float* nu;
  int64_t n;
  float c1, c2, alpha, b3, one_minus_b3;
  bool decay;
};

template <bool kDecay>
void Range(const Coefficients& c, const Leaf& l, int64_t begin, int64_t end) {
  // The scalars in locals: read through `c` and `l` inside the loop, GCC keeps reloading
  // them (they might alias the stores) and does not vectorize it.
  const float b1 = c.b1, one_minus_b1 = c.one_minus_b1, b2 = c.b2,
              one_minus_b2 = c.one_minus_b2, eps = c.eps, keep = c.keep, neg_lr = c.neg_lr;
  const float b3 = l.b3, one_minus_b3 = l.one_minus_b3, c1 = l.c1, c2 = l.c2,
              alpha = l.alpha;
  float* __restrict pp = l.p;
  const float* __restrict gp = l.g;
  float* __restrict m1p = l.m1;
  float* __restrict m2p = l.m1 + l.n;
  float* __restrict nup = l.nu;
  for (int64_t i = begin; i < end; ++i) {
    const float g = gp[i], p = pp[i];
    const float m1 = std::fma(one_minus_b1, g, m1p[i] * b1);
    const float m2 = std::fma(one_minus_b3, g, m2p[i] * b3);
    const float nu = std::fma(one_minus_b2 * g, g, nup[i] * b2);
    const float mixed = m1 / c1 + alpha * m2;
    const float adaptive = std::sqrt(nu) / c2 + eps;
    const float kept = kDecay ? p * keep : p;
    const float n = std::fma(neg_lr, mixed / adaptive, kept);
    m1p[i] = m1;
    m2p[i] = m2;
    nup[i] = nu;
    pp[i] = p + (n - p);
  }
}

struct Step {
  Coefficients c;
  std::vector<Leaf> leaves;

  void operator()(const funcopt::Unit& u) const {
    const Leaf& l = leaves[u.leaf];
    if (l.decay) {
      Range<true>(c, l, u.begin, u.end);
    } else {
      Range<false>(c, l, u.begin, u.end);
    }
  }
};

// Leaf `q` = (p, g, state1, state2) of n elements, its scalars `s` (c1, c2, alpha, b3, 1 - b3).
Leaf LeafOf(float* const* q, int64_t n, const float* s, bool decay) {
  return {q[0], q[1], q[2], q[3], n, s[0], s[1], s[2], s[3], s[4], decay};
}

Coefficients CoefficientsOf(const float* k) {
  return {k[0], k[1], k[2], k[3], k[4], k[5], k[6]};
}

ffi::Error Invalid(const char* why) {
  return ffi::Error::InvalidArgument(std::string("funcopt_ademamix_f32: ") + why);
}

ffi::Error AdEMAMixImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> coefficients,
                        ffi::Buffer<ffi::F32> leaf_scalars, ffi::RemainingArgs args,
                        ffi::RemainingRets rets, ffi::Span<const int64_t> decays) {
  const size_t n_leaves = decays.size();
  if (coefficients.element_count() != kCoefficients ||
      leaf_scalars.element_count() != kLeafScalars * n_leaves ||
      args.size() != 4 * n_leaves || rets.size() != 3 * n_leaves) {
    return Invalid("inconsistent operand counts");
  }
  Step step{CoefficientsOf(coefficients.typed_data()), {}};
  std::vector<int64_t> sizes;
  for (size_t i = 0; i < n_leaves; ++i) {
    float* in[4];
    int64_t size[4];
    for (size_t j = 0; j < 4; ++j) {
      auto buffer = args.get<ffi::Buffer<ffi::F32>>(4 * i + j);
      if (!buffer.has_value()) return Invalid("every operand must be float32");
      in[j] = buffer->typed_data();
      size[j] = static_cast<int64_t>(buffer->element_count());
    }
    const int64_t n = size[0];
    if (size[1] != n || size[2] != 2 * n || size[3] != n) return Invalid("leaf sizes differ");
    // Results (p', state1', state2') must be the operands' own buffers (p, state1, state2).
    for (size_t j = 0; j < 3; ++j) {
      auto buffer = rets.get<ffi::Buffer<ffi::F32>>(3 * i + j);
      if (!buffer.has_value() || (*buffer)->typed_data() != in[j == 0 ? 0 : j + 1]) {
        return Invalid("results must alias operands");
      }
    }
    step.leaves.push_back(LeafOf(in, n, leaf_scalars.typed_data() + kLeafScalars * i,
                                 decays[i] != 0));
    sizes.push_back(n);
  }
  funcopt::RunLeavesOnPool(pool, std::move(step), sizes.data(), sizes.size());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FuncoptAdEMAMixF32, AdEMAMixImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // coefficients
                                  .Arg<ffi::Buffer<ffi::F32>>()  // leaf_scalars
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<ffi::Span<const int64_t>>("decays"));

FUNCOPT_DEFINE_COMMON_ENTRY_POINTS()

// The step on L leaves of raw memory (funcopt.torch: torch tensors updated in place, as
// bitsandbytes does): `pointers` holds (p, g, state1, state2) per leaf, `sizes` their
// parameters' element counts, `coefficients` and `leaf_scalars` as the FFI handler's,
// `decays` 1 where a leaf decays; `fp_control` is the control word to run with (XLA's, from
// FuncoptFpControl), `threads` the most threads to use. Returns 0.
extern "C" int funcopt_ademamix_f32(int64_t n_leaves, float* const* pointers,
                                    const int64_t* sizes, const float* coefficients,
                                    const float* leaf_scalars, const uint8_t* decays,
                                    uint64_t fp_control, int64_t threads) {
  Step step{CoefficientsOf(coefficients), {}};
  for (int64_t i = 0; i < n_leaves; ++i) {
    step.leaves.push_back(
        LeafOf(pointers + 4 * i, sizes[i], leaf_scalars + kLeafScalars * i, decays[i] != 0));
  }
  funcopt::RunLeavesDirect(static_cast<FpControl>(fp_control), std::move(step), sizes, n_leaves,
                           threads);
  return 0;
}
