// Schemas, argument checks and Meta kernels of detbench.roi_align, multiscale_roi_align and
// their backward ops (_roi_align_backward, _multiscale_roi_align_backward; autograd is wired
// up in ops/roi_align.py through torch.library.register_autograd).
#include "ops/roi_align/roi_align.h"

#include <cmath>
#include <string>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "detbench.h"

namespace detbench {

namespace {

bool is_float_dtype(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble;
}

// "input" for roi_align, "features[i]" for multiscale_roi_align.
std::string level_name(const RoiPoolParams& p, size_t level) {
  return p.map_levels ? "features[" + std::to_string(level) + "]" : std::string("input");
}

void check_common(const RoiPoolParams& p, const at::Tensor& rois, at::ScalarType dtype, at::Device device,
                  size_t num_levels) {
  const char* op = p.op;
  DETBENCH_CHECK(rois.dim() == 2 && rois.sym_size(1) == 5, op, "rois must have shape [K, 5], got ", rois.sym_sizes());
  DETBENCH_CHECK(rois.scalar_type() == dtype, op, "rois must have the same dtype as the features (", dtype, "), got ",
                 rois.scalar_type());
  DETBENCH_CHECK(rois.device() == device, op, "rois must be on the same device as the features (", device, "), got ",
                 rois.device());
  DETBENCH_CHECK(p.pooled_height > 0 && p.pooled_width > 0, op, "output_size must be positive, got (",
                 p.pooled_height, ", ", p.pooled_width, ")");
  // Geometry is computed in int: keep the sample counts in range.
  DETBENCH_CHECK(p.pooled_height <= (1 << 16) && p.pooled_width <= (1 << 16), op,
                 "output_size must be at most 65536 per side, got (", p.pooled_height, ", ", p.pooled_width, ")");
  DETBENCH_CHECK(p.sampling_ratio <= 4096, op, "sampling_ratio must be <= 4096, got ", p.sampling_ratio);
  DETBENCH_CHECK(p.scales.size() == num_levels, op, "scales must have one entry per feature level (", num_levels,
                 "), got ", p.scales.size());
  for (size_t l = 0; l < p.scales.size(); ++l) {
    DETBENCH_CHECK(std::isfinite(p.scales[l]), op,
                   p.map_levels ? "scales[" + std::to_string(l) + "]" : std::string("spatial_scale"),
                   " must be finite, got ", p.scales[l]);
  }
  if (p.map_levels) {
    DETBENCH_CHECK(p.k_min <= p.k_max, op, "k_min must be <= k_max, got ", p.k_min, " and ", p.k_max);
    DETBENCH_CHECK(std::isfinite(p.canonical_scale) && p.canonical_scale > 0, op,
                   "canonical_scale must be positive, got ", p.canonical_scale);
    DETBENCH_CHECK(std::isfinite(p.canonical_level), op, "canonical_level must be finite, got ", p.canonical_level);
  }
}

}  // namespace

RoiPoolParams roi_align_params(double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                               int64_t sampling_ratio, bool aligned) {
  return {"roi_align", pooled_height, pooled_width, sampling_ratio, aligned, {spatial_scale}, false, 0, 0, 0.0, 0.0};
}

RoiPoolParams multiscale_roi_align_params(at::ArrayRef<double> scales, int64_t pooled_height, int64_t pooled_width,
                                          int64_t sampling_ratio, bool aligned, int64_t k_min, int64_t k_max,
                                          double canonical_scale, double canonical_level) {
  return {"multiscale_roi_align",
          pooled_height,
          pooled_width,
          sampling_ratio,
          aligned,
          scales.vec(),
          true,
          k_min,
          k_max,
          canonical_scale,
          canonical_level};
}

bool roi_align_channels_last(const at::Tensor& features0) {
  return features0.is_contiguous(at::MemoryFormat::ChannelsLast) && !features0.is_contiguous();
}

at::Tensor roi_align_check_and_allocate(const RoiPoolParams& p, at::TensorList features, const at::Tensor& rois) {
  const char* op = p.op;
  DETBENCH_CHECK(!features.empty() && features.size() <= size_t(kMaxLevels), op, "features must hold 1 to ",
                 kMaxLevels, " levels, got ", features.size());
  const at::Tensor& first = features[0];
  for (size_t l = 0; l < features.size(); ++l) {
    const at::Tensor& f = features[l];
    const std::string name = level_name(p, l);
    DETBENCH_CHECK(f.dim() == 4, op, name, " must have shape [N, C, H, W], got ", f.sym_sizes());
    // Kernels index a plane with 32-bit offsets.
    DETBENCH_CHECK(f.sym_size(2) * f.sym_size(3) < (int64_t(1) << 31), op, name,
                   " must have fewer than 2^31 pixels per channel, got ", f.sym_size(2), " x ", f.sym_size(3));
    DETBENCH_CHECK(is_float_dtype(f.scalar_type()), op, name, " must be float16, bfloat16, float32 or float64, got ",
                   f.scalar_type());
    if (l > 0) {
      DETBENCH_CHECK(f.scalar_type() == first.scalar_type(), op, name, " must have the same dtype as features[0] (",
                     first.scalar_type(), "), got ", f.scalar_type());
      DETBENCH_CHECK(f.device() == first.device(), op, name, " must be on the same device as features[0] (",
                     first.device(), "), got ", f.device());
      DETBENCH_CHECK(f.sym_size(0) == first.sym_size(0) && f.sym_size(1) == first.sym_size(1), op, name,
                     " must have the batch size and channels of features[0] (", first.sym_size(0), ", ",
                     first.sym_size(1), "), got shape ", f.sym_sizes());
    }
  }
  check_common(p, rois, first.scalar_type(), first.device(), features.size());
  const auto format = roi_align_channels_last(first) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return at::empty_symint({rois.sym_size(0), first.sym_size(1), c10::SymInt(p.pooled_height),
                           c10::SymInt(p.pooled_width)},
                          first.options().memory_format(format));
}

std::vector<at::Tensor> roi_align_backward_check_and_allocate(const RoiPoolParams& p, const at::Tensor& grad,
                                                              const at::Tensor& rois, c10::SymInt batch,
                                                              c10::SymInt channels, c10::SymIntArrayRef heights,
                                                              c10::SymIntArrayRef widths, bool channels_last) {
  const char* op = p.op;
  DETBENCH_CHECK(is_float_dtype(grad.scalar_type()), op, "grad must be float16, bfloat16, float32 or float64, got ",
                 grad.scalar_type());
  DETBENCH_CHECK(heights.size() == widths.size() && !heights.empty() && heights.size() <= size_t(kMaxLevels), op,
                 "heights and widths must hold 1 to ", kMaxLevels, " levels each, got ", heights.size(), " and ",
                 widths.size());
  check_common(p, rois, grad.scalar_type(), grad.device(), heights.size());
  DETBENCH_CHECK(grad.dim() == 4 && grad.sym_size(0) == rois.sym_size(0) && grad.sym_size(1) == channels &&
                     grad.sym_size(2) == p.pooled_height && grad.sym_size(3) == p.pooled_width,
                 op, "grad must have shape [K, C, PH, PW] = [", rois.sym_size(0), ", ", channels, ", ",
                 p.pooled_height, ", ", p.pooled_width, "], got ", grad.sym_sizes());
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  std::vector<at::Tensor> grads;
  for (size_t l = 0; l < heights.size(); ++l) {
    DETBENCH_CHECK(heights[l] * widths[l] < (int64_t(1) << 31), op, "level ", l,
                   " must have fewer than 2^31 pixels per channel, got ", heights[l], " x ", widths[l]);
    grads.push_back(at::empty_symint({batch, channels, heights[l], widths[l]}, grad.options().memory_format(format)));
  }
  return grads;
}

void roi_align_check_roi_values(const char* op, const at::Tensor& rois_cpu, int64_t batch) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rois_cpu.scalar_type(), "detbench.roi_align_check", [&] {
    const scalar_t* r = rois_cpu.const_data_ptr<scalar_t>();
    for (int64_t k = 0; k < rois_cpu.size(0); ++k) {
      const double b = static_cast<double>(r[5 * k]);
      DETBENCH_CHECK(batch_index_ok(b, batch), op, "rois[", k, ", 0] (the batch index) must be an integer in [0, ",
                     batch, "), got ", b);
      for (int i = 1; i < 5; ++i) {
        DETBENCH_CHECK(std::isfinite(static_cast<double>(r[5 * k + i])), op, "rois[", k,
                       "] has a non-finite coordinate (NaN or inf)");
      }
    }
  });
}

