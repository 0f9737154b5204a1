// CPU kernels of detbench.roi_align and multiscale_roi_align, forward and backward.
//
// Layout NCHW (channels-last inputs are made NCHW first; outputs and gradients are returned in
// the input's memory format). Bilinear sampling is separable, so for each sample row a kernel
// first interpolates between the two input rows over the RoI's column range (a contiguous loop
// that vectorizes), then reads each sample column from that row buffer: two loads per sample
// instead of four. Forward runs RoIs in parallel; backward runs (image, channel block) tasks in
// parallel, each adding its image's RoIs in ascending order: deterministic, no atomics.
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

constexpr int64_t kChannelBlock = 16;  // channels per backward task

// A RoI's sample rows and columns, resolved once and used for every channel.
template <typename T>
struct RoiSamples {
  std::vector<AxisSample<T>> rows;  // PH * grid_h, bin-major
  std::vector<int> col_low, col_high;  // relative to x_begin; PW * grid_w, bin-major
  std::vector<T> col_w_low, col_w_high;
  std::vector<char> col_valid;
  int x_begin = 0, x_end = 0;  // column range [x_begin, x_end) that valid samples read
  bool any_row = false;

  // Returns false when no sample is valid (the RoI's output is zeros).
  bool build(const RoiGeometry<T>& g, int ph_count, int pw_count, int height, int width) {
    rows.resize(size_t(ph_count) * g.grid_h);
    any_row = false;
    for (int ph = 0; ph < ph_count; ++ph) {
      for (int iy = 0; iy < g.grid_h; ++iy) {
        auto& r = rows[size_t(ph) * g.grid_h + iy];
        r = axis_sample(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), height);
        any_row = any_row || r.valid;
      }
    }
    const size_t cols = size_t(pw_count) * g.grid_w;
    std::vector<AxisSample<T>> xs(cols);
    x_begin = width;
    x_end = 0;
    for (int pw = 0; pw < pw_count; ++pw) {
      for (int ix = 0; ix < g.grid_w; ++ix) {
        auto& x = xs[size_t(pw) * g.grid_w + ix];
        x = axis_sample(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), width);
        if (x.valid) {
          x_begin = std::min(x_begin, x.low);
          x_end = std::max(x_end, x.high + 1);
        }
      }
    }
    col_low.resize(cols);
    col_high.resize(cols);
    col_w_low.resize(cols);
    col_w_high.resize(cols);
    col_valid.resize(cols);
    for (size_t j = 0; j < cols; ++j) {
      col_valid[j] = xs[j].valid;
      col_low[j] = xs[j].valid ? xs[j].low - x_begin : 0;
      col_high[j] = xs[j].valid ? xs[j].high - x_begin : 0;
      col_w_low[j] = xs[j].w_low;
      col_w_high[j] = xs[j].w_high;
    }
    return any_row && x_end > x_begin;
  }
};

template <typename scalar_t>
void forward_impl(const PoolConfig<at::opmath_type<scalar_t>>& cfg, const std::vector<at::Tensor>& levels,
                  const at::Tensor& rois, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t K = rois.size(0), C = cfg.channels;
  const int PH = cfg.pooled_height, PW = cfg.pooled_width;
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  std::vector<const scalar_t*> data;
  for (const auto& l : levels) {
    data.push_back(l.const_data_ptr<scalar_t>());
  }
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const int64_t per_roi = C * PH * PW;
  at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
    RoiSamples<T> s;
    std::vector<T> row, acc(PW);
    for (int64_t k = begin; k < end; ++k) {
      scalar_t* out_k = o + k * per_roi;
      int level = 0;
      int64_t n = 0;
      RoiGeometry<T> g;
      if (!resolve_roi(cfg, r + 5 * k, level, n, g) ||
          !s.build(g, PH, PW, cfg.height[level], cfg.width[level])) {
        std::fill(out_k, out_k + per_roi, scalar_t(0));
        continue;
      }
      const int64_t W = cfg.width[level];
      const int64_t plane_size = int64_t(cfg.height[level]) * W;
      const int span = s.x_end - s.x_begin;
      row.resize(span);
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* plane = data[level] + (n * C + c) * plane_size + s.x_begin;
        for (int ph = 0; ph < PH; ++ph) {
          std::fill(acc.begin(), acc.end(), T(0));
          for (int iy = 0; iy < g.grid_h; ++iy) {
            const AxisSample<T>& y = s.rows[size_t(ph) * g.grid_h + iy];
            if (!y.valid) {
              continue;
            }
            const scalar_t* low = plane + y.low * W;
            const scalar_t* high = plane + y.high * W;
            for (int x = 0; x < span; ++x) {
              row[x] = y.w_low * T(low[x]) + y.w_high * T(high[x]);
            }
            for (int pw = 0; pw < PW; ++pw) {
              T a = acc[pw];
              for (int ix = 0; ix < g.grid_w; ++ix) {
                const size_t j = size_t(pw) * g.grid_w + ix;
                if (s.col_valid[j]) {
                  a += s.col_w_low[j] * row[s.col_low[j]] + s.col_w_high[j] * row[s.col_high[j]];
                }
              }
              acc[pw] = a;
            }
          }
          scalar_t* out_row = out_k + (c * PH + ph) * PW;
          for (int pw = 0; pw < PW; ++pw) {
            out_row[pw] = scalar_t(acc[pw] * g.inv_count);
          }
        }
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
  const int PH = cfg.pooled_height, PW = cfg.pooled_width;
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

  const int64_t blocks = ceil_div(C, kChannelBlock);
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    RoiSamples<T> s;
    std::vector<T> row;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks;
      const int64_t c_begin = (task % blocks) * kChannelBlock;
      const int64_t c_end = std::min(C, c_begin + kChannelBlock);
      for (const Placed& roi : by_image[n]) {
        const RoiGeometry<T>& g = roi.g;
        if (!s.build(g, PH, PW, cfg.height[roi.level], cfg.width[roi.level])) {
          continue;
        }
        const int64_t W = cfg.width[roi.level];
        const int64_t plane_size = int64_t(cfg.height[roi.level]) * W;
        const int span = s.x_end - s.x_begin;
        row.resize(span);
        for (int64_t c = c_begin; c < c_end; ++c) {
          T* plane = planes[roi.level] + (n * C + c) * plane_size + s.x_begin;
          const scalar_t* g_kc = gr + (roi.k * C + c) * PH * PW;
          for (int ph = 0; ph < PH; ++ph) {
            for (int iy = 0; iy < g.grid_h; ++iy) {
              const AxisSample<T>& y = s.rows[size_t(ph) * g.grid_h + iy];
              if (!y.valid) {
                continue;
              }
              std::fill(row.begin(), row.end(), T(0));
              for (int pw = 0; pw < PW; ++pw) {
                const T gv = T(g_kc[ph * PW + pw]) * g.inv_count;
                for (int ix = 0; ix < g.grid_w; ++ix) {
                  const size_t j = size_t(pw) * g.grid_w + ix;
                  if (s.col_valid[j]) {
                    row[s.col_low[j]] += s.col_w_low[j] * gv;
                    row[s.col_high[j]] += s.col_w_high[j] * gv;
                  }
                }
              }
              T* low = plane + y.low * W;
              for (int x = 0; x < span; ++x) {
                low[x] += y.w_low * row[x];
              }
              T* high = plane + y.high * W;  // may be `low` (bottom edge): a second pass, not fused
              for (int x = 0; x < span; ++x) {
                high[x] += y.w_high * row[x];
              }
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
