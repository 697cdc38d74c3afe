// torch's Adam/AdamW arithmetic (`funcopt.adamw_torch_fused`, `adamw_torch`, `adam_torch`) as
// one pass per parameter for XLA:CPU, the update applied in place.
//
// The same one-pass structure as adamw.cc (7 memory accesses per parameter, 9 with amsgrad,
// where the optax interface makes 10-13), with `funcopt._adam_torch.AdamTorch`'s float32
// arithmetic, operation for operation (bitwise equal to its jitted XLA path + apply_updates;
// `tests/test_fused_adamw_torch.py` checks it):
//   g  = -g with maximize;  g = fma(wd, p, g) with L2 decay (Adam), p_d = p * decay with
//        decoupled decay (AdamW), else p_d = p
//   m' = lerp(m, g, w): fma(w, g - m, m) when |w| < 0.5, else fma(w - 1, g - m, g)
//   v' = fma((1 - b2) * g, g, v * b2); in the fused kernel's scalar tail (the last
//        numel % 8 elements) fma(v, b2, ((1 - b2) * g) * g)
//   s  = max(v_max, v') with amsgrad (v_max' = s), else v'
//   d  = sqrt(s) / bias_correction2_sqrt + eps
//   decoupled decay:  n = p_d + (-step_size * m') / d,  p' = p + (n - p)
//   otherwise:        p' = p + (-step_size * m') / d
// (`p + (n - p)` is what `optax.apply_updates` makes of the update `n - p`.)
//
// Entry points (see adamw.cc and parallel.h for the conventions):
// * FFI handler FuncoptAdamTorchF32: `coefficients` f32[8] = (w, w - 1, b2, 1 - b2, eps,
//   decay, wd, 1 if |w| < 0.5 else 0), `leaf_scalars` f32[L, 2] = (-step_size, bias_correction2_sqrt) per leaf,
//   then (p, g, m, v) or (p, g, m, v, v_max) per leaf; results (p', m', v'[, v_max'])
//   aliasing them. Attribute `flags` s64[L]: the bits below.
// * C function funcopt_adam_torch_f32: the same from raw pointers, five per leaf (v_max null
//   without amsgrad).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel.h"

namespace ffi = xla::ffi;

namespace {

enum Flag : int64_t {
  kDecays = 1,      // this leaf decays
  kDecoupled = 2,   // AdamW's decay (else Adam's L2)
  kMaximize = 4,
  kAmsgrad = 8,
  kFusedTail = 32,  // the fused kernel's scalar tail
};

struct Coefficients {
  float w, w_minus_1, b2, one_minus_b2, eps, decay, wd, small;
};

struct Leaf {
  float* p;
  const float* g;
  float* m;
  float* v;
  float* v_max;
  int64_t n;
  float neg_step_size, bc2_sqrt;
  int64_t flags;
};

inline float MaxNan(float a, float b) { return (std::isnan(a) || a >= b) ? a : b; }

template <bool kDecays, bool kDecoupled, bool kAmsgrad, bool kTail>
void Range(const Coefficients& c, const Leaf& l, int64_t begin, int64_t end) {
  float* __restrict pp = l.p;
  const float* __restrict gp = l.g;
  float* __restrict mp = l.m;
  float* __restrict vp = l.v;
  float* __restrict xp = l.v_max;
  const float sign = (l.flags & kMaximize) ? -1.0f : 1.0f;  // exact: g * -1 is -g
  const float neg_step_size = l.neg_step_size, bc2_sqrt = l.bc2_sqrt;
  const bool small = c.small != 0;
  const float wa = small ? c.w : c.w_minus_1;  // lerp: fma(wa, g - m, small ? m : g)
  for (int64_t i = begin; i < end; ++i) {
    float g = gp[i] * sign;
    const float p = pp[i];
    float p_d = p;
    if constexpr (kDecays && kDecoupled) p_d = p * c.decay;
    if constexpr (kDecays && !kDecoupled) g = std::fma(c.wd, p, g);
    const float m0 = mp[i];
    const float m = std::fma(wa, g - m0, small ? m0 : g);
    const float cg = c.one_minus_b2 * g;
    const float v = kTail ? std::fma(vp[i], c.b2, cg * g) : std::fma(cg, g, vp[i] * c.b2);
    float s = v;
    if constexpr (kAmsgrad) {
      s = MaxNan(xp[i], v);
      xp[i] = s;
    }
    const float d = std::sqrt(s) / bc2_sqrt + c.eps;
    const float u = (neg_step_size * m) / d;
    if constexpr (kDecays && kDecoupled) {
      pp[i] = p + ((p_d + u) - p);
    } else {
      pp[i] = p + u;
    }
    mp[i] = m;
    vp[i] = v;
  }
}

// Elements [begin, end) of one leaf: the body, and the fused kernel's tail where it falls.
template <bool kDecays, bool kDecoupled, bool kAmsgrad>
void Block(const Coefficients& c, const Leaf& l, int64_t begin, int64_t end) {
  const int64_t cut = std::max(begin, std::min(
      end, (l.flags & kFusedTail) ? l.n - l.n % 8 : l.n));
  Range<kDecays, kDecoupled, kAmsgrad, false>(c, l, begin, cut);
  Range<kDecays, kDecoupled, kAmsgrad, true>(c, l, cut, end);
}

using BlockFn = void (*)(const Coefficients&, const Leaf&, int64_t, int64_t);

template <bool kDecays, bool kDecoupled>
BlockFn Pick(bool amsgrad) {
  return amsgrad ? Block<kDecays, kDecoupled, true> : Block<kDecays, kDecoupled, false>;
}

BlockFn BlockOf(int64_t flags) {
  const bool amsgrad = flags & kAmsgrad;
  if (!(flags & kDecays)) return Pick<false, false>(amsgrad);
  return (flags & kDecoupled) ? Pick<true, true>(amsgrad) : Pick<true, false>(amsgrad);
}

struct Step {
  Coefficients c;
  std::vector<Leaf> leaves;

