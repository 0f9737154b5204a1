// CUDA kernels of detbench.roi_align and multiscale_roi_align, forward and backward.
//
// Two layouts, each with its own access pattern (all accumulation in float32, float64 for
// float64):
// - NHWC (channels-last input, read as is): a thread owns VEC adjacent channels (16 bytes) of one
//   output bin; the threads of a warp read 32 x 16 contiguous bytes at every sample corner.
// - NCHW: a block per RoI. The RoI's sample columns (PW * grid_w of them, when <= 32) go to the
//   lanes of a sub-warp of L = next power of two lanes, so each load instruction of a sub-warp
//   reads one input row segment; 32 / L channels per warp. The grid_w samples of a bin are
//   summed with a segmented shuffle in a fixed order. RoIs with more than 32 sample columns
//   (adaptive sampling of big RoIs) fall back to a thread per output inside the same block.
// Backward mirrors both, scattering with atomics into a zeroed accumulator: float atomics by
// default (float32 accumulation for every dtype; float16/bfloat16 gradients are rounded once at
// the end), or, in deterministic mode, integer atomics on 64-bit fixed point: integer addition is
// associative, so the result is bit-identical run to run. The fixed-point scale is 2^(62 - e)
// with 2^e > max|grad| * K * PH * PW, a bound on any partial sum, found on the device (no sync).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/roi_align/roi_align.h"

namespace detbench {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kBlocksPerSm = 16;
constexpr int kMaxSampleLanes = 32;  // NCHW: RoIs with more sample columns take the fallback

using FixedT = unsigned long long;  // deterministic accumulator: two's complement fixed point

template <typename P>
struct LevelPtrs {
  P ptr[kMaxLevels];
};

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

// ---------------------------------------------------------------------------------------------
// Accumulation into the backward buffer.

__device__ __forceinline__ void accumulate(float* p, float v, double) {
  atomicAdd(p, v);
}

__device__ __forceinline__ void accumulate(double* p, double v, double) {
  atomicAdd(p, v);
}

template <typename T>
__device__ __forceinline__ void accumulate(FixedT* p, T v, double scale) {
  atomicAdd(p, static_cast<FixedT>(__double2ll_rn(static_cast<double>(v) * scale)));
}

// VEC adjacent channels at once: one vector atomic per 4 floats on sm_90.
template <typename AccT, typename T, int VEC>
__device__ __forceinline__ void accumulate_vec(AccT* p, const T (&v)[VEC], T w, double scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kFloat4 = std::is_same_v<AccT, float> && VEC % 4 == 0;
#else
  constexpr bool kFloat4 = false;
#endif
  if constexpr (kFloat4) {
#pragma unroll
    for (int i = 0; i < VEC; i += 4) {
      atomicAdd(reinterpret_cast<float4*>(p + i), make_float4(w * v[i], w * v[i + 1], w * v[i + 2], w * v[i + 3]));
    }
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      accumulate(p + i, w * v[i], scale);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward.

// NHWC: thread per (RoI, ph, pw, channel pack).
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    forward_nhwc_kernel(PoolConfig<at::opmath_type<scalar_t>> cfg, LevelPtrs<const scalar_t*> in,
                        const scalar_t* __restrict__ rois, scalar_t* __restrict__ out, int64_t K) {
  using T = at::opmath_type<scalar_t>;
  const int PH = cfg.pooled_height, PW = cfg.pooled_width;
  const int64_t C = cfg.channels, CV = C / VEC;
  const int64_t total = K * PH * PW * CV;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t cv = idx % CV;
    int64_t t = idx / CV;
    const int pw = int(t % PW);
    t /= PW;
    const int ph = int(t % PH);
    const int64_t k = t / PH;
    T acc[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      acc[i] = T(0);
    }
    int level = 0;
    int64_t n = 0;
    RoiGeometry<T> g;
    if (resolve_roi(cfg, rois + 5 * k, level, n, g)) {
      const int H = cfg.height[level], W = cfg.width[level];
      const scalar_t* base = in.ptr[level] + n * H * W * C + cv * VEC;
      for (int iy = 0; iy < g.grid_h; ++iy) {
        const AxisSample<T> y = axis_sample(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), H);
        if (!y.valid) {
          continue;
        }
        for (int ix = 0; ix < g.grid_w; ++ix) {
          const AxisSample<T> x = axis_sample(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), W);
          if (!x.valid) {
            continue;
          }
          using P = Pack<scalar_t, VEC>;
          const P v1 = *reinterpret_cast<const P*>(base + (int64_t(y.low) * W + x.low) * C);
          const P v2 = *reinterpret_cast<const P*>(base + (int64_t(y.low) * W + x.high) * C);
          const P v3 = *reinterpret_cast<const P*>(base + (int64_t(y.high) * W + x.low) * C);
          const P v4 = *reinterpret_cast<const P*>(base + (int64_t(y.high) * W + x.high) * C);
          const T w1 = y.w_low * x.w_low, w2 = y.w_low * x.w_high, w3 = y.w_high * x.w_low, w4 = y.w_high * x.w_high;
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            acc[i] += w1 * T(v1.v[i]) + w2 * T(v2.v[i]) + w3 * T(v3.v[i]) + w4 * T(v4.v[i]);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        acc[i] *= g.inv_count;
      }
    }
    Pack<scalar_t, VEC> o;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      o.v[i] = scalar_t(acc[i]);
    }
    *reinterpret_cast<Pack<scalar_t, VEC>*>(out + ((k * PH + ph) * PW + pw) * C + cv * VEC) = o;
  }
}

