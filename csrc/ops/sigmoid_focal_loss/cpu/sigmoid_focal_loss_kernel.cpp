// CPU kernels of detbench.sigmoid_focal_loss and its backward: one fused pass each, over fixed
// chunks of kChunk elements in parallel (a few chunks run on the calling thread).
//
// float16/bfloat16/float32 compute in float, block by block: a block of kBlock elements is
// converted to float buffers (float32 is read in place), the loss or gradient of the block is one
// plain loop over those buffers with exp/log1p from focal_float_math.h (no libm calls), which the
// compiler vectorizes, and the result is converted back. That loop is compiled three times, for
// AVX-512, AVX2+FMA and the baseline ISA, and the widest one that both the CPU and torch's own
// kernels use (ATEN_CPU_CAPABILITY is honoured) runs. float64 keeps std's exp/log1p.
//
// The reduced forward sums each chunk in 16 double lanes (lane l takes the elements l mod 16),
// adds the lanes in order, then the chunk sums in double in chunk order: the result depends on
// neither the thread count nor the ISA's vector width.
//
// GCC, unlike clang, treats float comparisons as possibly trapping by default and then keeps the
// selects of the formulas (max(x, 0), the sigmoid's two branches, exp's range clamp) as branches,
// which stops the vectorizer: this file is compiled with -fno-trapping-math, clang's default. It
// changes no result (no fast-math: rounding, NaN and inf are untouched); only floating-point
// exception flags, which nothing here reads, may differ.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/sigmoid_focal_loss/cpu/focal_float_math.h"
#include "ops/sigmoid_focal_loss/sigmoid_focal_loss.h"

namespace detbench {

namespace {

constexpr int64_t kChunk = 4096;        // elements per partial sum: small, so threads get equal shares
constexpr int64_t kChunksPerTask = 4;  // >= 16k elements (~10-20 us) per thread, else one thread
constexpr int64_t kBlock = 256;    // elements per conversion buffer: 3 KiB of float, in L1
constexpr int64_t kLanes = 16;     // double accumulators of a reduced chunk
static_assert(kChunk % kBlock == 0 && kBlock % kLanes == 0, "blocks tile chunks, lanes tile blocks");

// The math the kernels compute in: float with the vectorizable exp/log1p, or double with std's.
template <typename T>
using FocalMath = std::conditional_t<std::is_same_v<T, float>, FocalFloatMath, FocalStdMath>;

// src[0, n) in T: src itself when it already is, else converted into buffer.
template <typename T, typename S>
inline const T* as_compute_type(const S* __restrict__ src, T* __restrict__ buffer, int64_t n) {
  if constexpr (std::is_same_v<S, T>) {
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) {
      buffer[i] = static_cast<T>(src[i]);
    }
    return buffer;
  }
}

// out itself when it holds T (results are written in place), else buffer (converted after).
template <typename T, typename O>
inline T* in_place_or(O* out, T* buffer) {
  if constexpr (std::is_same_v<O, T>) {
    return out;
  } else {
    return buffer;
  }
}

// Everything one range of elements needs; alpha/gamma in the compute type.
template <typename scalar_t, typename target_t>
struct FocalArgs {
  using T = at::opmath_type<scalar_t>;
  using out_t = focal_out_t<scalar_t, target_t>;
  const scalar_t* x;
  const target_t* t;
  out_t* loss;        // forward 'none'
  const out_t* grad;  // backward 'none': the upstream gradient per element
  T grad_scale;       // backward 'mean'/'sum': the upstream gradient, / n for 'mean'
  scalar_t* dx;       // backward
  T alpha;
  T gamma;
};

// The loss of elements [begin, end), written to args.loss.
template <typename scalar_t, typename target_t, bool kGamma2, bool kAlpha>
inline void forward_none_range(const FocalArgs<scalar_t, target_t>& args, int64_t begin, int64_t end) {
  using T = at::opmath_type<scalar_t>;
  using out_t = focal_out_t<scalar_t, target_t>;
  const FocalParams<T> fp{args.alpha, args.gamma, kAlpha};
  alignas(64) T x_buffer[kBlock], t_buffer[kBlock], loss_buffer[kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t n = std::min(kBlock, end - b);
    const T* __restrict__ x = as_compute_type(args.x + b, x_buffer, n);
    const T* __restrict__ t = as_compute_type(args.t + b, t_buffer, n);
    T* __restrict__ loss = in_place_or(args.loss + b, loss_buffer);
    for (int64_t i = 0; i < n; ++i) {
      loss[i] = focal_loss_value<T, kGamma2, FocalMath<T>>(x[i], t[i], fp);
    }
    if constexpr (!std::is_same_v<out_t, T>) {
      for (int64_t i = 0; i < n; ++i) {
        args.loss[b + i] = static_cast<out_t>(loss_buffer[i]);
      }
    }
  }
}

// The sum of the losses of elements [begin, end), in 16 double lanes added in order.
template <typename scalar_t, typename target_t, bool kGamma2, bool kAlpha>
inline double forward_sum_range(const FocalArgs<scalar_t, target_t>& args, int64_t begin, int64_t end) {
  using T = at::opmath_type<scalar_t>;
  const FocalParams<T> fp{args.alpha, args.gamma, kAlpha};
  alignas(64) T x_buffer[kBlock], t_buffer[kBlock], loss[kBlock];
  double lanes[kLanes] = {};
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t n = std::min(kBlock, end - b);
    const T* __restrict__ x = as_compute_type(args.x + b, x_buffer, n);
    const T* __restrict__ t = as_compute_type(args.t + b, t_buffer, n);
    for (int64_t i = 0; i < n; ++i) {
      loss[i] = focal_loss_value<T, kGamma2, FocalMath<T>>(x[i], t[i], fp);
    }
    const int64_t padded = (n + kLanes - 1) / kLanes * kLanes;
    std::fill(loss + n, loss + padded, T(0));
    for (int64_t i = 0; i < padded; i += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) {
        lanes[l] += static_cast<double>(loss[i + l]);
      }
    }
  }
  double sum = 0.0;
  for (const double lane : lanes) {
    sum += lane;
  }
  return sum;
}

