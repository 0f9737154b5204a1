// CUDA kernels of detbench.match_proposals and match_boxes: two passes, as the CPU kernels.
//
// match_proposals reads the [B, G, P] quality matrix: pass 1 (only with the low-quality rule),
// one block per gt row, a max over P; pass 2, one thread per prediction walking its column
// (coalesced across the warp).
// match_boxes never materializes the IoUs: pass 1, each thread holds kPass1 proposals in
// registers and walks the image's gts (staged in shared memory), a warp max and a shared-memory
// atomic max per gt, then one global atomic max per gt and block; pass 2, each thread holds
// kPass2 proposals and walks the gts keeping the best one. Both passes compute each IoU with
// the same formula (iou.h), so "IoU == the gt's highest IoU" holds exactly where torchvision's does.
// No host sync: gt counts are read on the device (clamped to [0, G] outside validation mode).
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/box_iou/iou.h"
#include "ops/matcher/matcher.h"

namespace detbench {

namespace {

constexpr int kThreads = 256;
constexpr int kGtTile = 256;  // gts staged in shared memory at a time
constexpr int kPass1 = 8;     // proposals per thread, pass 1 of match_boxes
constexpr int kPass2 = 4;     // proposals per thread, pass 2 of match_boxes
constexpr int64_t kMaxGridY = 65535;

__device__ __forceinline__ int64_t image_gt_count(const int64_t* counts, int64_t b, int64_t G) {
  return counts == nullptr ? G : min(max(counts[b], int64_t(0)), G);
}

// ---------------------------------------------------------------------------------------------
// match_proposals

template <typename S>
__global__ void __launch_bounds__(kThreads)
    row_max_kernel(const S* __restrict__ iou, const int64_t* __restrict__ counts, at::opmath_type<S>* __restrict__ highest,
                   int64_t G, int64_t P) {
  using T = at::opmath_type<S>;
  __shared__ T partial[kThreads / 32];
  const int64_t row = blockIdx.x;  // b * G + g
  if (row % G >= image_gt_count(counts, row / G, G)) {
    return;
  }
  const S* r = iou + row * P;
  T m = T(r[0]);
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    m = match_max(m, T(r[p]));
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    m = match_max(m, __shfl_xor_sync(0xffffffffu, m, offset));
  }
  if (threadIdx.x % 32 == 0) {
    partial[threadIdx.x / 32] = m;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) {
      m = match_max(m, partial[w]);
    }
    highest[row] = m;
  }
}

template <typename S>
__global__ void __launch_bounds__(kThreads)
    match_columns_kernel(const S* __restrict__ iou, const int64_t* __restrict__ counts,
                         const at::opmath_type<S>* __restrict__ highest, int64_t* __restrict__ out, int64_t B,
                         int64_t G, int64_t P, at::opmath_type<S> high, at::opmath_type<S> low) {
  using T = at::opmath_type<S>;
  const int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (p >= P) {
    return;
  }
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const int64_t n = image_gt_count(counts, b, G);
    const S* col = iou + b * G * P + p;
    T best = T(0);
    int64_t arg = 0;
    bool rescued = false;
    for (int64_t g = 0; g < n; ++g) {
      const T v = T(col[g * P]);
      if (g == 0 || match_better(v, best)) {
        best = v;
        arg = g;
      }
      if (highest != nullptr && v == highest[b * G + g]) {
        rescued = true;
      }
    }
    out[b * P + p] = n == 0 ? kBelowLowThreshold : match_decision(best, arg, rescued, high, low);
  }
}

// Validation mode: the gt counts checked on the host, with a sync.
void check_counts_on_host(const char* op, const std::optional<at::Tensor>& gt_counts, int64_t G) {
  if (!gt_counts.has_value() || !validation_enabled()) {
    return;
  }
  const at::Tensor c = gt_counts->to(at::kCPU, at::kLong);
  for (int64_t b = 0; b < c.size(0); ++b) {
    const int64_t v = c[b].item<int64_t>();
    if (v < 0 || v > G) {
      match_bad_count_error(op, b, v, G);
    }
  }
}

