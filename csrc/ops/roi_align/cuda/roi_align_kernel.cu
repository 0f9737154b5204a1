// CUDA kernels of detbench.roi_align, detbench.multiscale_roi_align and their backwards.
//
// One kernel shape for all: a block of 256 threads works on one RoI at a time (grid.y strides
// over the RoIs, grid.x splits a RoI's outputs). The block first computes the RoI's level
// (multiscale: LevelMapper on the device), its geometry, and the row and column samples
// (indices + weights, roi_math.h) into shared memory, once for every channel; then each thread
// produces outputs:
//  - NCHW: one output element per thread, pw fastest (writes coalesced, reads of neighbouring
//    bins in one row of the feature map);
//  - NHWC: VEC channels per thread (16-byte loads and stores), channels fastest: every corner
//    read of a warp is one contiguous run of channels.
// Backward: the same walk scattering grad * weight / count into the four corners:
//  - default: floating-point atomics (float32 buffers for float16/bfloat16, then cast);
//  - deterministic (torch.use_deterministic_algorithms(True)): each contribution rounded to
//    64-bit fixed point (scale from max |grad| on the device) and added with integer atomics,
//    which are associative: bit-identical results run to run; converted back at the end.
// Every launch: the current stream, a device guard, C10_CUDA_KERNEL_LAUNCH_CHECK; no host sync
// (validation mode aside).
#include <algorithm>
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/roi_align/roi_align.h"
#include "ops/roi_align/roi_math.h"

