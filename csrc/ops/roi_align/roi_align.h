// detbench.roi_align and detbench.multiscale_roi_align: pieces shared by their kernels.
//
// Both ops run one core: RoIs pooled from a list of feature levels. roi_align is the core with
// one level and every RoI on it; multiscale_roi_align assigns each RoI its level with
// torchvision's LevelMapper (FPN) inside the kernel.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "ops/roi_align/geometry.h"

namespace detbench {

// Everything a kernel needs besides the tensors.
struct RoiPoolParams {
  const char* op;  // "roi_align" or "multiscale_roi_align", for error messages
  int64_t pooled_height;
  int64_t pooled_width;
  int64_t sampling_ratio;
  bool aligned;
  std::vector<double> scales;  // spatial scale of each level
  bool map_levels;             // false: every RoI on level 0
  int64_t k_min, k_max;        // LevelMapper's clamp range (map_levels only)
  double canonical_scale, canonical_level;
};

RoiPoolParams roi_align_params(double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                              int64_t sampling_ratio, bool aligned);
RoiPoolParams multiscale_roi_align_params(at::ArrayRef<double> scales, int64_t pooled_height, int64_t pooled_width,
                                          int64_t sampling_ratio, bool aligned, int64_t k_min, int64_t k_max,
                                          double canonical_scale, double canonical_level);

// Checks every argument of the forward ops (metadata only, never a sync) and returns the
// uninitialized output [K, C, PH, PW], channels-last when the features are (see
// roi_align_channels_last). Written with symbolic sizes: also the ops' Meta kernel.
at::Tensor roi_align_check_and_allocate(const RoiPoolParams& p, at::TensorList features, const at::Tensor& rois);

// Checks the backward ops' arguments and returns the gradient of each level, uninitialized,
// with shape [N, C, heights[l], widths[l]] and the features' memory format.
std::vector<at::Tensor> roi_align_backward_check_and_allocate(const RoiPoolParams& p, const at::Tensor& grad,
                                                              const at::Tensor& rois, c10::SymInt batch,
                                                              c10::SymInt channels, c10::SymIntArrayRef heights,
                                                              c10::SymIntArrayRef widths, bool channels_last);

// The kernels' layout: channels-last (NHWC) when the first level is channels-last contiguous and
// not also NCHW-contiguous (C == 1 or H == W == 1 tensors are both: they count as NCHW).
bool roi_align_channels_last(const at::Tensor& features0);

// CPU RoIs (contiguous, any float dtype): raises the op's error for the first RoI whose batch
// index is not an integer in [0, batch) or that has a non-finite coordinate.
void roi_align_check_roi_values(const char* op, const at::Tensor& rois_cpu, int64_t batch);

// The kernels' PoolConfig for levels of the given sizes (in op-math type T).
template <typename T>
PoolConfig<T> make_pool_config(const RoiPoolParams& p, int64_t batch, int64_t channels, at::IntArrayRef heights,
                               at::IntArrayRef widths) {
  PoolConfig<T> cfg{};
  cfg.num_levels = int(heights.size());
  for (size_t l = 0; l < heights.size(); ++l) {
    cfg.height[l] = int(heights[l]);
    cfg.width[l] = int(widths[l]);
    cfg.scale[l] = T(p.scales[l]);
  }
  cfg.batch = batch;
  cfg.channels = channels;
  cfg.pooled_height = int(p.pooled_height);
  cfg.pooled_width = int(p.pooled_width);
  cfg.sampling_ratio = int(p.sampling_ratio);
  cfg.aligned = p.aligned;
  cfg.map_levels = p.map_levels;
  cfg.k_min = int(p.k_min);
  cfg.k_max = int(p.k_max);
  cfg.canonical_scale = T(p.canonical_scale);
  cfg.canonical_level = T(p.canonical_level);
  return cfg;
}

}  // namespace detbench