// The sub-warp layout of the NCHW kernels for a RoI with `cols` sample columns (<= 32).
struct SubWarp {
  int size, lane, index, count;
  unsigned mask;
};

__device__ __forceinline__ SubWarp sub_warp(int cols) {
  int size = 1;
  while (size < cols) {
    size <<= 1;
  }
  SubWarp s;
  s.size = size;
  s.lane = threadIdx.x % size;
  s.index = threadIdx.x / size;
  s.count = blockDim.x / size;
  s.mask = size == 32 ? 0xffffffffu : ((1u << size) - 1u) << ((threadIdx.x % 32) / size * size);
  return s;
}

// Bilinear value of one sample of an NCHW plane.
template <typename T, typename scalar_t>
__device__ __forceinline__ T bilinear(const scalar_t* __restrict__ plane, int W, const AxisSample<T>& y,
                                      const AxisSample<T>& x) {
  const scalar_t* low = plane + int64_t(y.low) * W;
  const scalar_t* high = plane + int64_t(y.high) * W;
  return y.w_low * x.w_low * T(low[x.low]) + y.w_low * x.w_high * T(low[x.high]) +
         y.w_high * x.w_low * T(high[x.low]) + y.w_high * x.w_high * T(high[x.high]);
}

// NCHW: block per RoI (grid-stride over RoIs).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    forward_nchw_kernel(PoolConfig<at::opmath_type<scalar_t>> cfg, LevelPtrs<const scalar_t*> in,
                        const scalar_t* __restrict__ rois, scalar_t* __restrict__ out, int64_t K) {
  using T = at::opmath_type<scalar_t>;
  const int PH = cfg.pooled_height, PW = cfg.pooled_width;
  const int64_t C = cfg.channels, per_roi = C * PH * PW;
  for (int64_t k = blockIdx.x; k < K; k += gridDim.x) {
    scalar_t* out_k = out + k * per_roi;
    int level = 0;
    int64_t n = 0;
    RoiGeometry<T> g;
    if (!resolve_roi(cfg, rois + 5 * k, level, n, g)) {
      for (int64_t o = threadIdx.x; o < per_roi; o += blockDim.x) {
        out_k[o] = scalar_t(0);
      }
      continue;
    }
    const int H = cfg.height[level], W = cfg.width[level];
    const int64_t plane_size = int64_t(H) * W;
    const scalar_t* base = in.ptr[level] + n * C * plane_size;
    const int cols = PW * g.grid_w;
    if (cols <= kMaxSampleLanes) {
      const SubWarp sw = sub_warp(cols);
      const bool active = sw.lane < cols;
      const int pw = sw.lane / g.grid_w, ix = sw.lane % g.grid_w;
      const AxisSample<T> x = active ? axis_sample(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), W)
                                     : AxisSample<T>{0, 0, T(0), T(0), false};
      for (int64_t task = sw.index; task < C * PH; task += sw.count) {
        const int64_t c = task / PH;
        const int ph = int(task % PH);
        const scalar_t* plane = base + c * plane_size;
        T acc = T(0);
        for (int iy = 0; iy < g.grid_h; ++iy) {
          const AxisSample<T> y = axis_sample(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), H);
          if (y.valid && x.valid) {
            acc += bilinear(plane, W, y, x);
          }
        }
        // Segmented sum of each bin's grid_w lanes into its first lane (lane i adds lane i + d
        // while that lane is in its bin: after the steps, lane i holds its bin's lanes >= i).
        for (int d = 1; d < g.grid_w; d <<= 1) {
          const T other = __shfl_down_sync(sw.mask, acc, d, sw.size);
          if (ix + d < g.grid_w) {
            acc += other;
          }
        }
        if (active && ix == 0) {
          out_k[(c * PH + ph) * PW + pw] = scalar_t(acc * g.inv_count);
        }
      }
    } else {
      for (int64_t o = threadIdx.x; o < per_roi; o += blockDim.x) {
        const int pw = int(o % PW), ph = int(o / PW % PH);
        const scalar_t* plane = base + (o / (PH * PW)) * plane_size;
        T acc = T(0);
        for (int iy = 0; iy < g.grid_h; ++iy) {
          const AxisSample<T> y = axis_sample(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), H);
          if (!y.valid) {
            continue;
          }
          for (int ix = 0; ix < g.grid_w; ++ix) {
            const AxisSample<T> x = axis_sample(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), W);
            if (x.valid) {
              acc += bilinear(plane, W, y, x);
            }
          }
        }
        out_k[o] = scalar_t(acc * g.inv_count);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: the same walks, scattering grad * weight into the accumulator.

