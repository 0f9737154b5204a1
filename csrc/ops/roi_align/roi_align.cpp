// Schemas, argument checks and Meta kernels of detbench.roi_align, detbench.multiscale_roi_align
// and their backwards.
#include "ops/roi_align/roi_align.h"

#include <cmath>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/roi_align/roi_math.h"

namespace detbench {

void roi_align_check(const char* op, at::TensorList features, const at::Tensor& rois, at::ArrayRef<double> scales,
                     int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio) {
  DETBENCH_CHECK(!features.empty(), op, "features must hold at least one level");
  DETBENCH_CHECK(features.size() <= size_t(roi::kMaxLevels), op, "at most ", roi::kMaxLevels,
                 " feature levels are supported, got ", features.size());
  DETBENCH_CHECK(scales.size() == features.size(), op, "spatial scales must have one value per level (",
                 features.size(), "), got ", scales.size());
  const char* arg = features.size() == 1 && std::string(op) == "roi_align" ? "input" : "features";
  const at::Tensor& f0 = features[0];
  for (size_t l = 0; l < features.size(); ++l) {
    const at::Tensor& f = features[l];
    DETBENCH_CHECK(f.dim() == 4, op, arg, " must have shape [N, C, H, W], got ", f.sym_sizes(),
                   features.size() > 1 ? " at level " + std::to_string(l) : std::string());
    const auto dtype = f.scalar_type();
    DETBENCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble, op,
                   arg, " must be float16, bfloat16, float32 or float64, got ", dtype);
    if (l > 0) {
      DETBENCH_CHECK(dtype == f0.scalar_type(), op, "every level must have the dtype of level 0 (", f0.scalar_type(),
                     "), got ", dtype, " at level ", l);
      DETBENCH_CHECK(f.device() == f0.device(), op, "every level must be on the device of level 0 (", f0.device(),
                     "), got ", f.device(), " at level ", l);
      DETBENCH_CHECK(f.sym_size(0) == f0.sym_size(0) && f.sym_size(1) == f0.sym_size(1), op,
                     "every level must have the batch size and channels of level 0 (", f0.sym_sizes(), "), got ",
                     f.sym_sizes(), " at level ", l);
    }
    DETBENCH_CHECK(std::isfinite(scales[l]) && scales[l] > 0, op, "spatial_scale must be positive and finite, got ",
                   scales[l]);
  }
  DETBENCH_CHECK(rois.dim() == 2 && rois.sym_size(1) == 5, op, "rois must have shape [K, 5], got ", rois.sym_sizes());
  DETBENCH_CHECK(at::isFloatingType(rois.scalar_type()), op, "rois must be a floating-point tensor, got ",
                 rois.scalar_type());
  DETBENCH_CHECK(rois.device() == f0.device(), op, "rois must be on the same device as ", arg, " (", f0.device(),
                 "), got ", rois.device());
  DETBENCH_CHECK(pooled_h > 0 && pooled_w > 0, op, "output_size must be positive, got (", pooled_h, ", ", pooled_w,
                 ")");
  DETBENCH_CHECK(pooled_h <= 1024 && pooled_w <= 1024, op, "output_size must be at most 1024, got (", pooled_h, ", ",
                 pooled_w, ")");
  // <= 0 is adaptive (capped at kMaxGrid); an explicit ratio has the same bound, so that a bin's
  // sample count fits an int and its float sum does not stall
  DETBENCH_CHECK(sampling_ratio <= roi::kMaxGrid, op, "sampling_ratio must be at most ", roi::kMaxGrid,
                 " (samples per bin along each axis; <= 0: adaptive), got ", sampling_ratio);
}

bool roi_align_channels_last(at::TensorList features) {
  for (const at::Tensor& f : features) {
    if (f.is_contiguous() || !f.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      return false;
    }
  }
  return true;
}

at::Tensor roi_align_allocate_output(at::TensorList features, const at::Tensor& rois, int64_t pooled_h,
                                     int64_t pooled_w) {
  const at::Tensor& f0 = features[0];
  const auto format = roi_align_channels_last(features) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return at::empty_symint({rois.sym_size(0), f0.sym_size(1), c10::SymInt(pooled_h), c10::SymInt(pooled_w)},
                          f0.options().memory_format(format));
}

namespace {

// The first RoI whose batch index is not an integer in [0, N) or whose box is not finite, raised.
void check_roi_values(const char* op, const at::Tensor& rois, int64_t N) {
  if (rois.size(0) == 0) {
    return;
  }
  const at::Tensor b = rois.select(1, 0);
  const at::Tensor bad_batch = (b < 0).logical_or(b >= double(N)).logical_or(b != b.floor());
  const at::Tensor bad_box = at::isfinite(rois.narrow(1, 1, 4)).all(1).logical_not();
  const at::Tensor bad = bad_batch.logical_or(bad_box).nonzero();
  if (bad.size(0) == 0) {
    return;
  }
  const int64_t k = bad[0][0].item<int64_t>();
  const at::Tensor row = rois[k].to(at::kCPU, at::kDouble);
  const double* r = row.const_data_ptr<double>();
  DETBENCH_CHECK(!bad_batch[k].item<bool>(), op, "rois[", k, ", 0] (the batch index) must be an integer in [0, ", N,
                 "), got ", r[0]);
  TORCH_CHECK(false, "detbench.", op, ": rois[", k, "] has a non-finite coordinate: (", r[1], ", ", r[2], ", ", r[3],
              ", ", r[4], ")");
}

}  // namespace

