// Schemas, argument checks, value checks and Meta kernels of detbench.draw_heatmap,
// draw_heatmap_batched and gaussian_radius.
#include "ops/gaussian_target/gaussian_target.h"

#include <cmath>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "detbench.h"

namespace detbench {

namespace {

bool is_index_dtype(at::ScalarType dtype) {
  return dtype == at::kInt || dtype == at::kLong;
}

void check_heatmaps(const char* op, const at::Tensor& heatmaps, const char* shape, bool rank_ok) {
  DETBENCH_CHECK(rank_ok, op, "heatmaps must have shape ", shape, ", got ", heatmaps.sym_sizes());
  DETBENCH_CHECK(heatmaps.scalar_type() == at::kFloat, op, "heatmaps must be float32, got ", heatmaps.scalar_type());
  DETBENCH_CHECK(heatmaps.is_contiguous(), op,
                 "heatmaps must be contiguous (it is drawn in place), got strides ", heatmaps.sym_strides());
}

// centers: integer (int32 or int64) with the given shape; every other integer argument must
// share its dtype and every argument heatmaps' device.
void check_centers(const char* op, const at::Tensor& heatmaps, const at::Tensor& centers, const char* shape,
                   bool shape_ok) {
  DETBENCH_CHECK(shape_ok, op, "centers must have shape ", shape, ", got ", centers.sym_sizes());
  DETBENCH_CHECK(is_index_dtype(centers.scalar_type()), op, "centers must be int32 or int64, got ",
                 centers.scalar_type());
  DETBENCH_CHECK(centers.device() == heatmaps.device(), op, "centers must be on the same device as heatmaps (",
                 heatmaps.device(), "), got ", centers.device());
}

void check_like_centers(const char* op, const char* arg, const at::Tensor& t, const at::Tensor& centers,
                        const char* shape, bool shape_ok) {
  DETBENCH_CHECK(shape_ok, op, arg, " must have shape ", shape, ", got ", t.sym_sizes());
  DETBENCH_CHECK(t.scalar_type() == centers.scalar_type(), op, arg, " must have the same dtype as centers (",
                 centers.scalar_type(), "), got ", t.scalar_type());
  DETBENCH_CHECK(t.device() == centers.device(), op, arg, " must be on the same device as heatmaps (",
                 centers.device(), "), got ", t.device());
}

void check_k(const char* op, double k) {
  DETBENCH_CHECK(std::isfinite(k), op, "k must be finite, got ", k);
}

}  // namespace

void draw_heatmap_check(const at::Tensor& heatmaps, const at::Tensor& centers, const at::Tensor& radii,
                        const at::Tensor& heatmap_index, double k) {
  constexpr const char* op = "draw_heatmap";
  check_heatmaps(op, heatmaps, "[M, H, W]", heatmaps.dim() == 3);
  check_centers(op, heatmaps, centers, "[T, 2]", centers.dim() == 2 && centers.sym_size(1) == 2);
  const c10::SymInt T = centers.sym_size(0);
  check_like_centers(op, "radii", radii, centers, "[T] (T = the number of centers)",
                     radii.dim() == 1 && radii.sym_size(0) == T);
  check_like_centers(op, "heatmap_index", heatmap_index, centers, "[T] (T = the number of centers)",
                     heatmap_index.dim() == 1 && heatmap_index.sym_size(0) == T);
  check_k(op, k);
}

void draw_heatmap_batched_check(const at::Tensor& heatmaps, const at::Tensor& centers, const at::Tensor& radii,
                                const at::Tensor& counts, const at::Tensor* labels, double k) {
  constexpr const char* op = "draw_heatmap_batched";
  if (labels == nullptr) {
    check_heatmaps(op, heatmaps, "[B, H, W] (or [B, C, H, W] with labels)", heatmaps.dim() == 3);
  } else {
    check_heatmaps(op, heatmaps, "[B, C, H, W] when labels are given", heatmaps.dim() == 4);
  }
  const c10::SymInt B = heatmaps.sym_size(0);
  check_centers(op, heatmaps, centers, "[B, T, 2] (B = heatmaps.shape[0])",
                centers.dim() == 3 && centers.sym_size(0) == B && centers.sym_size(2) == 2);
  const c10::SymInt T = centers.sym_size(1);
  check_like_centers(op, "radii", radii, centers, "[B, T] (as centers)",
                     radii.dim() == 2 && radii.sym_size(0) == B && radii.sym_size(1) == T);
  check_like_centers(op, "counts", counts, centers, "[B] (B = heatmaps.shape[0])",
                     counts.dim() == 1 && counts.sym_size(0) == B);
  if (labels != nullptr) {
    check_like_centers(op, "labels", *labels, centers, "[B, T] (as centers)",
                       labels->dim() == 2 && labels->sym_size(0) == B && labels->sym_size(1) == T);
  }
  check_k(op, k);
}

void gaussian_radius_check(const at::Tensor& heights, const at::Tensor& widths, double min_overlap) {
  constexpr const char* op = "gaussian_radius";
  const auto dtype = heights.scalar_type();
  DETBENCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op, "heights must be float32 or float64, got ", dtype);
  DETBENCH_CHECK(widths.scalar_type() == dtype, op, "widths must have the same dtype as heights (", dtype, "), got ",
                 widths.scalar_type());
  DETBENCH_CHECK(widths.sym_sizes() == heights.sym_sizes(), op, "widths must have the same shape as heights (",
                 heights.sym_sizes(), "), got ", widths.sym_sizes());
  DETBENCH_CHECK(widths.device() == heights.device(), op, "widths must be on the same device as heights (",
                 heights.device(), "), got ", widths.device());
  DETBENCH_CHECK(min_overlap > 0 && min_overlap < 1, op, "min_overlap must be in (0, 1), got ", min_overlap);
}

