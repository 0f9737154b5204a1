// CPU kernels of detbench.gaussian_focal_loss and its backward. The reduction sums fixed
// chunks in float64 (a sequential float32 sum over a 16k chunk was off by ~1e-5 relative), in a
// fixed order: the result does not depend on the number of threads.
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/gaussian_focal_loss/gaussian_focal_loss.h"

namespace detbench {

namespace {

constexpr int64_t kChunk = 16384;

at::Tensor forward_cpu(const at::Tensor& pred_in, const at::Tensor& target_in, double alpha, double gamma,
                       double pos_weight, double neg_weight, c10::string_view reduction_name,
                       std::optional<double> avg_factor) {
  const GaussianFocalReduction reduction =
      gaussian_focal_loss_check(pred_in, target_in, alpha, gamma, pos_weight, neg_weight, reduction_name, avg_factor);
  at::Tensor out = gaussian_focal_loss_allocate(pred_in, reduction);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const int64_t n = pred.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "detbench.gaussian_focal_loss", [&] {
    using T = at::opmath_type<scalar_t>;
    const GaussianFocalParams<T> q = gaussian_focal_params<T>(alpha, gamma, pos_weight, neg_weight);
    const scalar_t* p = pred.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    if (reduction == GaussianFocalReduction::kNone) {
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          o[i] = static_cast<scalar_t>(gaussian_focal_value<T>(T(p[i]), T(t[i]), q));
        }
      });
      return;
    }
    const int64_t chunks = ceil_div<int64_t>(n, kChunk);
    std::vector<double> partial(chunks);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double acc = 0;
        for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
          acc += double(gaussian_focal_value<T>(T(p[i]), T(t[i]), q));
        }
        partial[c] = acc;
      }
    });
    double sum = 0;
    for (const double s : partial) {
      sum += s;
    }
    const double divisor = gaussian_focal_loss_divisor(n, reduction, avg_factor);
    out.fill_(static_cast<scalar_t>(T(sum) / T(divisor)));
  });
  return out;
}

at::Tensor backward_cpu(const at::Tensor& grad_in, const at::Tensor& pred_in, const at::Tensor& target_in,
                        double alpha, double gamma, double pos_weight, double neg_weight,
                        c10::string_view reduction_name, std::optional<double> avg_factor) {
  const GaussianFocalReduction reduction =
      gaussian_focal_loss_backward_check(grad_in, pred_in, target_in, alpha, gamma, pos_weight, neg_weight, reduction_name, avg_factor);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous(), grad = grad_in.contiguous();
  at::Tensor out = at::empty(pred.sizes(), pred.options());
  const int64_t n = pred.numel();
  const double divisor = gaussian_focal_loss_divisor(n, reduction, avg_factor);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "detbench.gaussian_focal_loss", [&] {
    using T = at::opmath_type<scalar_t>;
    const GaussianFocalParams<T> q = gaussian_focal_params<T>(alpha, gamma, pos_weight, neg_weight);
    const scalar_t* p = pred.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const bool per_element = reduction == GaussianFocalReduction::kNone;
    const T scale = per_element ? T(1) : T(g[0]) / T(divisor);
    at::parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const T gi = per_element ? T(g[i]) : scale;
        o[i] = static_cast<scalar_t>(gi * gaussian_focal_grad<T>(T(p[i]), T(t[i]), q));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("gaussian_focal_loss", &forward_cpu);
  m.impl("gaussian_focal_loss_backward", &backward_cpu);
}

}  // namespace detbench