template <typename AccT, typename T>
__device__ __forceinline__ void scatter(AccT* plane, int W, const AxisSample<T>& y, const AxisSample<T>& x, T gv,
                                        double scale) {
  AccT* low = plane + int64_t(y.low) * W;
  AccT* high = plane + int64_t(y.high) * W;
  accumulate(low + x.low, y.w_low * x.w_low * gv, scale);
  accumulate(low + x.high, y.w_low * x.w_high * gv, scale);
  accumulate(high + x.low, y.w_high * x.w_low * gv, scale);
  accumulate(high + x.high, y.w_high * x.w_high * gv, scale);
}

__device__ __forceinline__ double fixed_scale(const double* scale) {
  return scale == nullptr ? 0.0 : *scale;
}

// grad: [K, C, PH, PW] NCHW-contiguous; acc: per level [N, C, H, W].
template <typename scalar_t, typename AccT>
__global__ void __launch_bounds__(kThreads)
    backward_nchw_kernel(PoolConfig<at::opmath_type<scalar_t>> cfg, LevelPtrs<AccT*> acc,
                         const scalar_t* __restrict__ rois, const scalar_t* __restrict__ grad, int64_t K,
                         const double* fixed_scale_ptr) {
  using T = at::opmath_type<scalar_t>;
  const double scale = fixed_scale(fixed_scale_ptr);
  const int PH = cfg.pooled_height, PW = cfg.pooled_width;
  const int64_t C = cfg.channels, per_roi = C * PH * PW;
  for (int64_t k = blockIdx.x; k < K; k += gridDim.x) {
    int level = 0;
    int64_t n = 0;
    RoiGeometry<T> g;
    if (!resolve_roi(cfg, rois + 5 * k, level, n, g)) {
      continue;
    }
    const scalar_t* grad_k = grad + k * per_roi;
    const int H = cfg.height[level], W = cfg.width[level];
    const int64_t plane_size = int64_t(H) * W;
    AccT* base = acc.ptr[level] + n * C * plane_size;
    const int cols = PW * g.grid_w;
    if (cols <= kMaxSampleLanes) {
      const SubWarp sw = sub_warp(cols);
      const bool active = sw.lane < cols;
      const int pw = sw.lane / g.grid_w, ix = sw.lane % g.grid_w;
      const AxisSample<T> x = active ? axis_sample(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), W)
                                     : AxisSample<T>{0, 0, T(0), T(0), false};
      if (!x.valid) {
        continue;  // no shuffles below: lanes may leave independently
      }
      for (int64_t task = sw.index; task < C * PH; task += sw.count) {
        const int64_t c = task / PH;
        const int ph = int(task % PH);
        const T gv = T(grad_k[(c * PH + ph) * PW + pw]) * g.inv_count;
        AccT* plane = base + c * plane_size;
        for (int iy = 0; iy < g.grid_h; ++iy) {
          const AxisSample<T> y = axis_sample(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), H);
          if (y.valid) {
            scatter(plane, W, y, x, gv, scale);
          }
        }
      }
    } else {
      for (int64_t o = threadIdx.x; o < per_roi; o += blockDim.x) {
        const int pw = int(o % PW), ph = int(o / PW % PH);
        AccT* plane = base + (o / (PH * PW)) * plane_size;
        const T gv = T(grad_k[o]) * g.inv_count;
        for (int iy = 0; iy < g.grid_h; ++iy) {
          const AxisSample<T> y = axis_sample(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), H);
          if (!y.valid) {
            continue;
          }
          for (int ix = 0; ix < g.grid_w; ++ix) {
            const AxisSample<T> x = axis_sample(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), W);
            if (x.valid) {
              scatter(plane, W, y, x, gv, scale);
            }
          }
        }
      }
    }
  }
}