namespace {

template <typename idx_t>
void check_values_impl(const char* op, const at::Tensor& centers_t, const at::Tensor& radii_t,
                       const at::Tensor* index_t, const at::Tensor* counts_t, int64_t H, int64_t W, int64_t planes) {
  const bool batched = counts_t != nullptr;
  const int64_t B = batched ? counts_t->size(0) : 1;
  const int64_t T = batched ? centers_t.size(1) : centers_t.size(0);
  const idx_t* centers = centers_t.const_data_ptr<idx_t>();
  const idx_t* radii = radii_t.const_data_ptr<idx_t>();
  const idx_t* index = index_t ? index_t->const_data_ptr<idx_t>() : nullptr;
  const char* index_name = batched ? "labels" : "heatmap_index";
  for (int64_t b = 0; b < B; ++b) {
    int64_t count = T;
    if (batched) {
      count = counts_t->const_data_ptr<idx_t>()[b];
      DETBENCH_CHECK(count >= 0 && count <= T, op, "counts[", b, "] must be in [0, T] with T = ", T,
                     " (centers.shape[1]), got ", count);
    }
    for (int64_t t = 0; t < count; ++t) {
      const int64_t i = b * T + t;
      // "[b, t]" for the batched op, "[t]" for the flat one.
      const std::string at = batched ? "[" + std::to_string(b) + ", " + std::to_string(t) + "]"
                                     : "[" + std::to_string(t) + "]";
      const int64_t x = centers[2 * i], y = centers[2 * i + 1];
      DETBENCH_CHECK(x >= 0 && x < W && y >= 0 && y < H, op, "centers", at, " = (x=", x, ", y=", y,
                     ") is outside the ", H, "x", W, " heatmap (x must be in [0, ", W, "), y in [0, ", H, "))");
      DETBENCH_CHECK(radii[i] >= 0, op, "radii", at, " must be >= 0, got ", int64_t(radii[i]));
      if (index != nullptr) {
        DETBENCH_CHECK(index[i] >= 0 && index[i] < planes, op, index_name, at, " must be in [0, ", planes,
                       "), got ", int64_t(index[i]));
      }
    }
  }
}

}  // namespace

void draw_heatmap_check_values(const char* op, const at::Tensor& centers, const at::Tensor& radii,
                               const at::Tensor* index, const at::Tensor* counts, int64_t H, int64_t W,
                               int64_t planes) {
  AT_DISPATCH_INDEX_TYPES(centers.scalar_type(), "detbench.draw_heatmap_check_values", [&] {
    check_values_impl<index_t>(op, centers, radii, index, counts, H, W, planes);
  });
}

namespace {

void draw_heatmap_meta(const at::Tensor& heatmaps, const at::Tensor& centers, const at::Tensor& radii,
                       const at::Tensor& heatmap_index, double k) {
  draw_heatmap_check(heatmaps, centers, radii, heatmap_index, k);
}

void draw_heatmap_batched_meta(const at::Tensor& heatmaps, const at::Tensor& centers, const at::Tensor& radii,
                               const at::Tensor& counts, const std::optional<at::Tensor>& labels, double k) {
  draw_heatmap_batched_check(heatmaps, centers, radii, counts, labels.has_value() ? &*labels : nullptr, k);
}

at::Tensor gaussian_radius_meta(const at::Tensor& heights, const at::Tensor& widths, double min_overlap) {
  gaussian_radius_check(heights, widths, min_overlap);
  return at::empty_symint(heights.sym_sizes(), heights.options());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detbench, m) {
  m.def("draw_heatmap(Tensor(a!) heatmaps, Tensor centers, Tensor radii, Tensor heatmap_index, float k=1.0) -> ()",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "draw_heatmap_batched(Tensor(a!) heatmaps, Tensor centers, Tensor radii, Tensor counts, Tensor? labels=None, "
      "float k=1.0) -> ()",
      {at::Tag::pt2_compliant_tag});
  m.def("gaussian_radius(Tensor heights, Tensor widths, float min_overlap=0.7) -> Tensor",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(detbench, Meta, m) {
  m.impl("draw_heatmap", &draw_heatmap_meta);
  m.impl("draw_heatmap_batched", &draw_heatmap_batched_meta);
  m.impl("gaussian_radius", &gaussian_radius_meta);
}

}  // namespace detbench
