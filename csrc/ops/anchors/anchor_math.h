// One anchor of detbench.grid_anchors, on the host and the device.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include "ops/anchors/anchors.h"

namespace detbench {

// Anchor i: torchvision's shifts (int64 location * stride) + cell anchor, added in float (double
// for float64) and rounded once to S, as PyTorch's CPU kernels add an int64 tensor to an S tensor.
// (Its CUDA kernels may round the shift to S first: the same result except for bfloat16 shifts
// above 256, which bfloat16 cannot hold exactly.)
template <typename S>
C10_HOST_DEVICE inline void shifted_anchor(int64_t shift_x, int64_t shift_y, const S cell[4], S out[4]) {
  using T = at::opmath_type<S>;
  const T sx = T(shift_x);
  const T sy = T(shift_y);
  out[0] = S(sx + T(cell[0]));
  out[1] = S(sy + T(cell[1]));
  out[2] = S(sx + T(cell[2]));
  out[3] = S(sy + T(cell[3]));
}

template <typename S>
C10_HOST_DEVICE inline void grid_anchor(const AnchorLevels& lv, const S* cells, int64_t i, S out[4]) {
  int l = 0;
  while (l + 1 < lv.levels && i >= lv.start[l + 1]) {
    ++l;
  }
  const int64_t local = i - lv.start[l];
  const int64_t location = local / lv.count[l];
  const int64_t a = local - location * lv.count[l];
  const int64_t y = location / lv.width[l];
  const int64_t x = location - y * lv.width[l];
  shifted_anchor<S>(x * lv.stride_x[l], y * lv.stride_y[l], cells + 4 * (lv.cell_offset[l] + a), out);
}

// Visible: x1 >= -t, y1 >= -t, x2 < W + t, y2 < H + t, decided in double on the anchor's values.
template <typename S>
C10_HOST_DEVICE inline bool anchor_visible(const S a[4], double height, double width, double t) {
  return double(a[0]) >= -t && double(a[1]) >= -t && double(a[2]) < width + t && double(a[3]) < height + t;
}

}  // namespace detbench