namespace detbench {

namespace {

using roi::AxisSample;
using roi::kMaxLevels;

constexpr int kThreads = 256;
constexpr int kTable = 512;          // shared entries per axis; RoIs with more samples compute them inline
constexpr int64_t kMaxGridY = 65535;  // RoIs beyond are strided over
constexpr int64_t kMaxGridX = 4096;   // a RoI's outputs beyond are strided over

template <typename scalar_t>
struct Levels {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* data[kMaxLevels];
  int H[kMaxLevels];
  int W[kMaxLevels];
  T scale[kMaxLevels];
  int count;
  bool map;
  int k_min, k_max, canonical_level;
  T canonical_scale;
};

template <typename A>
struct GradLevels {
  A* data[kMaxLevels];
};

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

template <typename T>
struct RoiSetup {
  int level;  // -1: zero output, no gradient
  int n, H, W;
  roi::Geometry<T> g;
  bool table;
};

// Called by every thread of the block with the same RoI (block-uniform: it syncs).
template <typename scalar_t, typename T = at::opmath_type<scalar_t>>
__device__ RoiSetup<T> setup_roi(const Levels<scalar_t>& lv, const T* roi, int64_t N, int PH, int PW, int sr,
                                 bool aligned, AxisSample<T>* ys, AxisSample<T>* xs) {
  RoiSetup<T> s;
  s.level = -1;
  s.table = false;
  s.n = s.H = s.W = 0;
  if (roi::roi_ok(roi, N)) {
    const int level =
        lv.map ? roi::map_level(roi + 1, lv.canonical_scale, lv.canonical_level, lv.k_min, lv.k_max) : 0;
    if (level >= 0 && level < lv.count && lv.H[level] > 0 && lv.W[level] > 0) {
      s.level = level;
      s.n = static_cast<int>(roi[0]);
      s.H = lv.H[level];
      s.W = lv.W[level];
      s.g = roi::geometry(roi + 1, lv.scale[level], PH, PW, sr, aligned);
      s.table = PH * s.g.grid_h <= kTable && PW * s.g.grid_w <= kTable;
    }
  }
  __syncthreads();  // the previous RoI's readers are done with the tables
  if (s.table) {
    const int ny = PH * s.g.grid_h, nx = PW * s.g.grid_w;
    for (int i = threadIdx.x; i < ny + nx; i += blockDim.x) {
      if (i < ny) {
        ys[i] = roi::axis_entry(s.g.start_h, s.g.bin_h, i / s.g.grid_h, i % s.g.grid_h, s.g.grid_h, s.H);
      } else {
        const int j = i - ny;
        xs[j] = roi::axis_entry(s.g.start_w, s.g.bin_w, j / s.g.grid_w, j % s.g.grid_w, s.g.grid_w, s.W);
      }
    }
  }
  __syncthreads();
  return s;
}

template <typename T>
__device__ __forceinline__ AxisSample<T> row_sample(const RoiSetup<T>& s, const AxisSample<T>* ys, int ph, int iy) {
  return s.table ? ys[ph * s.g.grid_h + iy] : roi::axis_entry(s.g.start_h, s.g.bin_h, ph, iy, s.g.grid_h, s.H);
}

template <typename T>
__device__ __forceinline__ AxisSample<T> col_sample(const RoiSetup<T>& s, const AxisSample<T>* xs, int pw, int ix) {
  return s.table ? xs[pw * s.g.grid_w + ix] : roi::axis_entry(s.g.start_w, s.g.bin_w, pw, ix, s.g.grid_w, s.W);
}

template <typename scalar_t, bool kNHWC, int VEC>
__global__ void __launch_bounds__(kThreads)
    roi_align_forward_kernel(Levels<scalar_t> lv, const at::opmath_type<scalar_t>* __restrict__ rois, int64_t K,
                             int64_t N, int C, int PH, int PW, int sr, bool aligned, scalar_t* __restrict__ out) {
  using T = at::opmath_type<scalar_t>;
  __shared__ AxisSample<T> ys[kTable];
  __shared__ AxisSample<T> xs[kTable];
  const int bins = PH * PW;
  const int CV = C / VEC;
  const int64_t items = kNHWC ? int64_t(bins) * CV : int64_t(C) * bins;
  for (int64_t k = blockIdx.y; k < K; k += gridDim.y) {
    const RoiSetup<T> s = setup_roi(lv, rois + 5 * k, N, PH, PW, sr, aligned, ys, xs);
    const int gh = s.g.grid_h, gw = s.g.grid_w;
    for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
         item += int64_t(gridDim.x) * blockDim.x) {
      if constexpr (!kNHWC) {
        const int c = int(item / bins), bin = int(item % bins);
        const int ph = bin / PW, pw = bin % PW;
        T sum = 0;
        if (s.level >= 0) {
          const scalar_t* plane = lv.data[s.level] + (int64_t(s.n) * C + c) * int64_t(s.H) * s.W;
          for (int iy = 0; iy < gh; ++iy) {
            const AxisSample<T> Y = row_sample(s, ys, ph, iy);
            if (Y.lo < 0) {
              continue;
            }
            const scalar_t* rlo = plane + int64_t(Y.lo) * s.W;
            const scalar_t* rhi = plane + int64_t(Y.hi) * s.W;
            for (int ix = 0; ix < gw; ++ix) {
              const AxisSample<T> X = col_sample(s, xs, pw, ix);
              if (X.lo < 0) {
                continue;
              }
              sum += Y.wlo * X.wlo * static_cast<T>(rlo[X.lo]) + Y.wlo * X.whi * static_cast<T>(rlo[X.hi]) +
                     Y.whi * X.wlo * static_cast<T>(rhi[X.lo]) + Y.whi * X.whi * static_cast<T>(rhi[X.hi]);
            }
          }
          sum = sum / s.g.count;
        }
        out[k * C * bins + item] = static_cast<scalar_t>(sum);
      } else {
        const int cv = int(item % CV), bin = int(item / CV);
        const int ph = bin / PW, pw = bin % PW;
        const int c0 = cv * VEC;
        T acc[VEC];
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          acc[v] = 0;
        }
        if (s.level >= 0) {
          const scalar_t* image = lv.data[s.level] + int64_t(s.n) * s.H * s.W * C + c0;
          for (int iy = 0; iy < gh; ++iy) {
            const AxisSample<T> Y = row_sample(s, ys, ph, iy);
            if (Y.lo < 0) {
              continue;
            }
            for (int ix = 0; ix < gw; ++ix) {
              const AxisSample<T> X = col_sample(s, xs, pw, ix);
              if (X.lo < 0) {
                continue;
              }
              const T w1 = Y.wlo * X.wlo, w2 = Y.wlo * X.whi, w3 = Y.whi * X.wlo, w4 = Y.whi * X.whi;
              using P = Pack<scalar_t, VEC>;
              const P p1 = *reinterpret_cast<const P*>(image + (int64_t(Y.lo) * s.W + X.lo) * C);
              const P p2 = *reinterpret_cast<const P*>(image + (int64_t(Y.lo) * s.W + X.hi) * C);
              const P p3 = *reinterpret_cast<const P*>(image + (int64_t(Y.hi) * s.W + X.lo) * C);
              const P p4 = *reinterpret_cast<const P*>(image + (int64_t(Y.hi) * s.W + X.hi) * C);
#pragma unroll
              for (int v = 0; v < VEC; ++v) {
                acc[v] += w1 * static_cast<T>(p1.v[v]) + w2 * static_cast<T>(p2.v[v]) + w3 * static_cast<T>(p3.v[v]) +
                          w4 * static_cast<T>(p4.v[v]);
              }
            }
          }
        }
        Pack<scalar_t, VEC> o;
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          o.v[v] = static_cast<scalar_t>(s.level >= 0 ? acc[v] / s.g.count : T(0));
        }
        *reinterpret_cast<Pack<scalar_t, VEC>*>(out + (k * bins + bin) * C + c0) = o;
      }
    }
  }
}

