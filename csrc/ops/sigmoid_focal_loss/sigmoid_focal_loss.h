// detbench.sigmoid_focal_loss and its backward: pieces shared by the schema, the Meta kernels and
// the CPU/CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "ops/sigmoid_focal_loss/focal_math.h"

namespace detbench {

// Checks the arguments (shapes, dtypes, devices, alpha, gamma, reduction: metadata only) and
// returns the parsed reduction.
FocalReduction focal_check(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                           c10::string_view reduction);

// The loss's dtype: torch.result_type(inputs, targets) (inputs' dtype, or float32 for float16 or
// bfloat16 inputs with float32 targets).
at::ScalarType focal_result_dtype(const at::Tensor& inputs, const at::Tensor& targets);

// The forward output, uninitialized: inputs' shape for 'none', a 0-dim tensor otherwise.
at::Tensor focal_allocate_output(const at::Tensor& inputs, const at::Tensor& targets, FocalReduction reduction);

// Checks grad's shape/dtype/device for the backward (after focal_check).
void focal_check_grad(const at::Tensor& grad, const at::Tensor& inputs, const at::Tensor& targets,
                      FocalReduction reduction);

}  // namespace detbench

#include <type_traits>

#include <ATen/Dispatch.h>

namespace detbench {

// Calls f(scalar_t*, target_t*) (null pointers as type tags) for the supported (inputs, targets)
// dtype pairs: the same dtype, or float16/bfloat16 inputs with float32 targets.
template <typename F>
void focal_dispatch(const at::Tensor& inputs, const at::Tensor& targets, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "detbench.sigmoid_focal_loss", [&] {
    if (targets.scalar_type() == inputs.scalar_type()) {
      f(static_cast<scalar_t*>(nullptr), static_cast<scalar_t*>(nullptr));
    } else {
      if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>) {
        f(static_cast<scalar_t*>(nullptr), static_cast<float*>(nullptr));
      }
    }
  });
}

// The loss's element type for inputs scalar_t and targets target_t (see focal_result_dtype).
template <typename scalar_t, typename target_t>
using focal_out_t = std::conditional_t<std::is_same_v<scalar_t, target_t>, scalar_t, float>;

}  // namespace detbench