// grad: [K, PH, PW, C] (channels-last); acc: per level [N, H, W, C].
template <typename scalar_t, typename AccT, int VEC>
__global__ void __launch_bounds__(kThreads)
    backward_nhwc_kernel(PoolConfig<at::opmath_type<scalar_t>> cfg, LevelPtrs<AccT*> acc,
                         const scalar_t* __restrict__ rois, const scalar_t* __restrict__ grad, int64_t K,
                         const double* fixed_scale_ptr) {
  using T = at::opmath_type<scalar_t>;
  const double scale = fixed_scale(fixed_scale_ptr);
  const int PH = cfg.pooled_height, PW = cfg.pooled_width;
  const int64_t C = cfg.channels, CV = C / VEC;
  const int64_t total = K * PH * PW * CV;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t cv = idx % CV;
    int64_t t = idx / CV;
    const int pw = int(t % PW);
    t /= PW;
    const int ph = int(t % PH);
    const int64_t k = t / PH;
    int level = 0;
    int64_t n = 0;
    RoiGeometry<T> g;
    if (!resolve_roi(cfg, rois + 5 * k, level, n, g)) {
      continue;
    }
    const Pack<scalar_t, VEC> gp =
        *reinterpret_cast<const Pack<scalar_t, VEC>*>(grad + ((k * PH + ph) * PW + pw) * C + cv * VEC);
    T gv[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      gv[i] = T(gp.v[i]) * g.inv_count;
    }
    const int H = cfg.height[level], W = cfg.width[level];
    AccT* base = acc.ptr[level] + n * H * W * C + cv * VEC;
    for (int iy = 0; iy < g.grid_h; ++iy) {
      const AxisSample<T> y = axis_sample(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), H);
      if (!y.valid) {
        continue;
      }
      for (int ix = 0; ix < g.grid_w; ++ix) {
        const AxisSample<T> x = axis_sample(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), W);
        if (!x.valid) {
          continue;
        }
        accumulate_vec<AccT, T, VEC>(base + (int64_t(y.low) * W + x.low) * C, gv, y.w_low * x.w_low, scale);
        accumulate_vec<AccT, T, VEC>(base + (int64_t(y.low) * W + x.high) * C, gv, y.w_low * x.w_high, scale);
        accumulate_vec<AccT, T, VEC>(base + (int64_t(y.high) * W + x.low) * C, gv, y.w_high * x.w_low, scale);
        accumulate_vec<AccT, T, VEC>(base + (int64_t(y.high) * W + x.high) * C, gv, y.w_high * x.w_high, scale);
      }
    }
  }
}