// Adds one contribution: a floating-point atomic, or (kFixed) its 64-bit fixed-point rounding
// with an integer atomic (two's complement wraps, so negative values add correctly).
template <bool kFixed, typename A, typename T>
__device__ __forceinline__ void scatter(A* p, T value, double fixed_scale) {
  if constexpr (kFixed) {
    const long long q = __double2ll_rn(static_cast<double>(value) * fixed_scale);
    atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(q));
  } else {
    atomicAdd(p, value);
  }
}

template <typename scalar_t, bool kNHWC, int VEC, bool kFixed, typename A>
__global__ void __launch_bounds__(kThreads)
    roi_align_backward_kernel(Levels<scalar_t> lv, GradLevels<A> gl, const double* __restrict__ fixed_scale,
                              const scalar_t* __restrict__ grad, const at::opmath_type<scalar_t>* __restrict__ rois,
                              int64_t K, int64_t N, int C, int PH, int PW, int sr, bool aligned) {
  using T = at::opmath_type<scalar_t>;
  __shared__ AxisSample<T> ys[kTable];
  __shared__ AxisSample<T> xs[kTable];
  const double fs = kFixed ? *fixed_scale : 0.0;
  const int bins = PH * PW;
  const int CV = C / VEC;
  const int64_t items = kNHWC ? int64_t(bins) * CV : int64_t(C) * bins;
  for (int64_t k = blockIdx.y; k < K; k += gridDim.y) {
    const RoiSetup<T> s = setup_roi(lv, rois + 5 * k, N, PH, PW, sr, aligned, ys, xs);
    if (s.level < 0) {
      continue;  // block-uniform
    }
    const int gh = s.g.grid_h, gw = s.g.grid_w;
    const T count = s.g.count;
    for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
         item += int64_t(gridDim.x) * blockDim.x) {
      if constexpr (!kNHWC) {
        const int c = int(item / bins), bin = int(item % bins);
        const int ph = bin / PW, pw = bin % PW;
        const T gv = static_cast<T>(grad[k * C * bins + item]);
        A* plane = gl.data[s.level] + (int64_t(s.n) * C + c) * int64_t(s.H) * s.W;
        for (int iy = 0; iy < gh; ++iy) {
          const AxisSample<T> Y = row_sample(s, ys, ph, iy);
          if (Y.lo < 0) {
            continue;
          }
          A* rlo = plane + int64_t(Y.lo) * s.W;
          A* rhi = plane + int64_t(Y.hi) * s.W;
          for (int ix = 0; ix < gw; ++ix) {
            const AxisSample<T> X = col_sample(s, xs, pw, ix);
            if (X.lo < 0) {
              continue;
            }
            scatter<kFixed>(rlo + X.lo, gv * (Y.wlo * X.wlo) / count, fs);
            scatter<kFixed>(rlo + X.hi, gv * (Y.wlo * X.whi) / count, fs);
            scatter<kFixed>(rhi + X.lo, gv * (Y.whi * X.wlo) / count, fs);
            scatter<kFixed>(rhi + X.hi, gv * (Y.whi * X.whi) / count, fs);
          }
        }
      } else {
        const int cv = int(item % CV), bin = int(item / CV);
        const int ph = bin / PW, pw = bin % PW;
        const int c0 = cv * VEC;
        const Pack<scalar_t, VEC> g = *reinterpret_cast<const Pack<scalar_t, VEC>*>(grad + (k * bins + bin) * C + c0);
        A* image = gl.data[s.level] + int64_t(s.n) * s.H * s.W * C + c0;
        for (int iy = 0; iy < gh; ++iy) {
          const AxisSample<T> Y = row_sample(s, ys, ph, iy);
          if (Y.lo < 0) {
            continue;
          }
          for (int ix = 0; ix < gw; ++ix) {
            const AxisSample<T> X = col_sample(s, xs, pw, ix);
            if (X.lo < 0) {
              continue;
            }
            const T w1 = Y.wlo * X.wlo, w2 = Y.wlo * X.whi, w3 = Y.whi * X.wlo, w4 = Y.whi * X.whi;
            A* p1 = image + (int64_t(Y.lo) * s.W + X.lo) * C;
            A* p2 = image + (int64_t(Y.lo) * s.W + X.hi) * C;
            A* p3 = image + (int64_t(Y.hi) * s.W + X.lo) * C;
            A* p4 = image + (int64_t(Y.hi) * s.W + X.hi) * C;
#pragma unroll
            for (int v = 0; v < VEC; ++v) {
              const T gv = static_cast<T>(g.v[v]);
              scatter<kFixed>(p1 + v, gv * w1 / count, fs);
              scatter<kFixed>(p2 + v, gv * w2 / count, fs);
              scatter<kFixed>(p3 + v, gv * w3 / count, fs);
              scatter<kFixed>(p4 + v, gv * w4 / count, fs);
            }
          }
        }
      }
    }
  }
}

