// CPU kernel of detbench.decode_boxes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/box_coder/box_coder.h"

namespace detbench {

namespace {

template <typename S, typename B>
void decode_cpu_impl(const at::Tensor& deltas, const at::Tensor& boxes, const DecodeShape& shape,
                     const DecodeParams<at::opmath_type<S>>& params, at::Tensor& out) {
  using T = at::opmath_type<S>;
  const S* d = deltas.const_data_ptr<S>();
  const B* b = boxes.const_data_ptr<B>();
  S* o = out.mutable_data_ptr<S>();
  const int64_t C = shape.classes;
  at::parallel_for(0, shape.rows, ceil_div<int64_t>(at::internal::GRAIN_SIZE, 4 * C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const B* br = b + 4 * (r % shape.box_period);
      // boxes.to(rel_codes.dtype), as torchvision does first
      const T box[4] = {T(S(br[0])), T(S(br[1])), T(S(br[2])), T(S(br[3]))};
      for (int64_t c = 0; c < C; ++c) {
        const S* dr = d + (r * C + c) * 4;
        const T delta[4] = {T(dr[0]), T(dr[1]), T(dr[2]), T(dr[3])};
        T res[4];
        decode_box<S>(box, delta, params, res);
        for (int k = 0; k < 4; ++k) {
          o[(r * C + c) * 4 + k] = S(res[k]);
        }
      }
    }
  });
}

at::Tensor decode_boxes_cpu(const at::Tensor& deltas_in, const at::Tensor& boxes_in, at::ArrayRef<double> weights,
                            double clip) {
  at::Tensor out = decode_boxes_allocate_output(deltas_in, boxes_in, weights, clip);
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor deltas = deltas_in.contiguous();
  const at::Tensor boxes = boxes_in.contiguous();
  const DecodeShape shape = decode_shape(deltas, boxes);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, deltas.scalar_type(), "detbench.decode_boxes", [&] {
    using S = scalar_t;
    using T = at::opmath_type<S>;
    const DecodeParams<T> params{T(weights[0]), T(weights[1]), T(weights[2]), T(weights[3]), T(clip)};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "detbench.decode_boxes", [&] {
      decode_cpu_impl<S, scalar_t>(deltas, boxes, shape, params, out);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("decode_boxes", &decode_boxes_cpu);
}

}  // namespace detbench