// d loss / dx of elements [begin, end) times the upstream gradient, written to args.dx.
template <typename scalar_t, typename target_t, bool kGamma2, bool kAlpha>
inline void backward_range(const FocalArgs<scalar_t, target_t>& args, int64_t begin, int64_t end) {
  using T = at::opmath_type<scalar_t>;
  const FocalParams<T> fp{args.alpha, args.gamma, kAlpha};
  alignas(64) T x_buffer[kBlock], t_buffer[kBlock], g_buffer[kBlock], dx_buffer[kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t n = std::min(kBlock, end - b);
    const T* __restrict__ x = as_compute_type(args.x + b, x_buffer, n);
    const T* __restrict__ t = as_compute_type(args.t + b, t_buffer, n);
    T* __restrict__ dx = in_place_or(args.dx + b, dx_buffer);
    if (args.grad != nullptr) {
      const T* __restrict__ g = as_compute_type(args.grad + b, g_buffer, n);
      for (int64_t i = 0; i < n; ++i) {
        dx[i] = g[i] * focal_loss_grad<T, kGamma2, FocalMath<T>>(x[i], t[i], fp);
      }
    } else {
      const T scale = args.grad_scale;
      for (int64_t i = 0; i < n; ++i) {
        dx[i] = scale * focal_loss_grad<T, kGamma2, FocalMath<T>>(x[i], t[i], fp);
      }
    }
    if constexpr (!std::is_same_v<scalar_t, T>) {
      for (int64_t i = 0; i < n; ++i) {
        args.dx[b + i] = static_cast<scalar_t>(dx_buffer[i]);
      }
    }
  }
}

enum class Isa { kBaseline, kAvx2, kAvx512 };

// The range functions compiled for one ISA; flatten inlines the whole call tree (formulas, exp,
// log1p, conversions) into the ISA's function, so all of it is compiled for that ISA.
template <Isa isa, typename scalar_t, typename target_t, bool kGamma2, bool kAlpha>
struct FocalRanges;

