// CPU kernels of detbench.roi_align, detbench.multiscale_roi_align and their backwards.
//
// Forward: RoIs in parallel (at::parallel_for); per RoI the row and column samples (indices and
// weights, roi_math.h) are computed once and shared by every channel. NCHW: channel planes in
// turn; NHWC: per bin, every sample's four corner pixels are read as whole channel vectors (the
// channel loop is contiguous and vectorizes).
// Backward: channels in parallel, RoIs in their order inside each thread, so no two threads ever
// write one element and the result is the same bits for any thread count (deterministic always).
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/roi_align/roi_align.h"
#include "ops/roi_align/roi_math.h"

namespace detbench {

namespace {

using roi::AxisSample;

template <typename T>
struct Level {
  int64_t H, W;
  T scale;
};

// The level of RoI k (or -1: zero output, no gradient) and its geometry.
template <typename T>
struct RoiPlan {
  int level;
  int64_t n;
  roi::Geometry<T> g;
};

template <typename T>
RoiPlan<T> plan_roi(const RoiAlignProblem& p, const std::vector<Level<T>>& levels, const T* roi) {
  RoiPlan<T> r;
  r.level = p.map_levels ? roi::map_level(roi + 1, T(p.canonical_scale), int(p.canonical_level), int(p.k_min),
                                          int(p.k_max))
                         : 0;
  if (r.level >= int(levels.size()) || (r.level >= 0 && (levels[r.level].H == 0 || levels[r.level].W == 0))) {
    r.level = -1;
  }
  r.n = int64_t(roi[0]);
  if (r.level >= 0) {
    r.g = roi::geometry(roi + 1, levels[r.level].scale, int(p.pooled_h), int(p.pooled_w), int(p.sampling_ratio),
                        p.aligned);
  }
  return r;
}

template <typename T>
void fill_tables(const RoiAlignProblem& p, const Level<T>& lv, const roi::Geometry<T>& g,
                 std::vector<AxisSample<T>>& ys, std::vector<AxisSample<T>>& xs) {
  ys.resize(size_t(p.pooled_h) * g.grid_h);
  xs.resize(size_t(p.pooled_w) * g.grid_w);
  for (int ph = 0; ph < p.pooled_h; ++ph) {
    for (int iy = 0; iy < g.grid_h; ++iy) {
      ys[ph * g.grid_h + iy] = roi::axis_entry(g.start_h, g.bin_h, ph, iy, g.grid_h, int(lv.H));
    }
  }
  for (int pw = 0; pw < p.pooled_w; ++pw) {
    for (int ix = 0; ix < g.grid_w; ++ix) {
      xs[pw * g.grid_w + ix] = roi::axis_entry(g.start_w, g.bin_w, pw, ix, g.grid_w, int(lv.W));
    }
  }
}

template <typename scalar_t>
std::vector<Level<at::opmath_type<scalar_t>>> levels_of(const RoiAlignProblem& p) {
  std::vector<Level<at::opmath_type<scalar_t>>> levels;
  for (size_t l = 0; l < p.features.size(); ++l) {
    levels.push_back({p.features[l].size(2), p.features[l].size(3), at::opmath_type<scalar_t>(p.scales[l])});
  }
  return levels;
}

// One bilinear sample of a RoI on its plane: the four corner offsets and weights.
template <typename T>
struct Sample {
  int32_t o1, o2, o3, o4;
  T w1, w2, w3, w4;
};

template <typename scalar_t>
void forward_impl(const RoiAlignProblem& p, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const auto levels = levels_of<scalar_t>(p);
  std::vector<const scalar_t*> data;
  for (const at::Tensor& f : p.features) {
    data.push_back(f.const_data_ptr<scalar_t>());
  }
  const T* rois = p.rois.const_data_ptr<T>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const int64_t C = p.C, PH = p.pooled_h, PW = p.pooled_w, bins = PH * PW;
  const bool nhwc = p.channels_last;

  at::parallel_for(0, p.K, 1, [&](int64_t begin, int64_t end) {
    std::vector<AxisSample<T>> ys, xs;
    std::vector<T> acc(nhwc ? C : 0);
    std::vector<Sample<T>> samples;
    std::vector<int64_t> bin_end;
    for (int64_t k = begin; k < end; ++k) {
      scalar_t* ok = o + k * C * bins;
      const RoiPlan<T> r = plan_roi(p, levels, rois + 5 * k);
      if (r.level < 0) {
        std::fill(ok, ok + C * bins, scalar_t(0));
        continue;
      }
      const Level<T>& lv = levels[r.level];
      const roi::Geometry<T>& g = r.g;
      fill_tables(p, lv, g, ys, xs);
      const int gh = g.grid_h, gw = g.grid_w;
      if (!nhwc) {
        // The RoI's valid samples flattened bin by bin (offsets and the four weights, as
        // torchvision's pre_calc), so the channel loop does 4 loads and 4 multiply-adds per sample.
        samples.clear();
        bin_end.resize(size_t(bins));
        for (int64_t ph = 0; ph < PH; ++ph) {
          for (int64_t pw = 0; pw < PW; ++pw) {
            for (int iy = 0; iy < gh; ++iy) {
              const AxisSample<T> Y = ys[ph * gh + iy];
              if (Y.lo < 0) {
                continue;
              }
              for (int ix = 0; ix < gw; ++ix) {
                const AxisSample<T> X = xs[pw * gw + ix];
                if (X.lo < 0) {
                  continue;
                }
                samples.push_back({int32_t(Y.lo * lv.W + X.lo), int32_t(Y.lo * lv.W + X.hi),
                                   int32_t(Y.hi * lv.W + X.lo), int32_t(Y.hi * lv.W + X.hi), Y.wlo * X.wlo,
                                   Y.wlo * X.whi, Y.whi * X.wlo, Y.whi * X.whi});
              }
            }
            bin_end[ph * PW + pw] = int64_t(samples.size());
          }
        }
        const Sample<T>* sp = samples.data();
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* plane = data[r.level] + (r.n * C + c) * lv.H * lv.W;
          int64_t s0 = 0;
          for (int64_t bin = 0; bin < bins; ++bin) {
            T sum = 0;
            const int64_t s1 = bin_end[bin];
            for (int64_t i = s0; i < s1; ++i) {
              const Sample<T>& q = sp[i];
              sum += q.w1 * T(plane[q.o1]) + q.w2 * T(plane[q.o2]) + q.w3 * T(plane[q.o3]) + q.w4 * T(plane[q.o4]);
            }
            s0 = s1;
            ok[c * bins + bin] = scalar_t(sum / g.count);
          }
        }
      } else {
        const scalar_t* image = data[r.level] + r.n * lv.H * lv.W * C;
        for (int64_t bin = 0; bin < bins; ++bin) {
          const int64_t ph = bin / PW, pw = bin % PW;
          std::fill(acc.begin(), acc.end(), T(0));
          T* a = acc.data();
          for (int iy = 0; iy < gh; ++iy) {
            const AxisSample<T> Y = ys[ph * gh + iy];
            if (Y.lo < 0) {
              continue;
            }
            for (int ix = 0; ix < gw; ++ix) {
              const AxisSample<T> X = xs[pw * gw + ix];
              if (X.lo < 0) {
                continue;
              }
              const T w1 = Y.wlo * X.wlo, w2 = Y.wlo * X.whi, w3 = Y.whi * X.wlo, w4 = Y.whi * X.whi;
              const scalar_t* __restrict__ p1 = image + (Y.lo * lv.W + X.lo) * C;
              const scalar_t* __restrict__ p2 = image + (Y.lo * lv.W + X.hi) * C;
              const scalar_t* __restrict__ p3 = image + (Y.hi * lv.W + X.lo) * C;
              const scalar_t* __restrict__ p4 = image + (Y.hi * lv.W + X.hi) * C;
              for (int64_t c = 0; c < C; ++c) {
                a[c] += w1 * T(p1[c]) + w2 * T(p2[c]) + w3 * T(p3[c]) + w4 * T(p4[c]);
              }
            }
          }
          scalar_t* ob = ok + bin * C;
          for (int64_t c = 0; c < C; ++c) {
            ob[c] = scalar_t(a[c] / g.count);
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_impl(const RoiAlignProblem& p, const at::Tensor& grad, std::vector<at::Tensor>& acc) {
  using T = at::opmath_type<scalar_t>;
  const auto levels = levels_of<scalar_t>(p);
  std::vector<T*> out;
  for (at::Tensor& a : acc) {
    out.push_back(a.mutable_data_ptr<T>());
  }
  const T* rois = p.rois.const_data_ptr<T>();
  const scalar_t* gr = grad.const_data_ptr<scalar_t>();
  const int64_t C = p.C, PH = p.pooled_h, PW = p.pooled_w, bins = PH * PW;
  const bool nhwc = p.channels_last;
  // NHWC: threads own runs of 16 channels (a 64-byte line of float), so they rarely share a line.
  const int64_t grain = nhwc ? std::min<int64_t>(C, 16) : 1;

  at::parallel_for(0, C, grain, [&](int64_t c0, int64_t c1) {
    std::vector<AxisSample<T>> ys, xs;
    for (int64_t k = 0; k < p.K; ++k) {
      const RoiPlan<T> r = plan_roi(p, levels, rois + 5 * k);
      if (r.level < 0) {
        continue;
      }
      const Level<T>& lv = levels[r.level];
      const roi::Geometry<T>& g = r.g;
      fill_tables(p, lv, g, ys, xs);
      const int gh = g.grid_h, gw = g.grid_w;
      const scalar_t* gk = gr + k * C * bins;
      if (!nhwc) {
        for (int64_t c = c0; c < c1; ++c) {
          T* plane = out[r.level] + (r.n * C + c) * lv.H * lv.W;
          for (int64_t ph = 0; ph < PH; ++ph) {
            for (int64_t pw = 0; pw < PW; ++pw) {
              const T gv = T(gk[(c * PH + ph) * PW + pw]);
              for (int iy = 0; iy < gh; ++iy) {
                const AxisSample<T> Y = ys[ph * gh + iy];
                if (Y.lo < 0) {
                  continue;
                }
                T* rlo = plane + Y.lo * lv.W;
                T* rhi = plane + Y.hi * lv.W;
                for (int ix = 0; ix < gw; ++ix) {
                  const AxisSample<T> X = xs[pw * gw + ix];
                  if (X.lo < 0) {
                    continue;
                  }
                  rlo[X.lo] += gv * (Y.wlo * X.wlo) / g.count;
                  rlo[X.hi] += gv * (Y.wlo * X.whi) / g.count;
                  rhi[X.lo] += gv * (Y.whi * X.wlo) / g.count;
                  rhi[X.hi] += gv * (Y.whi * X.whi) / g.count;
                }
              }
            }
          }
        }
      } else {
        T* image = out[r.level] + r.n * lv.H * lv.W * C;
        for (int64_t bin = 0; bin < bins; ++bin) {
          const int64_t ph = bin / PW, pw = bin % PW;
          const scalar_t* gb = gk + bin * C;
          for (int iy = 0; iy < gh; ++iy) {
            const AxisSample<T> Y = ys[ph * gh + iy];
            if (Y.lo < 0) {
              continue;
            }
            for (int ix = 0; ix < gw; ++ix) {
              const AxisSample<T> X = xs[pw * gw + ix];
              if (X.lo < 0) {
                continue;
              }
              const T w1 = Y.wlo * X.wlo, w2 = Y.wlo * X.whi, w3 = Y.whi * X.wlo, w4 = Y.whi * X.whi;
              T* p1 = image + (Y.lo * lv.W + X.lo) * C;
              T* p2 = image + (Y.lo * lv.W + X.hi) * C;
              T* p3 = image + (Y.hi * lv.W + X.lo) * C;
              T* p4 = image + (Y.hi * lv.W + X.hi) * C;
              for (int64_t c = c0; c < c1; ++c) {
                const T gv = T(gb[c]);
                p1[c] += gv * w1 / g.count;
                p2[c] += gv * w2 / g.count;
                p3[c] += gv * w3 / g.count;
                p4[c] += gv * w4 / g.count;
              }
            }
          }
        }
      }
    }
  });
}

at::Tensor forward(const RoiAlignProblem& p) {
  at::Tensor out = roi_align_allocate_output(p.features, p.rois, p.pooled_h, p.pooled_w);
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.features[0].scalar_type(), "detbench.roi_align",
                                  [&] { forward_impl<scalar_t>(p, out); });
  return out;
}

std::vector<at::Tensor> backward(const RoiAlignProblem& p, const at::Tensor& grad_in) {
  const at::Tensor grad = roi_align_prepare_grad(p, grad_in);
  const auto format = p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto dtype = p.features[0].scalar_type();
  const auto math = dtype == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<at::Tensor> acc;
  for (const at::Tensor& f : p.features) {
    acc.push_back(at::empty(f.sizes(), f.options().dtype(math).memory_format(format)).zero_());
  }
  if (grad.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "detbench.roi_align_backward",
                                    [&] { backward_impl<scalar_t>(p, grad, acc); });
  }
  if (math != dtype) {
    for (at::Tensor& a : acc) {
      a = a.to(dtype);  // preserves the memory format
    }
  }
  return acc;
}

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                         int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  return forward(roi_align_prepare("roi_align", {input}, rois, {spatial_scale}, pooled_h, pooled_w, sampling_ratio,
                                   aligned, false, 0, 0, 0.0, 0, true));
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                  bool aligned) {
  const RoiAlignProblem p = roi_align_prepare("roi_align", {input}, rois, {spatial_scale}, pooled_h, pooled_w,
                                              sampling_ratio, aligned, false, 0, 0, 0.0, 0, true);
  return backward(p, grad)[0];
}

at::Tensor multiscale_cpu(at::TensorList features, const at::Tensor& rois, at::ArrayRef<double> scales,
                          int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned, int64_t k_min,
                          int64_t k_max, double canonical_scale, int64_t canonical_level) {
  return forward(roi_align_prepare("multiscale_roi_align", features, rois, scales, pooled_h, pooled_w, sampling_ratio,
                                   aligned, true, k_min, k_max, canonical_scale, canonical_level, true));
}

std::vector<at::Tensor> multiscale_backward_cpu(const at::Tensor& grad, at::TensorList features,
                                                const at::Tensor& rois, at::ArrayRef<double> scales, int64_t pooled_h,
                                                int64_t pooled_w, int64_t sampling_ratio, bool aligned, int64_t k_min,
                                                int64_t k_max, double canonical_scale, int64_t canonical_level) {
  const RoiAlignProblem p = roi_align_prepare("multiscale_roi_align", features, rois, scales, pooled_h, pooled_w,
                                              sampling_ratio, aligned, true, k_min, k_max, canonical_scale,
                                              canonical_level, true);
  return backward(p, grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("roi_align", &roi_align_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
  m.impl("multiscale_roi_align", &multiscale_cpu);
  m.impl("multiscale_roi_align_backward", &multiscale_backward_cpu);
}

}  // namespace detbench
