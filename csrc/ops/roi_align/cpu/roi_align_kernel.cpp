// CPU kernels of detbench.roi_align and multiscale_roi_align, forward and backward.
//
// Layout NCHW (channels-last inputs are made NCHW first; outputs and gradients are returned in
// the input's memory format). Each RoI's samples (corner offsets and weights) are resolved once
// and then applied to kLanes channels at a time, so the offsets and weights load once per
// kLanes channels and the channels' sums are independent chains. Forward runs RoIs in parallel;
// backward runs (image, channel block) tasks in parallel, each adding its image's RoIs in
// ascending order: deterministic, no atomics.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/roi_align/roi_align.h"

namespace detbench {

namespace {

constexpr int64_t kTaskChannels = 16;  // channels per backward task
constexpr int kLanes = 8;              // channels sampled together (they share offsets and weights)

// One bilinear sample of a RoI, resolved once and used for every channel: the four corners'
// offsets in a plane and their weights (torchvision's w1..w4 products).
template <typename T>
struct Sample {
  int32_t o1, o2, o3, o4;
  T w1, w2, w3, w4;
};

// The valid samples of every bin of a RoI, bin-major (bin_start[b] .. bin_start[b + 1]).
template <typename T>
struct RoiSamples {
  std::vector<Sample<T>> samples;
  std::vector<int32_t> bin_start;
  std::vector<AxisSample<T>> xs;

  void build(const RoiGeometry<T>& g, int ph_count, int pw_count, int height, int width) {
    samples.clear();
    bin_start.assign(1, 0);
    xs.resize(size_t(g.grid_w));
    for (int ph = 0; ph < ph_count; ++ph) {
      for (int pw = 0; pw < pw_count; ++pw) {
        for (int ix = 0; ix < g.grid_w; ++ix) {
          xs[ix] = axis_sample(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), width);
        }
        for (int iy = 0; iy < g.grid_h; ++iy) {
          const AxisSample<T> y = axis_sample(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), height);
          if (!y.valid) {
            continue;
          }
          for (int ix = 0; ix < g.grid_w; ++ix) {
            const AxisSample<T>& x = xs[ix];
            if (x.valid) {
              samples.push_back({y.low * width + x.low, y.low * width + x.high, y.high * width + x.low,
                                 y.high * width + x.high, y.w_low * x.w_low, y.w_low * x.w_high,
                                 y.w_high * x.w_low, y.w_high * x.w_high});
            }
          }
        }
        bin_start.push_back(int32_t(samples.size()));
      }
    }
  }
};

// Pools `lanes` (<= kLanes) channels of one RoI; planes are plane_size apart. The sum over a
// bin's samples runs in torchvision's order.
template <typename scalar_t, typename T>
void pool_channels(const RoiSamples<T>& s, const scalar_t* plane, int64_t plane_size, int lanes, int bins,
                   T inv_count, scalar_t* out) {
  for (int b = 0; b < bins; ++b) {
    T acc[kLanes] = {};
    for (int32_t i = s.bin_start[b]; i < s.bin_start[b + 1]; ++i) {
      const Sample<T>& q = s.samples[i];
      for (int l = 0; l < kLanes; ++l) {  // fixed trip count: unrolled; extra lanes masked below
        const scalar_t* p = plane + (l < lanes ? l : 0) * plane_size;
        acc[l] += q.w1 * T(p[q.o1]) + q.w2 * T(p[q.o2]) + q.w3 * T(p[q.o3]) + q.w4 * T(p[q.o4]);
      }
    }
    for (int l = 0; l < lanes; ++l) {
      out[l * int64_t(bins) + b] = scalar_t(acc[l] * inv_count);
    }
  }
}

