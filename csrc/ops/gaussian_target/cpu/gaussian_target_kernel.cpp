// CPU kernels of detbench.draw_heatmap, draw_heatmap_batched and gaussian_radius.
//
// Drawing scatters each box's window into its plane (the max merge is order-independent, so
// the result is the same as mmdet's loop over boxes); the work is split by plane (flat) or by
// image (batched), so no two threads ever write the same plane.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/gaussian_target/gaussian_target.h"

namespace detbench {

namespace {

// Window rows/columns [lo, hi) of a box with center c and radius r in a dimension of size n:
// mmdet's clipping, [c - min(c, r), c + min(n - c, r + 1)) for 0 <= c < n.
inline void window(int64_t c, int64_t r, int64_t n, int64_t& lo, int64_t& hi) {
  const int64_t reach = std::min(r, n);  // a radius past the plane covers all of it; no overflow
  lo = std::max<int64_t>(0, c - reach);
  hi = std::min(n, c + reach + 1);
}

inline int64_t window_area(const GaussianBox& box, int64_t H, int64_t W) {
  int64_t x0, x1, y0, y1;
  window(box.x, box.r, W, x0, x1);
  window(box.y, box.r, H, y0, y1);
  return (x1 - x0) * (y1 - y0);
}

void draw_box(float* plane, int64_t H, int64_t W, const GaussianBox& box, float k) {
  const float divisor = gaussian_divisor(box.r);
  int64_t x0, x1, y0, y1;
  window(box.x, box.r, W, x0, x1);
  window(box.y, box.r, H, y0, y1);
  for (int64_t row = y0; row < y1; ++row) {
    float* line = plane + row * W;
    for (int64_t col = x0; col < x1; ++col) {
      line[col] = max_propagate_nan(line[col], gaussian_value(col - box.x, row - box.y, divisor, k));
    }
  }
}

// Grain for at::parallel_for over `units` that together evaluate `work` pixels: about
// kPixelsPerTask pixels (~2 ms) per task. Smaller problems (the ACCV case: ~50k pixels,
// 0.4 ms) stay on one thread: measured on the 2-core CI machine under load, splitting them
// over two OpenMP threads took 16 ms instead of 0.4 ms.
constexpr int64_t kPixelsPerTask = int64_t(1) << 18;

int64_t grain_for(int64_t units, int64_t work) {
  return std::max<int64_t>(1, units * kPixelsPerTask / std::max<int64_t>(work, 1));
}

template <typename idx_t>
void draw_flat(at::Tensor& heatmaps, const at::Tensor& centers_t, const at::Tensor& radii_t,
               const at::Tensor& index_t, float k) {
  const int64_t M = heatmaps.size(0), H = heatmaps.size(1), W = heatmaps.size(2);
  const int64_t T = centers_t.size(0);
  const idx_t* centers = centers_t.const_data_ptr<idx_t>();
  const idx_t* radii = radii_t.const_data_ptr<idx_t>();
  const idx_t* index = index_t.const_data_ptr<idx_t>();
  // Boxes bucketed by plane (a counting sort), so that each plane is drawn by one thread.
  std::vector<int64_t> start(M + 1, 0);
  for (int64_t t = 0; t < T; ++t) {
    ++start[index[t] + 1];
  }
  for (int64_t m = 0; m < M; ++m) {
    start[m + 1] += start[m];
  }
  std::vector<GaussianBox> boxes(T);
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  int64_t work = 0;
  for (int64_t t = 0; t < T; ++t) {
    const GaussianBox box{centers[2 * t], centers[2 * t + 1], radii[t]};
    boxes[fill[index[t]]++] = box;
    work += window_area(box, H, W);
  }
  float* out = heatmaps.mutable_data_ptr<float>();
  at::parallel_for(0, M, grain_for(M, work), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t i = start[m]; i < start[m + 1]; ++i) {
        draw_box(out + m * H * W, H, W, boxes[i], k);
      }
    }
  });
}