namespace {

at::Tensor roi_align_meta(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                          int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  return roi_align_check_and_allocate(roi_align_params(spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned),
                                      {input}, rois);
}

at::Tensor roi_align_backward_meta(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                   c10::SymInt batch, c10::SymInt channels, c10::SymInt height, c10::SymInt width,
                                   bool channels_last, bool /*deterministic*/) {
  const c10::SymInt heights[] = {height};
  const c10::SymInt widths[] = {width};
  return roi_align_backward_check_and_allocate(
      roi_align_params(spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned), grad, rois, batch,
      channels, heights, widths, channels_last)[0];
}

at::Tensor multiscale_roi_align_meta(at::TensorList features, const at::Tensor& rois, at::ArrayRef<double> scales,
                                     int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                     int64_t k_min, int64_t k_max, double canonical_scale, double canonical_level) {
  return roi_align_check_and_allocate(
      multiscale_roi_align_params(scales, pooled_height, pooled_width, sampling_ratio, aligned, k_min, k_max,
                                  canonical_scale, canonical_level),
      features, rois);
}

std::vector<at::Tensor> multiscale_roi_align_backward_meta(
    const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> scales, int64_t pooled_height,
    int64_t pooled_width, int64_t sampling_ratio, bool aligned, int64_t k_min, int64_t k_max, double canonical_scale,
    double canonical_level, c10::SymInt batch, c10::SymInt channels, c10::SymIntArrayRef heights,
    c10::SymIntArrayRef widths, bool channels_last, bool /*deterministic*/) {
  return roi_align_backward_check_and_allocate(
      multiscale_roi_align_params(scales, pooled_height, pooled_width, sampling_ratio, aligned, k_min, k_max,
                                  canonical_scale, canonical_level),
      grad, rois, batch, channels, heights, widths, channels_last);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detbench, m) {
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned, SymInt batch, SymInt channels, SymInt height, SymInt width, "
      "bool channels_last, bool deterministic) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "multiscale_roi_align(Tensor[] features, Tensor rois, float[] scales, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned, int k_min, int k_max, float canonical_scale, float canonical_level) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "_multiscale_roi_align_backward(Tensor grad, Tensor rois, float[] scales, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned, int k_min, int k_max, float canonical_scale, float canonical_level, "
      "SymInt batch, SymInt channels, SymInt[] heights, SymInt[] widths, bool channels_last, bool deterministic) "
      "-> Tensor[]",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(detbench, Meta, m) {
  m.impl("roi_align", &roi_align_meta);
  m.impl("_roi_align_backward", &roi_align_backward_meta);
  m.impl("multiscale_roi_align", &multiscale_roi_align_meta);
  m.impl("_multiscale_roi_align_backward", &multiscale_roi_align_backward_meta);
}

}  // namespace detbench
