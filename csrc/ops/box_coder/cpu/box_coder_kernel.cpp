// CPU kernel of detbench.decode_boxes. The (box, class) pairs of one row of boxes (or of a run of
// rows, one class each) are decoded by one loop that gcc vectorizes: decode_box's steps with
// vectorizable float16/bfloat16 rounding after each and a vectorizable exp (csrc/cpu/vectorizable.h),
// where c10's conversions and std::exp would each keep it scalar.
#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/vectorizable.h"
#include "detbench.h"
#include "ops/box_coder/box_coder.h"

namespace detbench {

namespace {

template <typename S>
struct VectorizableDecodeMath {
  using T = at::opmath_type<S>;
  static T round(T x) {
    return vectorizable::Float<S>::round(x);
  }
  static T exp(T x) {
    return vectorizable::exp(x);
  }
};

// Decodes n (box, class) pairs: deltas and out [n, 4]; boxes [n, 4], or with kOneBox one box for all.
template <typename S, bool kOneBox>
DETBENCH_VECTOR_CLONES void decode_run(const S* __restrict__ deltas, const S* __restrict__ boxes, int64_t n,
                const DecodeParams<at::opmath_type<S>>& params, S* __restrict__ out) {
  using T = at::opmath_type<S>;
  using F = vectorizable::Float<S>;
  for (int64_t i = 0; i < n; ++i) {  // vectorized (not float64: std::exp)
    const S* b = kOneBox ? boxes : boxes + 4 * i;
    const T box[4] = {F::load(b[0]), F::load(b[1]), F::load(b[2]), F::load(b[3])};
    const T delta[4] = {F::load(deltas[4 * i]), F::load(deltas[4 * i + 1]), F::load(deltas[4 * i + 2]),
                        F::load(deltas[4 * i + 3])};
    T res[4];
    decode_box<S, VectorizableDecodeMath<S>>(box, delta, params, res);
    for (int k = 0; k < 4; ++k) {
      out[4 * i + k] = F::store(res[k]);
    }
  }
}

template <typename S>
void decode_cpu_impl(const at::Tensor& deltas, const at::Tensor& boxes, const DecodeShape& shape,
                     const DecodeParams<at::opmath_type<S>>& params, at::Tensor& out) {
  const S* d = deltas.const_data_ptr<S>();
  const S* b = boxes.const_data_ptr<S>();
  S* o = out.mutable_data_ptr<S>();
  const int64_t C = shape.classes;
  at::parallel_for(0, shape.rows, ceil_div<int64_t>(at::internal::GRAIN_SIZE, 4 * C), [&](int64_t begin, int64_t end) {
    if (C > 1) {  // a row's classes share its box
      for (int64_t r = begin; r < end; ++r) {
        decode_run<S, true>(d + 4 * C * r, b + 4 * (r % shape.box_period), C, params, o + 4 * C * r);
      }
      return;
    }
    for (int64_t r = begin; r < end;) {  // runs of rows whose boxes are consecutive
      const int64_t box_row = r % shape.box_period;
      const int64_t n = std::min(end - r, shape.box_period - box_row);
      decode_run<S, false>(d + 4 * r, b + 4 * box_row, n, params, o + 4 * r);
      r += n;
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
  const at::Tensor boxes = boxes_in.to(deltas.scalar_type()).contiguous();  // as torchvision converts them first
  const DecodeShape shape = decode_shape(deltas, boxes);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, deltas.scalar_type(), "detbench.decode_boxes", [&] {
    using T = at::opmath_type<scalar_t>;
    const DecodeParams<T> params{T(weights[0]), T(weights[1]), T(weights[2]), T(weights[3]), T(clip)};
    decode_cpu_impl<scalar_t>(deltas, boxes, shape, params, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("decode_boxes", &decode_boxes_cpu);
}

}  // namespace detbench