RoiAlignProblem roi_align_prepare(const char* op, at::TensorList features, const at::Tensor& rois,
                                  at::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                                  int64_t sampling_ratio, bool aligned, bool map_levels, int64_t k_min,
                                  int64_t k_max, double canonical_scale, int64_t canonical_level, bool check_values) {
  roi_align_check(op, features, rois, scales, pooled_h, pooled_w, sampling_ratio);
  RoiAlignProblem p;
  p.op = op;
  p.channels_last = roi_align_channels_last(features);
  const auto format = p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  for (const at::Tensor& f : features) {
    DETBENCH_CHECK(f.size(2) * f.size(3) < (int64_t(1) << 31) && f.numel() < (int64_t(1) << 62),
                   op, "feature maps this large are not supported, got ", f.sizes());
    p.features.push_back(f.contiguous(format));
  }
  const auto math = features[0].scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  p.rois = rois.to(math).contiguous();
  p.scales.assign(scales.begin(), scales.end());
  p.pooled_h = pooled_h;
  p.pooled_w = pooled_w;
  p.sampling_ratio = sampling_ratio;
  p.aligned = aligned;
  p.map_levels = map_levels;
  p.k_min = k_min;
  p.k_max = k_max;
  p.canonical_scale = canonical_scale;
  p.canonical_level = canonical_level;
  p.N = features[0].size(0);
  p.C = features[0].size(1);
  p.K = rois.size(0);
  DETBENCH_CHECK(p.N < (int64_t(1) << 30), op, "batch size must be below 2^30, got ", p.N);
  if (check_values) {
    check_roi_values(op, p.rois, p.N);
  }
  return p;
}

at::Tensor roi_align_prepare_grad(const RoiAlignProblem& p, const at::Tensor& grad) {
  DETBENCH_CHECK(grad.dim() == 4 && grad.size(0) == p.K && grad.size(1) == p.C && grad.size(2) == p.pooled_h &&
                     grad.size(3) == p.pooled_w,
                 p.op, "grad must have shape [", p.K, ", ", p.C, ", ", p.pooled_h, ", ", p.pooled_w, "], got ",
                 grad.sizes());
  DETBENCH_CHECK(grad.scalar_type() == p.features[0].scalar_type(), p.op, "grad must have the dtype of the features (",
                 p.features[0].scalar_type(), "), got ", grad.scalar_type());
  DETBENCH_CHECK(grad.device() == p.features[0].device(), p.op, "grad must be on the device of the features (",
                 p.features[0].device(), "), got ", grad.device());
  return grad.contiguous(p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

namespace {

at::Tensor forward_meta(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                        int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  roi_align_check("roi_align", {input}, rois, {spatial_scale}, pooled_h, pooled_w, sampling_ratio);
  return roi_align_allocate_output({input}, rois, pooled_h, pooled_w);
}

at::Tensor backward_meta(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
                         double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                         bool aligned) {
  roi_align_check("roi_align", {input}, rois, {spatial_scale}, pooled_h, pooled_w, sampling_ratio);
  const auto format = roi_align_channels_last({input}) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return at::empty_symint(input.sym_sizes(), input.options().memory_format(format));
}

at::Tensor ms_forward_meta(at::TensorList features, const at::Tensor& rois, at::ArrayRef<double> scales,
                           int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned, int64_t k_min,
                           int64_t k_max, double canonical_scale, int64_t canonical_level) {
  roi_align_check("multiscale_roi_align", features, rois, scales, pooled_h, pooled_w, sampling_ratio);
  return roi_align_allocate_output(features, rois, pooled_h, pooled_w);
}

std::vector<at::Tensor> ms_backward_meta(const at::Tensor& grad, at::TensorList features, const at::Tensor& rois,
                                         at::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                                         int64_t sampling_ratio, bool aligned, int64_t k_min, int64_t k_max,
                                         double canonical_scale, int64_t canonical_level) {
  roi_align_check("multiscale_roi_align", features, rois, scales, pooled_h, pooled_w, sampling_ratio);
  const auto format = roi_align_channels_last(features) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  std::vector<at::Tensor> out;
  for (const at::Tensor& f : features) {
    out.push_back(at::empty_symint(f.sym_sizes(), f.options().memory_format(format)));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detbench, m) {
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "roi_align_backward(Tensor grad, Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width, int sampling_ratio, bool aligned) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "multiscale_roi_align(Tensor[] features, Tensor rois, float[] scales, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned, int k_min, int k_max, float canonical_scale, int canonical_level) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "multiscale_roi_align_backward(Tensor grad, Tensor[] features, Tensor rois, float[] scales, int pooled_height, "
      "int pooled_width, int sampling_ratio, bool aligned, int k_min, int k_max, float canonical_scale, "
      "int canonical_level) -> Tensor[]",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(detbench, Meta, m) {
  m.impl("roi_align", &forward_meta);
  m.impl("roi_align_backward", &backward_meta);
  m.impl("multiscale_roi_align", &ms_forward_meta);
  m.impl("multiscale_roi_align_backward", &ms_backward_meta);
}

}  // namespace detbench
