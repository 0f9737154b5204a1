// CPU kernels of detbench.sigmoid_focal_loss and its backward: one fused pass each, over chunks
// of kChunk elements in parallel. The reduced forward sums each chunk and then the chunk sums in
// double, in chunk order: the result does not depend on the thread count.
#include <vector>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/sigmoid_focal_loss/sigmoid_focal_loss.h"

namespace detbench {

namespace {

constexpr int64_t kChunk = 16384;

template <typename T>
FocalParams<T> focal_params(double alpha, double gamma) {
  return {static_cast<T>(alpha), static_cast<T>(gamma), alpha >= 0.0};
}

template <typename scalar_t, typename target_t, bool kGamma2>
void forward_impl(const at::Tensor& inputs, const at::Tensor& targets, at::Tensor& out, double alpha, double gamma,
                  FocalReduction reduction) {
  using T = at::opmath_type<scalar_t>;
  using out_t = focal_out_t<scalar_t, target_t>;
  const FocalParams<T> fp = focal_params<T>(alpha, gamma);
  const scalar_t* x = inputs.const_data_ptr<scalar_t>();
  const target_t* t = targets.const_data_ptr<target_t>();
  const int64_t n = inputs.numel();
  const int64_t chunks = ceil_div(n, kChunk);
  if (reduction == FocalReduction::kNone) {
    out_t* o = out.mutable_data_ptr<out_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t i = c0 * kChunk, end = std::min(n, c1 * kChunk); i < end; ++i) {
        o[i] = static_cast<out_t>(focal_loss_value<T, kGamma2>(T(x[i]), T(t[i]), fp));
      }
    });
    return;
  }
  std::vector<double> partial(chunks, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double sum = 0;
      for (int64_t i = c * kChunk, end = std::min(n, (c + 1) * kChunk); i < end; ++i) {
        sum += focal_loss_value<T, kGamma2>(T(x[i]), T(t[i]), fp);
      }
      partial[c] = sum;
    }
  });
  double total = 0.0;
  for (const double s : partial) {
    total += s;
  }
  // torch's mean of an empty tensor is NaN (0 / 0); the sum is 0.
  const double value = reduction == FocalReduction::kMean ? total / static_cast<double>(n) : total;
  out.fill_(value);
}

template <typename scalar_t, typename target_t, bool kGamma2>
void backward_impl(const at::Tensor& grad, const at::Tensor& inputs, const at::Tensor& targets, at::Tensor& dx,
                   double alpha, double gamma, FocalReduction reduction) {
  using T = at::opmath_type<scalar_t>;
  using out_t = focal_out_t<scalar_t, target_t>;
  const FocalParams<T> fp = focal_params<T>(alpha, gamma);
  const scalar_t* x = inputs.const_data_ptr<scalar_t>();
  const target_t* t = targets.const_data_ptr<target_t>();
  scalar_t* d = dx.mutable_data_ptr<scalar_t>();
  const int64_t n = inputs.numel();
  const out_t* g = grad.const_data_ptr<out_t>();
  T scale = 0;  // the reduced losses' gradient, the same for every element
  if (reduction != FocalReduction::kNone) {
    scale = static_cast<T>(g[0]);
    if (reduction == FocalReduction::kMean) {
      scale /= static_cast<T>(n);
    }
  }
  at::parallel_for(0, ceil_div(n, kChunk), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t i = c0 * kChunk, end = std::min(n, c1 * kChunk); i < end; ++i) {
      const T gi = reduction == FocalReduction::kNone ? static_cast<T>(g[i]) : scale;
      d[i] = static_cast<scalar_t>(gi * focal_loss_grad<T, kGamma2>(T(x[i]), T(t[i]), fp));
    }
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
    if (gamma == 2.0) {
      forward_impl<scalar_t, target_t, true>(x, t, out, alpha, gamma, reduction);
    } else {
      forward_impl<scalar_t, target_t, false>(x, t, out, alpha, gamma, reduction);
    }
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
    if (gamma == 2.0) {
      backward_impl<scalar_t, target_t, true>(g, x, t, dx, alpha, gamma, reduction);
    } else {
      backward_impl<scalar_t, target_t, false>(g, x, t, dx, alpha, gamma, reduction);
    }
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("sigmoid_focal_loss", &focal_forward_cpu);
  m.impl("sigmoid_focal_loss_backward", &focal_backward_cpu);
}

}  // namespace detbench