template <typename scalar_t>
void forward_impl(const PoolConfig<at::opmath_type<scalar_t>>& cfg, const std::vector<at::Tensor>& levels,
                  const at::Tensor& rois, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t K = rois.size(0), C = cfg.channels;
  const int PH = cfg.pooled_height, PW = cfg.pooled_width, bins = PH * PW;
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  std::vector<const scalar_t*> data;
  for (const auto& l : levels) {
    data.push_back(l.const_data_ptr<scalar_t>());
  }
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const int64_t per_roi = C * bins;
  at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
    RoiSamples<T> s;
    for (int64_t k = begin; k < end; ++k) {
      scalar_t* out_k = o + k * per_roi;
      int level = 0;
      int64_t n = 0;
      RoiGeometry<T> g;
      if (!resolve_roi(cfg, r + 5 * k, level, n, g)) {
        std::fill(out_k, out_k + per_roi, scalar_t(0));
        continue;
      }
      s.build(g, PH, PW, cfg.height[level], cfg.width[level]);
      const int64_t plane_size = int64_t(cfg.height[level]) * cfg.width[level];
      for (int64_t c = 0; c < C; c += kLanes) {
        const int lanes = int(std::min<int64_t>(kLanes, C - c));
        pool_channels(s, data[level] + (n * C + c) * plane_size, plane_size, lanes, bins, g.inv_count,
                      out_k + c * bins);
      }
    }
  });
}

// grad: [K, C, PH, PW] contiguous; acc[l]: zeroed op-math [N, C, H_l, W_l] NCHW buffers.
template <typename scalar_t>
void backward_impl(const PoolConfig<at::opmath_type<scalar_t>>& cfg, const at::Tensor& grad, const at::Tensor& rois,
                   std::vector<at::Tensor>& acc) {
  using T = at::opmath_type<scalar_t>;
  const int64_t K = rois.size(0), C = cfg.channels, N = cfg.batch;
  const int PH = cfg.pooled_height, PW = cfg.pooled_width, bins = PH * PW;
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  const scalar_t* gr = grad.const_data_ptr<scalar_t>();
  std::vector<T*> planes;
  for (auto& a : acc) {
    planes.push_back(a.mutable_data_ptr<T>());
  }

  // RoIs grouped by image, ascending within each: the order every pixel's sum is taken in.
  struct Placed {
    int64_t k;
    int level;
    RoiGeometry<T> g;
  };
  std::vector<std::vector<Placed>> by_image(N);
  for (int64_t k = 0; k < K; ++k) {
    int level = 0;
    int64_t n = 0;
    RoiGeometry<T> g;
    if (resolve_roi(cfg, r + 5 * k, level, n, g)) {
      by_image[n].push_back({k, level, g});
    }
  }

  const int64_t tasks_per_image = ceil_div(C, kTaskChannels);
  at::parallel_for(0, N * tasks_per_image, 1, [&](int64_t begin, int64_t end) {
    RoiSamples<T> s;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / tasks_per_image;
      const int64_t c_begin = (task % tasks_per_image) * kTaskChannels;
      const int64_t c_end = std::min(C, c_begin + kTaskChannels);
      for (const Placed& roi : by_image[n]) {
        s.build(roi.g, PH, PW, cfg.height[roi.level], cfg.width[roi.level]);
        const int64_t plane_size = int64_t(cfg.height[roi.level]) * cfg.width[roi.level];
        for (int64_t c = c_begin; c < c_end; ++c) {
          T* plane = planes[roi.level] + (n * C + c) * plane_size;
          const scalar_t* g_kc = gr + (roi.k * C + c) * bins;
          for (int b = 0; b < bins; ++b) {
            const T gv = T(g_kc[b]) * roi.g.inv_count;
            for (int32_t i = s.bin_start[b]; i < s.bin_start[b + 1]; ++i) {
              const Sample<T>& q = s.samples[i];
              plane[q.o1] += q.w1 * gv;
              plane[q.o2] += q.w2 * gv;
              plane[q.o3] += q.w3 * gv;
              plane[q.o4] += q.w4 * gv;
            }
          }
        }
      }
    }
  });
}

std::vector<int64_t> sizes_of(const std::vector<at::Tensor>& levels, int dim) {
  std::vector<int64_t> v;
  for (const auto& l : levels) {
    v.push_back(l.size(dim));
  }
  return v;
}

