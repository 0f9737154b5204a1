// CPU kernel of detbench.grid_anchors.
#include <algorithm>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/vectorizable.h"
#include "detbench.h"
#include "ops/anchors/anchor_math.h"
#include "ops/anchors/anchors.h"

namespace detbench {

namespace {

// values[0, n) rounded to S in place, and packed into out: one contiguous pass that vectorizes
// (c10's scalar float16/bfloat16 conversion per coordinate cost more than the anchor itself).
template <typename S>
DETBENCH_VECTOR_CLONES void round_and_store(float* __restrict__ values, int64_t n, S* __restrict__ out) {
  using F = vectorizable::Float<S>;
  for (int64_t j = 0; j < n; ++j) {
    values[j] = F::round(values[j]);
    out[j] = F::store(values[j]);
  }
}

std::tuple<at::Tensor, at::Tensor> grid_anchors_cpu(at::TensorList cell_anchors, at::IntArrayRef feature_sizes,
                                                    at::IntArrayRef strides, at::OptionalIntArrayRef image_size,
                                                    double straddle_thresh) {
  auto [anchors, visible] = grid_anchors_allocate(cell_anchors, feature_sizes, strides, image_size, straddle_thresh);
  const int64_t n = anchors.size(0);
  if (n == 0) {
    return {anchors, visible};
  }
  const AnchorLevels lv = anchor_levels(cell_anchors, feature_sizes, strides);
  const at::Tensor cells = at::cat(cell_anchors).contiguous();
  const bool masked = visible.numel() > 0;
  const double height = image_size.has_value() ? double((*image_size)[0]) : 0.0;
  const double width = image_size.has_value() ? double((*image_size)[1]) : 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchors.scalar_type(), "detbench.grid_anchors", [&] {
    const scalar_t* c = cells.const_data_ptr<scalar_t>();
    scalar_t* out = anchors.mutable_data_ptr<scalar_t>();
    bool* vis = masked ? visible.mutable_data_ptr<bool>() : nullptr;
    // Level by level, rows in parallel, locations and cell anchors in order: no per-anchor
    // index arithmetic (the device kernel's divisions cost more than the anchor on a CPU).
    for (int l = 0; l < lv.levels; ++l) {
      const int64_t per_row = lv.width[l] * lv.count[l];
      if (per_row == 0 || lv.start[l + 1] == lv.start[l]) {
        continue;
      }
      const int64_t rows = (lv.start[l + 1] - lv.start[l]) / per_row;
      const scalar_t* level_cells = c + 4 * lv.cell_offset[l];
      const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / per_row);
      if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
        at::parallel_for(0, rows, grain, [&](int64_t y0, int64_t y1) {
          for (int64_t y = y0; y < y1; ++y) {
            int64_t i = lv.start[l] + y * per_row;
            for (int64_t x = 0; x < lv.width[l]; ++x) {
              for (int64_t a = 0; a < lv.count[l]; ++a, ++i) {
                shifted_anchor<scalar_t>(x * lv.stride_x[l], y * lv.stride_y[l], level_cells + 4 * a, out + 4 * i);
                if (vis != nullptr) {
                  vis[i] = anchor_visible<scalar_t>(out + 4 * i, height, width, straddle_thresh);
                }
              }
            }
          }
        });
      } else {
        // float16 / bfloat16: shifted_anchor's sums in float for a whole row, then rounded to S
        // in one pass (the same rounding, ties to even); visibility from the rounded values.
        std::vector<float> level_cells_f(4 * lv.count[l]);
        for (size_t j = 0; j < level_cells_f.size(); ++j) {
          level_cells_f[j] = static_cast<float>(level_cells[j]);
        }
        at::parallel_for(0, rows, grain, [&](int64_t y0, int64_t y1) {
          std::vector<float> sums(4 * per_row);
          for (int64_t y = y0; y < y1; ++y) {
            const float sy = static_cast<float>(y * lv.stride_y[l]);
            float* v = sums.data();
            for (int64_t x = 0; x < lv.width[l]; ++x) {
              const float sx = static_cast<float>(x * lv.stride_x[l]);
              for (int64_t a = 0; a < lv.count[l]; ++a, v += 4) {
                const float* cell = level_cells_f.data() + 4 * a;
                v[0] = sx + cell[0];
                v[1] = sy + cell[1];
                v[2] = sx + cell[2];
                v[3] = sy + cell[3];
              }
            }
            const int64_t i0 = lv.start[l] + y * per_row;
            round_and_store<scalar_t>(sums.data(), 4 * per_row, out + 4 * i0);
            if (vis != nullptr) {
              for (int64_t j = 0; j < per_row; ++j) {
                vis[i0 + j] = anchor_visible<float>(sums.data() + 4 * j, height, width, straddle_thresh);
              }
            }
          }
        });
      }
    }
  });
  return {anchors, visible};
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("grid_anchors", &grid_anchors_cpu);
}

}  // namespace detbench
