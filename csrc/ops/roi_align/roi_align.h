// detbench.roi_align / detbench.multiscale_roi_align and their backwards: pieces shared by
// the kernels. The single-scale op is the multi-scale one with one level and no level mapping,
// so every kernel serves both.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace detbench {

// Everything a kernel needs, checked and prepared by roi_align_prepare.
struct RoiAlignProblem {
  const char* op;                    // "roi_align" or "multiscale_roi_align", for errors
  std::vector<at::Tensor> features;  // per level [N, C, H, W], all contiguous in `channels_last` or NCHW
  at::Tensor rois;                   // [K, 5] contiguous, in the features' opmath type (float, or double)
  std::vector<double> scales;        // per level
  int64_t pooled_h, pooled_w, sampling_ratio;
  bool aligned;
  bool map_levels;  // multiscale: the level of each RoI from LevelMapper; else level 0
  int64_t k_min, k_max, canonical_level;
  double canonical_scale;
  bool channels_last;
  int64_t N, C, K;
};

// Argument checks (metadata only) shared by every kernel and the Meta kernels.
void roi_align_check(const char* op, at::TensorList features, const at::Tensor& rois, at::ArrayRef<double> scales,
                     int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio);

// Whether the kernels read these features as channels-last (every level channels-last and not
// also NCHW-contiguous); the output and the gradients then are channels-last too.
bool roi_align_channels_last(at::TensorList features);

// Output [K, C, PH, PW] (channels-last memory format where the features are), uninitialized.
at::Tensor roi_align_allocate_output(at::TensorList features, const at::Tensor& rois, int64_t pooled_h,
                                     int64_t pooled_w);

// Checks, then contiguous features and float rois. With check_values (always on the CPU; on CUDA
// in validation mode, a sync) raises for a RoI whose batch index is not an integer in [0, N) or
// whose box is not finite.
RoiAlignProblem roi_align_prepare(const char* op, at::TensorList features, const at::Tensor& rois,
                                  at::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                                  int64_t sampling_ratio, bool aligned, bool map_levels, int64_t k_min,
                                  int64_t k_max, double canonical_scale, int64_t canonical_level, bool check_values);

// grad [K, C, PH, PW]: checked against the problem and made contiguous in its layout.
at::Tensor roi_align_prepare_grad(const RoiAlignProblem& p, const at::Tensor& grad);

}  // namespace detbench