template <typename idx_t>
void draw_batched(at::Tensor& heatmaps, const at::Tensor& centers_t, const at::Tensor& radii_t,
                  const at::Tensor& counts_t, const at::Tensor* labels_t, float k) {
  const int64_t B = heatmaps.size(0), H = heatmaps.size(-2), W = heatmaps.size(-1);
  const int64_t C = labels_t ? heatmaps.size(1) : 1;
  const int64_t T = centers_t.size(1);
  const idx_t* centers = centers_t.const_data_ptr<idx_t>();
  const idx_t* radii = radii_t.const_data_ptr<idx_t>();
  const idx_t* counts = counts_t.const_data_ptr<idx_t>();
  const idx_t* labels = labels_t ? labels_t->const_data_ptr<idx_t>() : nullptr;
  int64_t work = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < counts[b]; ++t) {
      const int64_t i = b * T + t;
      work += window_area({centers[2 * i], centers[2 * i + 1], radii[i]}, H, W);
    }
  }
  float* out = heatmaps.mutable_data_ptr<float>();
  // One image per task: its planes are written by nobody else.
  at::parallel_for(0, B, grain_for(B, work), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t t = 0; t < counts[b]; ++t) {
        const int64_t i = b * T + t;
        const int64_t plane = b * C + (labels ? int64_t(labels[i]) : 0);
        draw_box(out + plane * H * W, H, W, {centers[2 * i], centers[2 * i + 1], radii[i]}, k);
      }
    }
  });
}

void draw_heatmap_cpu(const at::Tensor& heatmaps_in, const at::Tensor& centers_in, const at::Tensor& radii_in,
                      const at::Tensor& index_in, double k) {
  draw_heatmap_check(heatmaps_in, centers_in, radii_in, index_in, k);
  at::Tensor heatmaps = heatmaps_in;
  const at::Tensor centers = centers_in.contiguous(), radii = radii_in.contiguous(), index = index_in.contiguous();
  draw_heatmap_check_values("draw_heatmap", centers, radii, &index, nullptr, heatmaps.size(1), heatmaps.size(2),
                            heatmaps.size(0));
  AT_DISPATCH_INDEX_TYPES(centers.scalar_type(), "detbench.draw_heatmap", [&] {
    draw_flat<index_t>(heatmaps, centers, radii, index, static_cast<float>(k));
  });
}

void draw_heatmap_batched_cpu(const at::Tensor& heatmaps_in, const at::Tensor& centers_in,
                              const at::Tensor& radii_in, const at::Tensor& counts_in,
                              const std::optional<at::Tensor>& labels_in, double k) {
  const at::Tensor* labels_ptr = labels_in.has_value() ? &*labels_in : nullptr;
  draw_heatmap_batched_check(heatmaps_in, centers_in, radii_in, counts_in, labels_ptr, k);
  at::Tensor heatmaps = heatmaps_in;
  const at::Tensor centers = centers_in.contiguous(), radii = radii_in.contiguous(), counts = counts_in.contiguous();
  const std::optional<at::Tensor> labels =
      labels_ptr ? std::optional<at::Tensor>(labels_ptr->contiguous()) : std::nullopt;
  const int64_t planes = labels ? heatmaps.size(1) : 1;
  draw_heatmap_check_values("draw_heatmap_batched", centers, radii, labels ? &*labels : nullptr, &counts,
                            heatmaps.size(-2), heatmaps.size(-1), planes);
  AT_DISPATCH_INDEX_TYPES(centers.scalar_type(), "detbench.draw_heatmap_batched", [&] {
    draw_batched<index_t>(heatmaps, centers, radii, counts, labels ? &*labels : nullptr, static_cast<float>(k));
  });
}

at::Tensor gaussian_radius_cpu(const at::Tensor& heights_in, const at::Tensor& widths_in, double min_overlap) {
  gaussian_radius_check(heights_in, widths_in, min_overlap);
  const at::Tensor heights = heights_in.contiguous(), widths = widths_in.contiguous();
  at::Tensor out = at::empty(heights.sizes(), heights.options());
  AT_DISPATCH_FLOATING_TYPES(heights.scalar_type(), "detbench.gaussian_radius", [&] {
    const scalar_t* h = heights.const_data_ptr<scalar_t>();
    const scalar_t* w = widths.const_data_ptr<scalar_t>();
    scalar_t* r = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, heights.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        r[i] = gaussian_radius_value<scalar_t>(h[i], w[i], min_overlap);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("draw_heatmap", &draw_heatmap_cpu);
  m.impl("draw_heatmap_batched", &draw_heatmap_batched_cpu);
  m.impl("gaussian_radius", &gaussian_radius_cpu);
}

}  // namespace detbench