at::Tensor match_proposals_cuda(const at::Tensor& iou_in, const std::optional<at::Tensor>& gt_counts, double high,
                                double low, bool allow_low_quality_matches) {
  at::Tensor out = match_proposals_allocate(iou_in, gt_counts, high, low);
  const at::Tensor iou = iou_in.dim() == 3 ? iou_in.contiguous() : iou_in.unsqueeze(0).contiguous();
  const int64_t B = iou.size(0), G = iou.size(1), P = iou.size(2);
  check_counts_on_host("match_proposals", gt_counts, G);
  if (out.numel() == 0) {
    return out;
  }
  const c10::cuda::CUDAGuard guard(out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor counts = gt_counts.has_value() ? gt_counts->to(at::kLong).contiguous() : at::Tensor();
  const int64_t* counts_ptr = counts.defined() ? counts.const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, iou.scalar_type(), "detbench.match_proposals", [&] {
    using T = at::opmath_type<scalar_t>;
    at::Tensor highest;
    if (allow_low_quality_matches && G > 0) {
      highest = at::empty({B * G}, iou.options().dtype(c10::CppTypeToScalarType<T>::value));
      row_max_kernel<scalar_t><<<unsigned(B * G), kThreads, 0, stream>>>(
          iou.const_data_ptr<scalar_t>(), counts_ptr, highest.mutable_data_ptr<T>(), G, P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const dim3 grid(unsigned(ceil_div<int64_t>(P, kThreads)), unsigned(std::min(B, kMaxGridY)));
    match_columns_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        iou.const_data_ptr<scalar_t>(), counts_ptr, highest.defined() ? highest.const_data_ptr<T>() : nullptr,
        out.mutable_data_ptr<int64_t>(), B, G, P, T(scalar_t(high)), T(scalar_t(low)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// match_boxes

template <typename T>
struct alignas(16) GtBox {
  T x1, y1, x2, y2;
};

// Non-negative floats order as their bits: the atomic max of IoUs (>= 0) on integers.
template <typename T>
using Bits = std::conditional_t<std::is_same_v<T, double>, unsigned long long, unsigned int>;

__device__ __forceinline__ unsigned int to_bits(float v) {
  return __float_as_uint(v);
}
__device__ __forceinline__ unsigned long long to_bits(double v) {
  return static_cast<unsigned long long>(__double_as_longlong(v));
}
__device__ __forceinline__ float from_bits(unsigned int v, float) {
  return __uint_as_float(v);
}
__device__ __forceinline__ double from_bits(unsigned long long v, double) {
  return __longlong_as_double(static_cast<long long>(v));
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    v = iou_max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Stages gts [g0, g0 + n) of one image in shared memory (boxes and areas); returns n.
template <typename S, typename T>
__device__ __forceinline__ int stage_gts(const S* __restrict__ gt, int64_t g0, int64_t count, GtBox<T>* box, T* area) {
  const int n = int(min(int64_t(kGtTile), count - g0));
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const S* s = gt + 4 * (g0 + i);
    const GtBox<T> b{T(s[0]), T(s[1]), T(s[2]), T(s[3])};
    box[i] = b;
    area[i] = box_area(b.x1, b.y1, b.x2, b.y2);
  }
  return n;
}

template <typename S, int K>
__device__ __forceinline__ void load_proposals(const S* __restrict__ props, int64_t first, int64_t stride, int64_t P,
                                               GtBox<at::opmath_type<S>> (&box)[K], at::opmath_type<S> (&area)[K]) {
  using T = at::opmath_type<S>;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t p = min(first + k * stride, P - 1);  // past P: a copy of the last, never used
    const S* s = props + 4 * p;
    box[k] = {T(s[0]), T(s[1]), T(s[2]), T(s[3])};
    area[k] = box_area(box[k].x1, box[k].y1, box[k].x2, box[k].y2);
  }
}

template <typename T>
__device__ __forceinline__ T gt_iou(const GtBox<T>& g, T g_area, const GtBox<T>& p, T p_area) {
  // gt first, as torchvision's box_iou(gt_boxes, proposals): union = area_gt + area_p - inter
  return iou_from_intersection(box_intersection(g.x1, g.y1, g.x2, g.y2, p.x1, p.y1, p.x2, p.y2), g_area, p_area);
}

template <typename S>
__global__ void __launch_bounds__(kThreads)
    gt_highest_iou_kernel(const S* __restrict__ gt, const int64_t* __restrict__ counts, const S* __restrict__ props,
                          Bits<at::opmath_type<S>>* __restrict__ highest, int64_t B, int64_t G, int64_t P,
                          bool shared_props) {
  using T = at::opmath_type<S>;
  __shared__ GtBox<T> gbox[kGtTile];
  __shared__ T garea[kGtTile];
  __shared__ Bits<T> gmax[kGtTile];
  const int64_t first = blockIdx.x * int64_t(blockDim.x) * kPass1 + threadIdx.x;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const int64_t count = image_gt_count(counts, b, G);
    const S* image_props = props + (shared_props ? 0 : b * P * 4);
    GtBox<T> pbox[kPass1];
    T parea[kPass1];
    load_proposals<S, kPass1>(image_props, first, blockDim.x, P, pbox, parea);
    for (int64_t g0 = 0; g0 < count; g0 += kGtTile) {
      __syncthreads();  // the previous tile is no longer read
      const int n = stage_gts<S, T>(gt + b * G * 4, g0, count, gbox, garea);
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        gmax[i] = 0;
      }
      __syncthreads();
      for (int i = 0; i < n; ++i) {
        T m = T(0);
#pragma unroll
        for (int k = 0; k < kPass1; ++k) {
          if (first + k * int64_t(blockDim.x) < P) {
            m = iou_max(m, gt_iou(gbox[i], garea[i], pbox[k], parea[k]));
          }
        }
        m = warp_max(m);
        if (threadIdx.x % 32 == 0) {
          atomicMax(&gmax[i], to_bits(m));
        }
      }
      __syncthreads();
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        atomicMax(&highest[b * G + g0 + i], gmax[i]);
      }
    }
  }
}

template <typename S>
__global__ void __launch_bounds__(kThreads)
    match_boxes_kernel(const S* __restrict__ gt, const int64_t* __restrict__ counts, const S* __restrict__ props,
                       const Bits<at::opmath_type<S>>* __restrict__ highest, int64_t* __restrict__ out, int64_t B,
                       int64_t G, int64_t P, bool shared_props, at::opmath_type<S> high, at::opmath_type<S> low) {
  using T = at::opmath_type<S>;
  __shared__ GtBox<T> gbox[kGtTile];
  __shared__ T garea[kGtTile];
  __shared__ T ghigh[kGtTile];
  const int64_t first = blockIdx.x * int64_t(blockDim.x) * kPass2 + threadIdx.x;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const int64_t count = image_gt_count(counts, b, G);
    const S* image_props = props + (shared_props ? 0 : b * P * 4);
    GtBox<T> pbox[kPass2];
    T parea[kPass2];
    load_proposals<S, kPass2>(image_props, first, blockDim.x, P, pbox, parea);
    T best[kPass2];
    int64_t arg[kPass2];
    bool rescued[kPass2];
#pragma unroll
    for (int k = 0; k < kPass2; ++k) {
      best[k] = T(0);
      arg[k] = 0;
      rescued[k] = false;
    }
    for (int64_t g0 = 0; g0 < count; g0 += kGtTile) {
      __syncthreads();
      const int n = stage_gts<S, T>(gt + b * G * 4, g0, count, gbox, garea);
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        ghigh[i] = highest != nullptr ? from_bits(highest[b * G + g0 + i], T(0)) : T(0);
      }
      __syncthreads();
      for (int i = 0; i < n; ++i) {
#pragma unroll
        for (int k = 0; k < kPass2; ++k) {
          const T v = gt_iou(gbox[i], garea[i], pbox[k], parea[k]);
          if ((g0 == 0 && i == 0) || match_better(v, best[k])) {
            best[k] = v;
            arg[k] = g0 + i;
          }
          rescued[k] |= highest != nullptr && v == ghigh[i];
        }
      }
    }
#pragma unroll
    for (int k = 0; k < kPass2; ++k) {
      const int64_t p = first + k * int64_t(blockDim.x);
      if (p < P) {
        out[b * P + p] = count == 0 ? kBelowLowThreshold : match_decision(best[k], arg[k], rescued[k], high, low);
      }
    }
  }
}