// All of the launch math: grid.y over RoIs, grid.x over one RoI's work items.
struct LaunchConfig {
  dim3 grid;
  dim3 block;
};

LaunchConfig launch_config(int64_t K, int64_t items_per_roi) {
  const int64_t gx = std::min(std::max<int64_t>(1, ceil_div<int64_t>(items_per_roi, kThreads)), kMaxGridX);
  const int64_t gy = std::min(K, kMaxGridY);
  return {dim3(unsigned(gx), unsigned(gy)), dim3(kThreads)};
}

bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

template <typename scalar_t>
Levels<scalar_t> levels_of(const RoiAlignProblem& p) {
  Levels<scalar_t> lv{};
  lv.count = int(p.features.size());
  for (int l = 0; l < lv.count; ++l) {
    lv.data[l] = p.features[l].const_data_ptr<scalar_t>();
    lv.H[l] = int(p.features[l].size(2));
    lv.W[l] = int(p.features[l].size(3));
    lv.scale[l] = static_cast<at::opmath_type<scalar_t>>(p.scales[l]);
  }
  lv.map = p.map_levels;
  lv.k_min = int(p.k_min);
  lv.k_max = int(p.k_max);
  lv.canonical_level = int(p.canonical_level);
  lv.canonical_scale = static_cast<at::opmath_type<scalar_t>>(p.canonical_scale);
  return lv;
}