at::Tensor pool_forward_cpu(const RoiPoolParams& p, at::TensorList features, const at::Tensor& rois_in) {
  at::Tensor out = roi_align_check_and_allocate(p, features, rois_in);
  const at::Tensor rois = rois_in.contiguous();
  const int64_t N = features[0].size(0), C = features[0].size(1);
  roi_align_check_roi_values(p.op, rois, N);
  if (out.numel() == 0) {
    return out;
  }
  std::vector<at::Tensor> levels;
  for (const auto& f : features) {
    levels.push_back(f.contiguous());
  }
  const bool channels_last = out.is_contiguous(at::MemoryFormat::ChannelsLast) && !out.is_contiguous();
  at::Tensor out_nchw = channels_last ? at::empty(out.sizes(), out.options().memory_format(at::MemoryFormat::Contiguous))
                                      : out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rois.scalar_type(), "detbench.roi_align", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto cfg = make_pool_config<T>(p, N, C, sizes_of(levels, 2), sizes_of(levels, 3));
    forward_impl<scalar_t>(cfg, levels, rois, out_nchw);
  });
  if (channels_last) {
    out.copy_(out_nchw);
  }
  return out;
}

std::vector<at::Tensor> pool_backward_cpu(const RoiPoolParams& p, const at::Tensor& grad_in, const at::Tensor& rois_in,
                                          int64_t batch, int64_t channels, at::IntArrayRef heights,
                                          at::IntArrayRef widths, bool channels_last) {
  std::vector<c10::SymInt> sym_h(heights.begin(), heights.end()), sym_w(widths.begin(), widths.end());
  std::vector<at::Tensor> grads = roi_align_backward_check_and_allocate(p, grad_in, rois_in, batch, channels, sym_h,
                                                                        sym_w, channels_last);
  const at::Tensor rois = rois_in.contiguous();
  roi_align_check_roi_values(p.op, rois, batch);
  const at::Tensor grad = grad_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rois.scalar_type(), "detbench.roi_align_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    std::vector<at::Tensor> acc;
    for (size_t l = 0; l < heights.size(); ++l) {
      acc.push_back(at::zeros({batch, channels, heights[l], widths[l]}, grad.options().dtype(c10::CppTypeToScalarType<T>::value)));
    }
    if (grad.numel() > 0) {
      const auto cfg = make_pool_config<T>(p, batch, channels, heights, widths);
      backward_impl<scalar_t>(cfg, grad, rois, acc);
    }
    for (size_t l = 0; l < grads.size(); ++l) {
      grads[l].copy_(acc[l]);
    }
  });
  return grads;
}

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                         int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  return pool_forward_cpu(roi_align_params(spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned),
                          {input}, rois);
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                  int64_t batch, int64_t channels, int64_t height, int64_t width, bool channels_last,
                                  bool /*deterministic: the CPU kernel always is*/) {
  const int64_t heights[] = {height};
  const int64_t widths[] = {width};
  return pool_backward_cpu(roi_align_params(spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned), grad,
                           rois, batch, channels, heights, widths, channels_last)[0];
}

at::Tensor multiscale_roi_align_cpu(at::TensorList features, const at::Tensor& rois, at::ArrayRef<double> scales,
                                    int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                    int64_t k_min, int64_t k_max, double canonical_scale, double canonical_level) {
  return pool_forward_cpu(multiscale_roi_align_params(scales, pooled_height, pooled_width, sampling_ratio, aligned,
                                                      k_min, k_max, canonical_scale, canonical_level),
                          features, rois);
}

std::vector<at::Tensor> multiscale_roi_align_backward_cpu(
    const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> scales, int64_t pooled_height,
    int64_t pooled_width, int64_t sampling_ratio, bool aligned, int64_t k_min, int64_t k_max, double canonical_scale,
    double canonical_level, int64_t batch, int64_t channels, at::IntArrayRef heights, at::IntArrayRef widths,
    bool channels_last, bool /*deterministic: the CPU kernel always is*/) {
  return pool_backward_cpu(multiscale_roi_align_params(scales, pooled_height, pooled_width, sampling_ratio, aligned,
                                                       k_min, k_max, canonical_scale, canonical_level),
                           grad, rois, batch, channels, heights, widths, channels_last);
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("roi_align", &roi_align_cpu);
  m.impl("_roi_align_backward", &roi_align_backward_cpu);
  m.impl("multiscale_roi_align", &multiscale_roi_align_cpu);
  m.impl("_multiscale_roi_align_backward", &multiscale_roi_align_backward_cpu);
}

}  // namespace detbench