// Validation mode: non-finite coordinates raise the CPU's error (with a sync).
void check_finite_boxes(const char* arg, const at::Tensor& boxes, bool batched) {
  const at::Tensor bad = at::isfinite(boxes).all(-1).logical_not().nonzero();
  if (bad.size(0) > 0) {
    const at::Tensor first = bad[0].cpu();
    if (boxes.dim() == 3 && batched) {
      TORCH_CHECK(false, "detbench.match_boxes: ", arg, " has a non-finite coordinate (NaN or inf) at box ",
                  first[1].item<int64_t>(), " of image ", first[0].item<int64_t>());
    }
    TORCH_CHECK(false, "detbench.match_boxes: ", arg, " has a non-finite coordinate (NaN or inf) at box ",
                first[first.size(0) - 1].item<int64_t>());
  }
}

at::Tensor match_boxes_cuda(const at::Tensor& gt_in, const std::optional<at::Tensor>& gt_counts,
                            const at::Tensor& props_in, double high, double low, bool allow_low_quality_matches) {
  at::Tensor out = match_boxes_allocate(gt_in, gt_counts, props_in, high, low);
  const bool batched = gt_in.dim() == 3;
  const at::Tensor gt = batched ? gt_in.contiguous() : gt_in.unsqueeze(0).contiguous();
  const at::Tensor props = props_in.contiguous();
  const int64_t B = gt.size(0), G = gt.size(1), P = props.size(-2);
  check_counts_on_host("match_boxes", gt_counts, G);
  if (out.numel() == 0) {
    return out;
  }
  if (validation_enabled()) {
    // only the gts each image uses: padding rows may hold anything
    const at::Tensor counts = gt_counts.has_value() ? gt_counts->to(gt.device(), at::kLong) : at::full({B}, G, gt.options().dtype(at::kLong));
    const at::Tensor used = at::arange(G, counts.options()).unsqueeze(0) < counts.unsqueeze(1);
    const at::Tensor bad_gt = at::isfinite(gt).all(-1).logical_not().logical_and(used).nonzero();
    if (bad_gt.size(0) > 0) {
      const at::Tensor first = bad_gt[0].cpu();
      if (batched) {
        TORCH_CHECK(false, "detbench.match_boxes: gt_boxes has a non-finite coordinate (NaN or inf) at box ",
                    first[1].item<int64_t>(), " of image ", first[0].item<int64_t>());
      }
      TORCH_CHECK(false, "detbench.match_boxes: gt_boxes has a non-finite coordinate (NaN or inf) at box ",
                  first[1].item<int64_t>());
    }
    check_finite_boxes("proposals", props, batched);
  }
  const c10::cuda::CUDAGuard guard(out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor counts = gt_counts.has_value() ? gt_counts->to(at::kLong).contiguous() : at::Tensor();
  const int64_t* counts_ptr = counts.defined() ? counts.const_data_ptr<int64_t>() : nullptr;
  const bool shared_props = props.dim() == 2;
  const unsigned grid_y = unsigned(std::min(B, kMaxGridY));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt.scalar_type(), "detbench.match_boxes", [&] {
    using T = at::opmath_type<scalar_t>;
    using U = Bits<T>;
    at::Tensor highest;
    if (allow_low_quality_matches && G > 0) {
      // zero = the smallest IoU: every image has P >= 1 proposals here
      highest = at::zeros({B * G}, gt.options().dtype(sizeof(U) == 8 ? at::kLong : at::kInt));
      const dim3 grid(unsigned(ceil_div<int64_t>(P, int64_t(kThreads) * kPass1)), grid_y);
      gt_highest_iou_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          gt.const_data_ptr<scalar_t>(), counts_ptr, props.const_data_ptr<scalar_t>(),
          reinterpret_cast<U*>(highest.mutable_data_ptr()), B, G, P, shared_props);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const dim3 grid(unsigned(ceil_div<int64_t>(P, int64_t(kThreads) * kPass2)), grid_y);
    match_boxes_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        gt.const_data_ptr<scalar_t>(), counts_ptr, props.const_data_ptr<scalar_t>(),
        highest.defined() ? reinterpret_cast<const U*>(highest.const_data_ptr()) : nullptr,
        out.mutable_data_ptr<int64_t>(), B, G, P, shared_props, T(high), T(low));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CUDA, m) {
  m.impl("match_proposals", &match_proposals_cuda);
  m.impl("match_boxes", &match_boxes_cuda);
}

}  // namespace detbench
