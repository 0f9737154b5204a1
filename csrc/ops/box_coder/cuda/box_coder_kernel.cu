// CUDA kernel of detbench.decode_boxes: one thread per decoded box (memory-bound: 16 bytes of
// deltas in, 16 out, the reference box read once per class from L2).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/box_coder/box_coder.h"

namespace detbench {

namespace {

constexpr int kThreads = 256;

template <typename S, typename B>
__global__ void __launch_bounds__(kThreads)
    decode_kernel(const S* __restrict__ deltas, const B* __restrict__ boxes, S* __restrict__ out, int64_t total,
                  int64_t classes, int64_t box_period, DecodeParams<at::opmath_type<S>> params) {
  using T = at::opmath_type<S>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / classes;
    const B* br = boxes + 4 * (row % box_period);
    const T box[4] = {T(S(br[0])), T(S(br[1])), T(S(br[2])), T(S(br[3]))};
    const S* dr = deltas + 4 * i;
    const T delta[4] = {T(dr[0]), T(dr[1]), T(dr[2]), T(dr[3])};
    T res[4];
    decode_box<S>(box, delta, params, res);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      out[4 * i + k] = S(res[k]);
    }
  }
}

at::Tensor decode_boxes_cuda(const at::Tensor& deltas_in, const at::Tensor& boxes_in, at::ArrayRef<double> weights,
                             double clip) {
  at::Tensor out = decode_boxes_allocate_output(deltas_in, boxes_in, weights, clip);
  if (out.numel() == 0) {
    return out;
  }
  const c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor deltas = deltas_in.contiguous();
  const at::Tensor boxes = boxes_in.contiguous();
  const DecodeShape shape = decode_shape(deltas, boxes);
  const int64_t total = shape.rows * shape.classes;
  const int64_t blocks = std::min<int64_t>(ceil_div<int64_t>(total, kThreads), 65535 * 16);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, deltas.scalar_type(), "detbench.decode_boxes", [&] {
    using S = scalar_t;
    using T = at::opmath_type<S>;
    const DecodeParams<T> params{T(weights[0]), T(weights[1]), T(weights[2]), T(weights[3]), T(clip)};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "detbench.decode_boxes", [&] {
      decode_kernel<S, scalar_t><<<unsigned(blocks), kThreads, 0, stream>>>(
          deltas.const_data_ptr<S>(), boxes.const_data_ptr<scalar_t>(), out.mutable_data_ptr<S>(), total,
          shape.classes, shape.box_period, params);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CUDA, m) {
  m.impl("decode_boxes", &decode_boxes_cuda);
}

}  // namespace detbench