// Deterministic mode, step 1: max |grad| as the bits of a non-negative double (which order as
// unsigned integers; NaN above inf) into *max_bits (zeroed).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    abs_max_kernel(const scalar_t* __restrict__ grad, int64_t numel, FixedT* max_bits) {
  FixedT m = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += int64_t(gridDim.x) * blockDim.x) {
    m = max(m, static_cast<FixedT>(__double_as_longlong(fabs(static_cast<double>(grad[i])))));
  }
  for (int d = 16; d > 0; d >>= 1) {
    m = max(m, __shfl_down_sync(0xffffffffu, m, d));
  }
  if (threadIdx.x % 32 == 0) {
    atomicMax(max_bits, m);
  }
}

// Step 2: scale[0] = 2^(62 - e) with 2^e > max|grad| * terms; scale[1] = 1 when that bound is
// not finite.
__global__ void fixed_scale_kernel(const FixedT* max_bits, double terms, double* scale) {
  const double m = __longlong_as_double(static_cast<long long>(*max_bits));
  const double bound = m * terms;
  if (!(bound <= 1.79769313486231570e308)) {  // NaN or inf in grad (or a bound past double's range)
    scale[0] = 0.0;
    scale[1] = 1.0;
    return;
  }
  int e = 0;
  frexp(bound, &e);  // bound < 2^e (e = 0 for 0)
  scale[0] = ldexp(1.0, 62 - max(e, -900));  // tiny float64 gradients: keep the scale finite
  scale[1] = 0.0;
}

// Step 3: fixed point -> gradient dtype; NaN everywhere when the incoming gradient was not finite.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    fixed_to_float_kernel(const FixedT* __restrict__ acc, scalar_t* __restrict__ out, int64_t numel,
                          const double* scale) {
  const double inv = scale[1] != 0.0 ? NAN : 1.0 / scale[0];
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = scalar_t(static_cast<double>(static_cast<long long>(acc[i])) * inv);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

int num_sms(const at::Tensor& t) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, t.get_device()));
  return sms;
}

// All launch math: grid-stride kernels get a few waves of blocks, at least one.
unsigned blocks_for(int64_t work_items, int64_t items_per_block, int sms) {
  return unsigned(std::max<int64_t>(1, std::min(ceil_div(work_items, items_per_block), int64_t(sms) * kBlocksPerSm)));
}

bool is_aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// Validation mode only: the CPU's value checks on the RoIs (one device->host copy).
void validate_rois(const char* op, const at::Tensor& rois, int64_t batch) {
  if (validation_enabled()) {
    roi_align_check_roi_values(op, rois.cpu(), batch);
  }
}

at::MemoryFormat format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

