// CPU kernel of detbench.box_iou.
#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/box_iou/box_iou.h"
#include "ops/box_iou/iou.h"

namespace detbench {

namespace {

// Index of the first of `n` boxes with a non-finite coordinate, or -1.
template <typename scalar_t>
int64_t first_nonfinite_box(const scalar_t* boxes, int64_t n) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* b = boxes + 4 * i;
    if (!(std::isfinite(T(b[0])) && std::isfinite(T(b[1])) && std::isfinite(T(b[2])) && std::isfinite(T(b[3])))) {
      return i;
    }
  }
  return -1;
}

// One output row: box (ax1, ay1, ax2, ay2) against M boxes given as plain arrays, so that the
// loop vectorizes.
template <typename T>
void iou_row(T ax1, T ay1, T ax2, T ay2, const T* __restrict__ x1, const T* __restrict__ y1,
             const T* __restrict__ x2, const T* __restrict__ y2, const T* __restrict__ area, T* __restrict__ out,
             int64_t m) {
  const T area_a = box_area(ax1, ay1, ax2, ay2);
  for (int64_t j = 0; j < m; ++j) {
    // The formula of iou.h, shared with nms, in its form that vectorizes.
    const T inter = box_intersection(ax1, ay1, ax2, ay2, x1[j], y1[j], x2[j], y2[j]);
    out[j] = iou_from_intersection_vectorizable(inter, area_a, area[j]);
  }
}

template <typename scalar_t>
void box_iou_cpu_impl(const at::Tensor& boxes1, const at::Tensor& boxes2, at::Tensor& out, int64_t B, int64_t N,
                      int64_t M) {
  using T = at::opmath_type<scalar_t>;  // also the output's type
  const scalar_t* b1 = boxes1.const_data_ptr<scalar_t>();
  const scalar_t* b2 = boxes2.const_data_ptr<scalar_t>();

  if (const int64_t bad = first_nonfinite_box(b1, B * N); bad >= 0) {
    box_iou_nonfinite_error("boxes1", boxes1, bad);
  }
  if (const int64_t bad = first_nonfinite_box(b2, B * M); bad >= 0) {
    box_iou_nonfinite_error("boxes2", boxes2, bad);
  }

  // boxes2 once in opmath as structure-of-arrays: x1, y1, x2, y2, area, each [B * M].
  const int64_t count2 = B * M;
  at::Tensor soa = at::empty({5, count2}, out.options());
  T* x1 = soa.mutable_data_ptr<T>();
  T* y1 = x1 + count2;
  T* x2 = y1 + count2;
  T* y2 = x2 + count2;
  T* area = y2 + count2;
  for (int64_t k = 0; k < count2; ++k) {
    x1[k] = b2[4 * k];
    y1[k] = b2[4 * k + 1];
    x2[k] = b2[4 * k + 2];
    y2[k] = b2[4 * k + 3];
    area[k] = box_area(x1[k], y1[k], x2[k], y2[k]);
  }

  T* o = out.mutable_data_ptr<T>();
  const int64_t grain = ceil_div<int64_t>(at::internal::GRAIN_SIZE, M);  // rows
  at::parallel_for(0, B * N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t k = (r / N) * M;  // first box of this row's batch in boxes2
      iou_row<T>(b1[4 * r], b1[4 * r + 1], b1[4 * r + 2], b1[4 * r + 3], x1 + k, y1 + k, x2 + k, y2 + k, area + k,
                 o + r * M, M);
    }
  });
}

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  at::Tensor out = box_iou_allocate_output(boxes1, boxes2);
  if (out.numel() == 0) {
    return out;
  }
  const int64_t B = boxes1.dim() == 3 ? boxes1.size(0) : 1;
  const int64_t N = boxes1.size(-2);
  const int64_t M = boxes2.size(-2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "detbench.box_iou", [&] {
    box_iou_cpu_impl<scalar_t>(boxes1.contiguous(), boxes2.contiguous(), out, B, N, M);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
}

}  // namespace detbench
