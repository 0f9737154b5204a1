// CUDA kernel of detbench.grid_anchors: every level in one launch, one thread per anchor. The
// level table (and so the cell anchors' layout) travels as a kernel argument; the cell anchors
// themselves (a few hundred bytes) are read through the cache. Bound by writing 16 bytes per
// anchor (float32): 242k anchors are 3.9 MB, ~1 us of bandwidth, so the launch dominates.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/anchors/anchor_math.h"
#include "ops/anchors/anchors.h"

namespace detbench {

namespace {

constexpr int kThreads = 256;

template <typename S>
__global__ void __launch_bounds__(kThreads)
    grid_anchors_kernel(AnchorLevels lv, const S* __restrict__ cells, S* __restrict__ out, bool* __restrict__ visible,
                        int64_t n, double height, double width, double straddle_thresh) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    S a[4];
    grid_anchor<S>(lv, cells, i, a);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      out[4 * i + k] = a[k];
    }
    if (visible != nullptr) {
      visible[i] = anchor_visible<S>(a, height, width, straddle_thresh);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> grid_anchors_cuda(at::TensorList cell_anchors, at::IntArrayRef feature_sizes,
                                                     at::IntArrayRef strides, at::OptionalIntArrayRef image_size,
                                                     double straddle_thresh) {
  auto [anchors, visible] = grid_anchors_allocate(cell_anchors, feature_sizes, strides, image_size, straddle_thresh);
  const int64_t n = anchors.size(0);
  if (n == 0) {
    return {anchors, visible};
  }
  const c10::cuda::CUDAGuard guard(anchors.device());
  const AnchorLevels lv = anchor_levels(cell_anchors, feature_sizes, strides);
  const at::Tensor cells = cell_anchors.size() == 1 ? cell_anchors[0].contiguous() : at::cat(cell_anchors);
  const bool masked = visible.numel() > 0;
  const double height = image_size.has_value() ? double((*image_size)[0]) : 0.0;
  const double width = image_size.has_value() ? double((*image_size)[1]) : 0.0;
  const int64_t blocks = std::min<int64_t>(ceil_div<int64_t>(n, kThreads), 65535 * 16);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchors.scalar_type(), "detbench.grid_anchors", [&] {
    grid_anchors_kernel<scalar_t><<<unsigned(blocks), kThreads, 0, stream>>>(
        lv, cells.const_data_ptr<scalar_t>(), anchors.mutable_data_ptr<scalar_t>(),
        masked ? visible.mutable_data_ptr<bool>() : nullptr, n, height, width, straddle_thresh);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {anchors, visible};
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CUDA, m) {
  m.impl("grid_anchors", &grid_anchors_cuda);
}

}  // namespace detbench