  void operator()(const funcopt::Unit& w) const {
    const Leaf& l = leaves[w.leaf];
    BlockOf(l.flags)(c, l, w.begin, w.end);
  }
};

Coefficients CoefficientsOf(const float* k) {
  return {k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]};
}

ffi::Error AdamTorchImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> coefficients,
                         ffi::Buffer<ffi::F32> leaf_scalars, ffi::RemainingArgs args,
                         ffi::RemainingRets rets, ffi::Span<const int64_t> flags) {
  const size_t n_leaves = flags.size();
  size_t streams = 0;
  for (size_t i = 0; i < n_leaves; ++i) streams += (flags[i] & kAmsgrad) ? 5 : 4;
  if (coefficients.element_count() != 8 || leaf_scalars.element_count() != 2 * n_leaves ||
      args.size() != streams || rets.size() != streams - n_leaves) {
    return ffi::Error::InvalidArgument("funcopt_adam_torch_f32: inconsistent operand counts");
  }
  Step step{CoefficientsOf(coefficients.typed_data()), {}};
  std::vector<int64_t> sizes;
  size_t arg = 0, ret = 0;
  for (size_t i = 0; i < n_leaves; ++i) {
    const size_t k = (flags[i] & kAmsgrad) ? 5 : 4;
    float* in[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
    int64_t n = -1;
    for (size_t j = 0; j < k; ++j, ++arg) {
      auto buffer = args.get<ffi::Buffer<ffi::F32>>(arg);
      if (!buffer.has_value()) {
        return ffi::Error::InvalidArgument("funcopt_adam_torch_f32: operands must be float32");
      }
      if (n >= 0 && static_cast<int64_t>(buffer->element_count()) != n) {
        return ffi::Error::InvalidArgument("funcopt_adam_torch_f32: leaf sizes differ");
      }
      n = buffer->element_count();
      in[j] = buffer->typed_data();
    }
    // Results (p', m', v'[, v_max']) must be the operands' own buffers.
    for (size_t j = 0; j + 1 < k; ++j, ++ret) {
      auto buffer = rets.get<ffi::Buffer<ffi::F32>>(ret);
      if (!buffer.has_value() || (*buffer)->typed_data() != in[j == 0 ? 0 : j + 1]) {
        return ffi::Error::InvalidArgument("funcopt_adam_torch_f32: results must alias");
      }
    }
    const float* s = leaf_scalars.typed_data() + 2 * i;
    step.leaves.push_back({in[0], in[1], in[2], in[3], in[4], n, s[0], s[1], flags[i]});
    sizes.push_back(n);
  }
  funcopt::RunLeavesOnPool(pool, std::move(step), sizes.data(), sizes.size());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FuncoptAdamTorchF32, AdamTorchImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // coefficients
                                  .Arg<ffi::Buffer<ffi::F32>>()  // leaf_scalars
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<ffi::Span<const int64_t>>("flags"));

FUNCOPT_DEFINE_COMMON_ENTRY_POINTS()

// The step on L leaves of raw memory: `pointers` holds (p, g, m, v, v_max) per leaf.
extern "C" int funcopt_adam_torch_f32(int64_t n_leaves, float* const* pointers,
                                      const int64_t* sizes, const float* coefficients,
                                      const float* leaf_scalars, const uint8_t* flags,
                                      uint64_t fp_control, int64_t threads) {
  Step step{CoefficientsOf(coefficients), {}};
  for (int64_t i = 0; i < n_leaves; ++i) {
    float* const* q = pointers + 5 * i;
    const float* s = leaf_scalars + 2 * i;
    if ((flags[i] & kAmsgrad) && q[4] == nullptr) return 1;
    step.leaves.push_back({q[0], q[1], q[2], q[3], q[4], sizes[i], s[0], s[1], flags[i]});
  }
  funcopt::RunLeavesDirect(static_cast<FpControl>(fp_control), std::move(step), sizes, n_leaves,
                           threads);
  return 0;
}