// The channel vector width of the NHWC kernels: 16 bytes where every pointer and C allow it.
template <typename scalar_t>
int nhwc_vec(const RoiAlignProblem& p, std::initializer_list<const void*> extra) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  if (p.C % kVec != 0) {
    return 1;
  }
  for (const at::Tensor& f : p.features) {
    if (!aligned16(f.const_data_ptr())) {
      return 1;
    }
  }
  for (const void* ptr : extra) {
    if (!aligned16(ptr)) {
      return 1;
    }
  }
  return kVec;
}

at::Tensor forward(const RoiAlignProblem& p) {
  at::Tensor out = roi_align_allocate_output(p.features, p.rois, p.pooled_h, p.pooled_w);
  if (out.numel() == 0) {
    return out;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t bins = p.pooled_h * p.pooled_w;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.features[0].scalar_type(), "detbench.roi_align", [&] {
    using T = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const Levels<scalar_t> lv = levels_of<scalar_t>(p);
    const T* rois = p.rois.const_data_ptr<T>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int C = int(p.C), PH = int(p.pooled_h), PW = int(p.pooled_w), sr = int(p.sampling_ratio);
    if (!p.channels_last) {
      const LaunchConfig cfg = launch_config(p.K, p.C * bins);
      roi_align_forward_kernel<scalar_t, false, 1>
          <<<cfg.grid, cfg.block, 0, stream>>>(lv, rois, p.K, p.N, C, PH, PW, sr, p.aligned, o);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else if (nhwc_vec<scalar_t>(p, {o}) == kVec) {
      const LaunchConfig cfg = launch_config(p.K, p.C / kVec * bins);
      roi_align_forward_kernel<scalar_t, true, kVec>
          <<<cfg.grid, cfg.block, 0, stream>>>(lv, rois, p.K, p.N, C, PH, PW, sr, p.aligned, o);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      const LaunchConfig cfg = launch_config(p.K, p.C * bins);
      roi_align_forward_kernel<scalar_t, true, 1>
          <<<cfg.grid, cfg.block, 0, stream>>>(lv, rois, p.K, p.N, C, PH, PW, sr, p.aligned, o);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

template <typename scalar_t, bool kFixed, typename A>
void launch_backward(const RoiAlignProblem& p, const at::Tensor& grad, std::vector<at::Tensor>& acc,
                     const double* fixed_scale, cudaStream_t stream) {
  using T = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const Levels<scalar_t> lv = levels_of<scalar_t>(p);
  GradLevels<A> gl{};
  for (size_t l = 0; l < acc.size(); ++l) {
    gl.data[l] = reinterpret_cast<A*>(acc[l].mutable_data_ptr());
  }
  const T* rois = p.rois.const_data_ptr<T>();
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const int C = int(p.C), PH = int(p.pooled_h), PW = int(p.pooled_w), sr = int(p.sampling_ratio);
  const int64_t bins = p.pooled_h * p.pooled_w;
  if (!p.channels_last) {
    const LaunchConfig cfg = launch_config(p.K, p.C * bins);
    roi_align_backward_kernel<scalar_t, false, 1, kFixed, A>
        <<<cfg.grid, cfg.block, 0, stream>>>(lv, gl, fixed_scale, g, rois, p.K, p.N, C, PH, PW, sr, p.aligned);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else if (nhwc_vec<scalar_t>(p, {g}) == kVec) {
    const LaunchConfig cfg = launch_config(p.K, p.C / kVec * bins);
    roi_align_backward_kernel<scalar_t, true, kVec, kFixed, A>
        <<<cfg.grid, cfg.block, 0, stream>>>(lv, gl, fixed_scale, g, rois, p.K, p.N, C, PH, PW, sr, p.aligned);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const LaunchConfig cfg = launch_config(p.K, p.C * bins);
    roi_align_backward_kernel<scalar_t, true, 1, kFixed, A>
        <<<cfg.grid, cfg.block, 0, stream>>>(lv, gl, fixed_scale, g, rois, p.K, p.N, C, PH, PW, sr, p.aligned);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::vector<at::Tensor> backward(const RoiAlignProblem& p, const at::Tensor& grad_in) {
  const at::Tensor grad = roi_align_prepare_grad(p, grad_in);
  const auto format = p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto dtype = p.features[0].scalar_type();
  const auto math = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const auto acc_dtype = deterministic ? at::kLong : math;
  std::vector<at::Tensor> acc;
  for (const at::Tensor& f : p.features) {
    acc.push_back(at::empty(f.sizes(), f.options().dtype(acc_dtype).memory_format(format)).zero_());
  }
  if (grad.numel() == 0) {
    for (at::Tensor& a : acc) {
      a = a.to(dtype);
    }
    return acc;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor fixed_scale, gmax;
  if (deterministic) {
    // Every pixel's sum is at most max|grad| * K * PH * PW in magnitude (a bin's weights sum to at
    // most 1 after the division by its count): scaled below 2^61, far from int64's 2^63.
    gmax = grad.abs().amax().to(at::kDouble);
    const double terms = double(p.K) * double(p.pooled_h * p.pooled_w);
    fixed_scale = at::exp2(at::floor(61.0 - at::log2((gmax * terms).clamp_min(std::ldexp(1.0, -900)))));
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "detbench.roi_align_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    if (deterministic) {
      launch_backward<scalar_t, true, int64_t>(p, grad, acc, fixed_scale.const_data_ptr<double>(), stream);
    } else {
      launch_backward<scalar_t, false, T>(p, grad, acc, nullptr, stream);
    }
  });
  if (deterministic) {
    const at::Tensor finite = at::isfinite(gmax);
    for (at::Tensor& a : acc) {
      a = at::where(finite, a.to(at::kDouble) / fixed_scale, std::numeric_limits<double>::quiet_NaN()).to(dtype);
    }
  } else if (math != dtype) {
    for (at::Tensor& a : acc) {
      a = a.to(dtype);
    }
  }
  return acc;
}

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                          int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  const c10::cuda::CUDAGuard guard(input.device());
  return forward(roi_align_prepare("roi_align", {input}, rois, {spatial_scale}, pooled_h, pooled_w, sampling_ratio,
                                   aligned, false, 0, 0, 0.0, 0, validation_enabled()));
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
                                   double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                   bool aligned) {
  const c10::cuda::CUDAGuard guard(input.device());
  const RoiAlignProblem p = roi_align_prepare("roi_align", {input}, rois, {spatial_scale}, pooled_h, pooled_w,
                                              sampling_ratio, aligned, false, 0, 0, 0.0, 0, validation_enabled());
  return backward(p, grad)[0];
}

at::Tensor multiscale_cuda(at::TensorList features, const at::Tensor& rois, at::ArrayRef<double> scales,
                           int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned, int64_t k_min,
                           int64_t k_max, double canonical_scale, int64_t canonical_level) {
  const c10::cuda::CUDAGuard guard(rois.device());
  return forward(roi_align_prepare("multiscale_roi_align", features, rois, scales, pooled_h, pooled_w, sampling_ratio,
                                   aligned, true, k_min, k_max, canonical_scale, canonical_level,
                                   validation_enabled()));
}

std::vector<at::Tensor> multiscale_backward_cuda(const at::Tensor& grad, at::TensorList features,
                                                 const at::Tensor& rois, at::ArrayRef<double> scales,
                                                 int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                                 bool aligned, int64_t k_min, int64_t k_max, double canonical_scale,
                                                 int64_t canonical_level) {
  const c10::cuda::CUDAGuard guard(rois.device());
  const RoiAlignProblem p = roi_align_prepare("multiscale_roi_align", features, rois, scales, pooled_h, pooled_w,
                                              sampling_ratio, aligned, true, k_min, k_max, canonical_scale,
                                              canonical_level, validation_enabled());
  return backward(p, grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CUDA, m) {
  m.impl("roi_align", &roi_align_cuda);
  m.impl("roi_align_backward", &roi_align_backward_cuda);
  m.impl("multiscale_roi_align", &multiscale_cuda);
  m.impl("multiscale_roi_align_backward", &multiscale_backward_cuda);
}

}  // namespace detbench