#define DETBENCH_FOCAL_RANGES(ISA, ATTRIBUTES)                                                                  \
  template <typename scalar_t, typename target_t, bool kGamma2, bool kAlpha>                                   \
  struct FocalRanges<ISA, scalar_t, target_t, kGamma2, kAlpha> {                                               \
    using Args = FocalArgs<scalar_t, target_t>;                                                                \
    ATTRIBUTES static void forward_none(const Args& args, int64_t begin, int64_t end) {                        \
      forward_none_range<scalar_t, target_t, kGamma2, kAlpha>(args, begin, end);                               \
    }                                                                                                          \
    ATTRIBUTES static double forward_sum(const Args& args, int64_t begin, int64_t end) {                       \
      return forward_sum_range<scalar_t, target_t, kGamma2, kAlpha>(args, begin, end);                         \
    }                                                                                                          \
    ATTRIBUTES static void backward(const Args& args, int64_t begin, int64_t end) {                            \
      backward_range<scalar_t, target_t, kGamma2, kAlpha>(args, begin, end);                                   \
    }                                                                                                          \
  };

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DETBENCH_FOCAL_X86_VARIANTS 1
DETBENCH_FOCAL_RANGES(Isa::kAvx512,
                      __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,"
                                            "prefer-vector-width=512"),
                                     flatten)))
DETBENCH_FOCAL_RANGES(Isa::kAvx2, __attribute__((target("avx2,fma,f16c"), flatten)))
#endif
DETBENCH_FOCAL_RANGES(Isa::kBaseline, __attribute__((flatten)))
#undef DETBENCH_FOCAL_RANGES

// The widest ISA both this CPU and torch's CPU kernels use (torch's choice honours
// ATEN_CPU_CAPABILITY, so that variable caps this op too).
Isa focal_isa() {
#ifdef DETBENCH_FOCAL_X86_VARIANTS
  static const Isa isa = [] {
    const std::string torch_isa = at::get_cpu_capability();
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (avx512 && torch_isa.rfind("AVX512", 0) == 0) {
      return Isa::kAvx512;
    }
    if (avx2 && (torch_isa == "AVX2" || torch_isa.rfind("AVX512", 0) == 0)) {
      return Isa::kAvx2;
    }
    return Isa::kBaseline;
  }();
  return isa;
#else
  return Isa::kBaseline;
#endif
}

// Calls f(FocalRanges<...>{}) for the ISA, gamma == 2 and alpha >= 0. Only gamma == 2 is
// specialized per ISA: any other gamma calls pow, a libm call per element that no ISA vectorizes.
template <typename scalar_t, typename target_t, typename F>
void with_ranges(double alpha, double gamma, F&& f) {
  const auto with_isa = [&](auto gamma2, auto use_alpha) {
    constexpr bool kGamma2 = decltype(gamma2)::value;
    constexpr bool kAlpha = decltype(use_alpha)::value;
    constexpr bool kVectorizable = kGamma2 && std::is_same_v<at::opmath_type<scalar_t>, float>;
#ifdef DETBENCH_FOCAL_X86_VARIANTS
    if constexpr (kVectorizable) {
      switch (focal_isa()) {
        case Isa::kAvx512:
          return f(FocalRanges<Isa::kAvx512, scalar_t, target_t, kGamma2, kAlpha>{});
        case Isa::kAvx2:
          return f(FocalRanges<Isa::kAvx2, scalar_t, target_t, kGamma2, kAlpha>{});
        case Isa::kBaseline:
          break;
      }
    }
#endif
    (void)kVectorizable;
    f(FocalRanges<Isa::kBaseline, scalar_t, target_t, kGamma2, kAlpha>{});
  };
  const auto with_alpha = [&](auto gamma2) {
    if (alpha >= 0.0) {
      with_isa(gamma2, std::true_type{});
    } else {
      with_isa(gamma2, std::false_type{});
    }
  };
  if (gamma == 2.0) {
    with_alpha(std::true_type{});
  } else {
    with_alpha(std::false_type{});
  }
}

// Runs range(begin, end) over [0, n) in kChunk pieces, on the calling thread up to kChunksPerTask.
template <typename Range>
void for_each_chunk(int64_t n, const Range& range) {
  at::parallel_for(0, ceil_div(n, kChunk), kChunksPerTask, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      range(c * kChunk, std::min(n, (c + 1) * kChunk));
    }
  });
}