at::Tensor pool_forward_cuda(const RoiPoolParams& p, at::TensorList features, const at::Tensor& rois_in) {
  at::Tensor out = roi_align_check_and_allocate(p, features, rois_in);
  const c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor rois = rois_in.contiguous();
  const int64_t N = features[0].size(0), C = features[0].size(1), K = rois.size(0);
  validate_rois(p.op, rois, N);
  if (out.numel() == 0) {
    return out;
  }
  const bool channels_last = roi_align_channels_last(features[0]);
  std::vector<at::Tensor> levels;
  std::vector<int64_t> heights, widths;
  for (const auto& f : features) {
    levels.push_back(f.contiguous(format_of(channels_last)));
    heights.push_back(f.size(2));
    widths.push_back(f.size(3));
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = num_sms(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rois.scalar_type(), "detbench.roi_align", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto cfg = make_pool_config<T>(p, N, C, heights, widths);
    LevelPtrs<const scalar_t*> in{};
    for (size_t l = 0; l < levels.size(); ++l) {
      in.ptr[l] = levels[l].const_data_ptr<scalar_t>();
    }
    const scalar_t* r = rois.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if (channels_last) {
      // 16 bytes of channels per thread when C and every pointer allow it.
      constexpr int kVec = 16 / sizeof(scalar_t);
      bool aligned16 = C % kVec == 0 && is_aligned16(o);
      for (size_t l = 0; l < levels.size(); ++l) {
        aligned16 = aligned16 && is_aligned16(in.ptr[l]);
      }
      const int64_t items = K * p.pooled_height * p.pooled_width * C;
      if (aligned16) {
        forward_nhwc_kernel<scalar_t, kVec><<<blocks_for(items / kVec, kThreads, sms), kThreads, 0, stream>>>(
            cfg, in, r, o, K);
      } else {
        forward_nhwc_kernel<scalar_t, 1><<<blocks_for(items, kThreads, sms), kThreads, 0, stream>>>(cfg, in, r, o, K);
      }
    } else {
      forward_nchw_kernel<scalar_t><<<blocks_for(K, 1, sms), kThreads, 0, stream>>>(cfg, in, r, o, K);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

template <typename scalar_t, typename AccT>
void launch_backward(const PoolConfig<at::opmath_type<scalar_t>>& cfg, const std::vector<at::Tensor>& acc,
                     const at::Tensor& rois, const at::Tensor& grad, bool channels_last, const double* scale,
                     cudaStream_t stream, int sms) {
  LevelPtrs<AccT*> a{};
  for (size_t l = 0; l < acc.size(); ++l) {
    a.ptr[l] = static_cast<AccT*>(acc[l].mutable_data_ptr());  // int64 storage read as FixedT in deterministic mode
  }
  const int64_t K = rois.size(0), C = cfg.channels;
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  if (channels_last) {
    constexpr int kVec = 16 / sizeof(scalar_t);
    bool aligned16 = C % kVec == 0 && is_aligned16(g);
    for (size_t l = 0; l < acc.size(); ++l) {
      aligned16 = aligned16 && is_aligned16(a.ptr[l]);
    }
    const int64_t items = K * cfg.pooled_height * cfg.pooled_width * C;
    if (aligned16) {
      backward_nhwc_kernel<scalar_t, AccT, kVec>
          <<<blocks_for(items / kVec, kThreads, sms), kThreads, 0, stream>>>(cfg, a, r, g, K, scale);
    } else {
      backward_nhwc_kernel<scalar_t, AccT, 1>
          <<<blocks_for(items, kThreads, sms), kThreads, 0, stream>>>(cfg, a, r, g, K, scale);
    }
  } else {
    backward_nchw_kernel<scalar_t, AccT><<<blocks_for(K, 1, sms), kThreads, 0, stream>>>(cfg, a, r, g, K, scale);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::vector<at::Tensor> pool_backward_cuda(const RoiPoolParams& p, const at::Tensor& grad_in, const at::Tensor& rois_in,
                                           int64_t batch, int64_t channels, at::IntArrayRef heights,
                                           at::IntArrayRef widths, bool channels_last, bool deterministic) {
  std::vector<c10::SymInt> sym_h(heights.begin(), heights.end()), sym_w(widths.begin(), widths.end());
  std::vector<at::Tensor> grads = roi_align_backward_check_and_allocate(p, grad_in, rois_in, batch, channels, sym_h,
                                                                        sym_w, channels_last);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor rois = rois_in.contiguous();
  validate_rois(p.op, rois, batch);
  const at::Tensor grad = grad_in.contiguous(format_of(channels_last));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = num_sms(grad);
  const auto format = format_of(channels_last);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rois.scalar_type(), "detbench.roi_align_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto cfg = make_pool_config<T>(p, batch, channels, heights, widths);
    auto zeros_like_grads = [&](at::ScalarType dtype) {
      std::vector<at::Tensor> acc;
      for (const auto& g : grads) {
        acc.push_back(at::zeros(g.sizes(), g.options().dtype(dtype).memory_format(format)));
      }
      return acc;
    };
    if (deterministic) {
      std::vector<at::Tensor> acc = zeros_like_grads(at::kLong);
      at::Tensor scratch = at::zeros({3}, grad.options().dtype(at::kDouble));  // max bits, scale, non-finite flag
      FixedT* max_bits = reinterpret_cast<FixedT*>(scratch.mutable_data_ptr<double>());
      double* scale = scratch.mutable_data_ptr<double>() + 1;
      if (grad.numel() > 0) {
        abs_max_kernel<scalar_t><<<blocks_for(grad.numel(), kThreads, sms), kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), grad.numel(), max_bits);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      const double terms = double(std::max<int64_t>(1, rois.size(0))) * double(p.pooled_height * p.pooled_width);
      fixed_scale_kernel<<<1, 1, 0, stream>>>(max_bits, terms, scale);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (grad.numel() > 0) {
        launch_backward<scalar_t, FixedT>(cfg, acc, rois, grad, channels_last, scale, stream, sms);
      }
      for (size_t l = 0; l < grads.size(); ++l) {
        if (grads[l].numel() > 0) {
          fixed_to_float_kernel<scalar_t><<<blocks_for(grads[l].numel(), kThreads, sms), kThreads, 0, stream>>>(
              reinterpret_cast<const FixedT*>(acc[l].const_data_ptr()), grads[l].mutable_data_ptr<scalar_t>(),
              grads[l].numel(), scale);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }
    } else if constexpr (std::is_same_v<scalar_t, T>) {  // float32, float64: atomics straight into the result
      for (auto& g : grads) {
        g.zero_();
      }
      if (grad.numel() > 0) {
        launch_backward<scalar_t, T>(cfg, grads, rois, grad, channels_last, nullptr, stream, sms);
      }
    } else {  // float16, bfloat16: float32 accumulator, rounded once
      std::vector<at::Tensor> acc = zeros_like_grads(at::kFloat);
      if (grad.numel() > 0) {
        launch_backward<scalar_t, float>(cfg, acc, rois, grad, channels_last, nullptr, stream, sms);
      }
      for (size_t l = 0; l < grads.size(); ++l) {
        grads[l].copy_(acc[l]);
      }
    }
  });
  return grads;
}

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                          int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  return pool_forward_cuda(roi_align_params(spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned),
                           {input}, rois);
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                   int64_t batch, int64_t channels, int64_t height, int64_t width, bool channels_last,
                                   bool deterministic) {
  const int64_t heights[] = {height};
  const int64_t widths[] = {width};
  return pool_backward_cuda(roi_align_params(spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned), grad,
                            rois, batch, channels, heights, widths, channels_last, deterministic)[0];
}

at::Tensor multiscale_roi_align_cuda(at::TensorList features, const at::Tensor& rois, at::ArrayRef<double> scales,
                                     int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                     int64_t k_min, int64_t k_max, double canonical_scale, double canonical_level) {
  return pool_forward_cuda(multiscale_roi_align_params(scales, pooled_height, pooled_width, sampling_ratio, aligned,
                                                       k_min, k_max, canonical_scale, canonical_level),
                           features, rois);
}

std::vector<at::Tensor> multiscale_roi_align_backward_cuda(
    const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> scales, int64_t pooled_height,
    int64_t pooled_width, int64_t sampling_ratio, bool aligned, int64_t k_min, int64_t k_max, double canonical_scale,
    double canonical_level, int64_t batch, int64_t channels, at::IntArrayRef heights, at::IntArrayRef widths,
    bool channels_last, bool deterministic) {
  return pool_backward_cuda(multiscale_roi_align_params(scales, pooled_height, pooled_width, sampling_ratio, aligned,
                                                        k_min, k_max, canonical_scale, canonical_level),
                            grad, rois, batch, channels, heights, widths, channels_last, deterministic);
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CUDA, m) {
  m.impl("roi_align", &roi_align_cuda);
  m.impl("_roi_align_backward", &roi_align_backward_cuda);
  m.impl("multiscale_roi_align", &multiscale_roi_align_cuda);
  m.impl("_multiscale_roi_align_backward", &multiscale_roi_align_backward_cuda);
}

}  // namespace detbench