template <typename scalar_t, typename target_t>
void forward_impl(const at::Tensor& inputs, const at::Tensor& targets, at::Tensor& out, double alpha, double gamma,
                  FocalReduction reduction) {
  using T = at::opmath_type<scalar_t>;
  using out_t = focal_out_t<scalar_t, target_t>;
  FocalArgs<scalar_t, target_t> args{};
  args.x = inputs.const_data_ptr<scalar_t>();
  args.t = targets.const_data_ptr<target_t>();
  args.alpha = static_cast<T>(alpha);
  args.gamma = static_cast<T>(gamma);
  const int64_t n = inputs.numel();
  if (reduction == FocalReduction::kNone) {
    args.loss = out.mutable_data_ptr<out_t>();
    with_ranges<scalar_t, target_t>(alpha, gamma, [&](auto ranges) {
      for_each_chunk(n, [&](int64_t begin, int64_t end) { decltype(ranges)::forward_none(args, begin, end); });
    });
    return;
  }
  std::vector<double> partial(ceil_div(n, kChunk), 0.0);
  with_ranges<scalar_t, target_t>(alpha, gamma, [&](auto ranges) {
    for_each_chunk(n, [&](int64_t begin, int64_t end) {
      partial[begin / kChunk] = decltype(ranges)::forward_sum(args, begin, end);
    });
  });
  double total = 0.0;
  for (const double s : partial) {
    total += s;
  }
  // torch's mean of an empty tensor is NaN (0 / 0); the sum is 0.
  const double value = reduction == FocalReduction::kMean ? total / static_cast<double>(n) : total;
  out.fill_(value);
}

template <typename scalar_t, typename target_t>
void backward_impl(const at::Tensor& grad, const at::Tensor& inputs, const at::Tensor& targets, at::Tensor& dx,
                   double alpha, double gamma, FocalReduction reduction) {
  using T = at::opmath_type<scalar_t>;
  using out_t = focal_out_t<scalar_t, target_t>;
  FocalArgs<scalar_t, target_t> args{};
  args.x = inputs.const_data_ptr<scalar_t>();
  args.t = targets.const_data_ptr<target_t>();
  args.dx = dx.mutable_data_ptr<scalar_t>();
  args.alpha = static_cast<T>(alpha);
  args.gamma = static_cast<T>(gamma);
  const int64_t n = inputs.numel();
  const out_t* g = grad.const_data_ptr<out_t>();
  if (reduction == FocalReduction::kNone) {
    args.grad = g;
  } else {  // the reduced losses' gradient, the same for every element
    args.grad_scale = static_cast<T>(g[0]);
    if (reduction == FocalReduction::kMean) {
      args.grad_scale /= static_cast<T>(n);
    }
  }
  with_ranges<scalar_t, target_t>(alpha, gamma, [&](auto ranges) {
    for_each_chunk(n, [&](int64_t begin, int64_t end) { decltype(ranges)::backward(args, begin, end); });
  });
}

at::Tensor focal_forward_cpu(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                             c10::string_view reduction_name) {
  const FocalReduction reduction = focal_check(inputs, targets, alpha, gamma, reduction_name);
  at::Tensor out = focal_allocate_output(inputs, targets, reduction);
  const at::Tensor x = inputs.contiguous();
  const at::Tensor t = targets.contiguous();
  focal_dispatch(x, t, [&](auto* s, auto* tt) {
    using scalar_t = std::remove_pointer_t<decltype(s)>;
    using target_t = std::remove_pointer_t<decltype(tt)>;
    forward_impl<scalar_t, target_t>(x, t, out, alpha, gamma, reduction);
  });
  return out;
}

at::Tensor focal_backward_cpu(const at::Tensor& grad, const at::Tensor& inputs, const at::Tensor& targets,
                              double alpha, double gamma, c10::string_view reduction_name) {
  const FocalReduction reduction = focal_check(inputs, targets, alpha, gamma, reduction_name);
  focal_check_grad(grad, inputs, targets, reduction);
  at::Tensor dx = at::empty(inputs.sizes(), inputs.options());
  const at::Tensor x = inputs.contiguous();
  const at::Tensor t = targets.contiguous();
  const at::Tensor g = grad.contiguous();
  focal_dispatch(x, t, [&](auto* s, auto* tt) {
    using scalar_t = std::remove_pointer_t<decltype(s)>;
    using target_t = std::remove_pointer_t<decltype(tt)>;
    backward_impl<scalar_t, target_t>(g, x, t, dx, alpha, gamma, reduction);
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("sigmoid_focal_loss", &focal_forward_cpu);
  m.impl("sigmoid_focal_loss_backward", &focal_backward_cpu);
}

}  // namespace detbench
