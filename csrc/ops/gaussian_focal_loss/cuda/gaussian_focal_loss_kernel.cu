// CUDA kernels of detbench.gaussian_focal_loss and its backward.
//
// Bandwidth-bound: the forward reads pred and target once (and writes the loss for 'none'),
// the backward reads pred, target (and the grad for 'none') and writes grad_pred, in one pass,
// recomputing what it needs. Each thread moves 16 bytes of each tensor per step. The 'mean'
// and 'sum' reductions are one pass over the data: per-block float32 partial sums (a fixed grid
// for a given size and device), then one block adds the partials in a fixed order in float64:
// deterministic, run to run.
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
#include "ops/gaussian_focal_loss/gaussian_focal_loss.h"

namespace detbench {

namespace {

constexpr int kThreads = 256;
constexpr int kFinalizeThreads = 256;

// kVec elements of one tensor, loaded or stored with one 16-byte access.
template <typename scalar_t>
struct alignas(16) Pack {
  static constexpr int kVec = 16 / sizeof(scalar_t);
  scalar_t v[kVec];
};

template <typename scalar_t, bool kAligned>
__device__ __forceinline__ Pack<scalar_t> load_pack(const scalar_t* __restrict__ data, int64_t first, int64_t n) {
  Pack<scalar_t> pack;
  if (kAligned && first + Pack<scalar_t>::kVec <= n) {
    pack = *reinterpret_cast<const Pack<scalar_t>*>(data + first);
  } else {
#pragma unroll
    for (int v = 0; v < Pack<scalar_t>::kVec; ++v) {
      pack.v[v] = first + v < n ? data[first + v] : scalar_t(0);
    }
  }
  return pack;
}

template <typename scalar_t, bool kAligned>
__device__ __forceinline__ void store_pack(scalar_t* __restrict__ data, int64_t first, int64_t n,
                                           const Pack<scalar_t>& pack) {
  if (kAligned && first + Pack<scalar_t>::kVec <= n) {
    *reinterpret_cast<Pack<scalar_t>*>(data + first) = pack;
  } else {
#pragma unroll
    for (int v = 0; v < Pack<scalar_t>::kVec; ++v) {
      if (first + v < n) {
        data[first + v] = pack.v[v];
      }
    }
  }
}

// A thread's packs of one grid-stride step: kUnroll packs of each tensor, all loads issued
// before any use (v1 loaded one pack of each and computed it: too few bytes in flight per SM,
// fp16 ran no faster than fp32).
constexpr int kUnroll = 2;

template <typename scalar_t, bool kAligned>
__device__ __forceinline__ void load_packs(const scalar_t* __restrict__ pred, const scalar_t* __restrict__ target,
                                           int64_t first, int64_t stride, int64_t n, Pack<scalar_t> (&p)[kUnroll],
                                           Pack<scalar_t> (&t)[kUnroll]) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    p[u] = load_pack<scalar_t, kAligned>(pred, first + u * stride, n);
    t[u] = load_pack<scalar_t, kAligned>(target, first + u * stride, n);
  }
}

// mmdet's default exponents (alpha = 2, gamma = 4) as compile-time constants: focal_pow and
// focal_times_dpow fold into multiplies (v3 ran instruction-bound: float16 no faster than float32).
template <bool kDefaultExponents, typename T>
__device__ __forceinline__ GaussianFocalParams<T> with_exponents(GaussianFocalParams<T> q) {
  if constexpr (kDefaultExponents) {
    q.alpha = T(2);
    q.gamma = T(4);
    q.one_term = true;
  }
  return q;
}

// Whether every pred of the pack is in [0, 1] (gaussian_focal_one_term_ok). Half types compare
// their bit patterns, two per instruction: 0 <= x <= 1 is bits <= bits(1) as unsigned 16-bit
// numbers (a sign bit or a NaN is larger; -0 fails, which only takes the general path). The
// float compares cost ~3 instructions per element of an issue-bound kernel.
template <typename scalar_t, typename T>
__device__ __forceinline__ bool pack_in_unit_interval(const Pack<scalar_t>& p) {
  if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>) {
    constexpr unsigned kOne = std::is_same_v<scalar_t, at::Half> ? 0x3C00u : 0x3F80u;
    const unsigned* words = reinterpret_cast<const unsigned*>(p.v);
    unsigned above = 0;
#pragma unroll
    for (int w = 0; w < int(sizeof(p.v) / 4); ++w) {
      above |= __vcmpgtu2(words[w], kOne * 0x10001u);
    }
    return above == 0;
  } else {
    bool inside = true;
#pragma unroll
    for (int v = 0; v < Pack<scalar_t>::kVec; ++v) {
      inside &= (T(p.v[v]) >= T(0)) & (T(p.v[v]) <= T(1));
    }
    return inside;
  }
}

// A pack's values (kGrad: d loss / d pred): the one-term formula for the whole pack when every
// element allows it (the usual case; branch-free, so the pack's elements interleave instead of
// running one after another between branches), else the per-element choice.
template <bool kGrad, typename scalar_t, typename T>
__device__ __forceinline__ void focal_pack(const Pack<scalar_t>& p, const Pack<scalar_t>& t,
                                           const GaussianFocalParams<T>& q, T (&out)[Pack<scalar_t>::kVec]) {
  constexpr int kVec = Pack<scalar_t>::kVec;
  // float16/bfloat16 storage: the hardware log (focal_fast_log_den); float32 and float64 keep logf.
  constexpr bool kFastLog = !std::is_same_v<scalar_t, T>;
  if (q.one_term && pack_in_unit_interval<scalar_t, T>(p)) {
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      out[v] = kGrad ? gaussian_focal_grad_one_term<kFastLog>(T(p.v[v]), T(t.v[v]), q)
                     : gaussian_focal_value_one_term<kFastLog>(T(p.v[v]), T(t.v[v]), q);
    }
  } else {
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      out[v] = kGrad ? gaussian_focal_grad(T(p.v[v]), T(t.v[v]), q) : gaussian_focal_value(T(p.v[v]), T(t.v[v]), q);
    }
  }
}

// Forward, 'none': the loss per element.
template <typename scalar_t, bool kAligned, bool kDefaultExponents>
__global__ void __launch_bounds__(kThreads)
    focal_loss_elementwise_kernel(const scalar_t* __restrict__ pred, const scalar_t* __restrict__ target,
                                  scalar_t* __restrict__ out, int64_t n,
                                  GaussianFocalParams<at::opmath_type<scalar_t>> params) {
  using T = at::opmath_type<scalar_t>;
  const GaussianFocalParams<T> q = with_exponents<kDefaultExponents>(params);
  constexpr int kVec = Pack<scalar_t>::kVec;
  const int64_t stride = int64_t(gridDim.x) * kThreads * kVec;
  for (int64_t first = (int64_t(blockIdx.x) * kThreads + threadIdx.x) * kVec; first < n;
       first += kUnroll * stride) {
    Pack<scalar_t> p[kUnroll], t[kUnroll];
    load_packs<scalar_t, kAligned>(pred, target, first, stride, n, p, t);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      T values[kVec];
      focal_pack<false>(p[u], t[u], q, values);
      Pack<scalar_t> o;
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        o.v[v] = static_cast<scalar_t>(values[v]);
      }
      store_pack<scalar_t, kAligned>(out, first + u * stride, n, o);
    }
  }
}

// Sum of `value` over the block, valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_sum(T value, T* shared) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    shared[warp] = value;
  }
  __syncthreads();
  value = 0;
  if (warp == 0) {
    value = lane < int(blockDim.x / 32) ? shared[lane] : T(0);
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      value += __shfl_down_sync(0xffffffffu, value, offset);
    }
  }
  return value;
}

// Forward, 'mean'/'sum', pass 1: one partial sum per block.
template <typename scalar_t, bool kAligned, bool kDefaultExponents>
__global__ void __launch_bounds__(kThreads)
    focal_loss_partial_kernel(const scalar_t* __restrict__ pred, const scalar_t* __restrict__ target,
                              at::opmath_type<scalar_t>* __restrict__ partials, int64_t n,
                              GaussianFocalParams<at::opmath_type<scalar_t>> params) {
  using T = at::opmath_type<scalar_t>;
  const GaussianFocalParams<T> q = with_exponents<kDefaultExponents>(params);
  constexpr int kVec = Pack<scalar_t>::kVec;
  __shared__ T shared[kThreads / 32];
  T acc = 0;
  const int64_t stride = int64_t(gridDim.x) * kThreads * kVec;
  for (int64_t first = (int64_t(blockIdx.x) * kThreads + threadIdx.x) * kVec; first < n;
       first += kUnroll * stride) {
    Pack<scalar_t> p[kUnroll], t[kUnroll];
    load_packs<scalar_t, kAligned>(pred, target, first, stride, n, p, t);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      T values[kVec];
      focal_pack<false>(p[u], t[u], q, values);
      const int64_t count = n - (first + u * stride);
      if (count >= kVec) {
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          acc += values[v];
        }
      } else {  // the last, partial pack: its padding is not summed
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          acc += v < count ? values[v] : T(0);
        }
      }
    }
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = acc;
  }
}

// Pass 2: one block adds the partials in a fixed order, in float64, and divides.
template <typename scalar_t>
__global__ void __launch_bounds__(kFinalizeThreads)
    focal_loss_finalize_kernel(const at::opmath_type<scalar_t>* __restrict__ partials, int count,
                               scalar_t* __restrict__ out, double divisor) {
  using T = at::opmath_type<scalar_t>;
  __shared__ double shared[kFinalizeThreads / 32];
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += kFinalizeThreads) {
    acc += double(partials[i]);
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) {
    out[0] = static_cast<scalar_t>(T(acc) / T(divisor));
  }
}

// Backward: grad_pred = grad * d loss / d pred, grad per element ('none') or one scalar
// divided by the reduction's divisor ('mean'/'sum', read on the device: no sync; it scales the
// weights).
template <typename scalar_t, bool kAligned, bool kDefaultExponents, bool kPerElement>
__global__ void __launch_bounds__(kThreads)
    focal_loss_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ pred,
                               const scalar_t* __restrict__ target, scalar_t* __restrict__ out, int64_t n,
                               GaussianFocalParams<at::opmath_type<scalar_t>> params, double divisor) {
  using T = at::opmath_type<scalar_t>;
  GaussianFocalParams<T> q = with_exponents<kDefaultExponents>(params);
  if constexpr (!kPerElement) {  // the one upstream gradient, folded into the weights
    const T scale = T(grad[0]) / T(divisor);
    q.pos_weight *= scale;
    q.neg_weight *= scale;
  }
  constexpr int kVec = Pack<scalar_t>::kVec;
  const int64_t stride = int64_t(gridDim.x) * kThreads * kVec;
  for (int64_t first = (int64_t(blockIdx.x) * kThreads + threadIdx.x) * kVec; first < n;
       first += kUnroll * stride) {
    Pack<scalar_t> p[kUnroll], t[kUnroll], g[kUnroll];
    load_packs<scalar_t, kAligned>(pred, target, first, stride, n, p, t);
    if constexpr (kPerElement) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        g[u] = load_pack<scalar_t, kAligned>(grad, first + u * stride, n);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      T d[kVec];
      focal_pack<true>(p[u], t[u], q, d);
      Pack<scalar_t> o;
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        o.v[v] = static_cast<scalar_t>(kPerElement ? T(g[u].v[v]) * d[v] : d[v]);
      }
      store_pack<scalar_t, kAligned>(out, first + u * stride, n, o);
    }
  }
}

// All of the launch math: enough blocks for every 16-byte pack, at most as many blocks of kKernel
// as fit on the GPU at once (grid-stride beyond: one wave; v7's 8 per SM made two waves of 4, and
// one wave measured the float32 forward 8 % faster). The grid depends only on n, the device and
// the binary, so the partial sums do too. Occupancy is asked once per kernel (it depends on the
// kernel's registers and the architecture, which the binary fixes).
template <auto kKernel>
int64_t grid_for(int64_t n, int vec) {
  static const int resident_per_sm = [] {
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kKernel, kThreads, 0));
    return std::max(blocks, 1);
  }();
  const int64_t cap = int64_t(sm_count()) * resident_per_sm;
  return std::max<int64_t>(1, std::min(ceil_div<int64_t>(n, int64_t(kThreads) * vec), cap));
}

bool aligned16(const at::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

// Calls f(std::bool_constant<kAligned>, std::bool_constant<kDefaultExponents>) for run-time values.
template <typename F>
void dispatch_variant(bool aligned, double alpha, double gamma, F&& f) {
  auto by_exponents = [&](auto kAligned) {
    if (alpha == 2.0 && gamma == 4.0) {
      f(kAligned, std::true_type{});
    } else {
      f(kAligned, std::false_type{});
    }
  };
  if (aligned) {
    by_exponents(std::true_type{});
  } else {
    by_exponents(std::false_type{});
  }
}

at::Tensor forward_cuda(const at::Tensor& pred_in, const at::Tensor& target_in, double alpha, double gamma,
                        double pos_weight, double neg_weight, c10::string_view reduction_name,
                        std::optional<double> avg_factor) {
  const GaussianFocalReduction reduction =
      gaussian_focal_loss_check(pred_in, target_in, alpha, gamma, pos_weight, neg_weight, reduction_name, avg_factor);
  const c10::cuda::CUDAGuard guard(pred_in.device());
  at::Tensor out = gaussian_focal_loss_allocate(pred_in, reduction);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const int64_t n = pred.numel();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (n == 0 && reduction == GaussianFocalReduction::kNone) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "detbench.gaussian_focal_loss", [&] {
    using T = at::opmath_type<scalar_t>;
    constexpr int kVec = Pack<scalar_t>::kVec;
    const auto q = gaussian_focal_params<at::opmath_type<scalar_t>>(alpha, gamma, pos_weight, neg_weight);
    const scalar_t* p = pred.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    if (reduction == GaussianFocalReduction::kNone) {
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      dispatch_variant(aligned16(pred) && aligned16(target) && aligned16(out), alpha, gamma,
                       [&](auto kAligned, auto kDefaults) {
                         constexpr auto kernel = focal_loss_elementwise_kernel<scalar_t, kAligned, kDefaults>;
                         kernel<<<unsigned(grid_for<kernel>(n, kVec)), kThreads, 0, stream>>>(p, t, o, n, q);
                       });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    // The partial kernel's grid depends only on alignment and exponents besides n: computed with
    // the kernel, then the partials sized by it.
    at::Tensor partials;
    dispatch_variant(aligned16(pred) && aligned16(target), alpha, gamma, [&](auto kAligned, auto kDefaults) {
      constexpr auto kernel = focal_loss_partial_kernel<scalar_t, kAligned, kDefaults>;
      const int64_t grid = grid_for<kernel>(n, kVec);
      partials = at::empty({grid}, pred.options().dtype(c10::CppTypeToScalarType<T>::value));
      kernel<<<unsigned(grid), kThreads, 0, stream>>>(p, t, partials.mutable_data_ptr<T>(), n, q);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    focal_loss_finalize_kernel<scalar_t><<<1, kFinalizeThreads, 0, stream>>>(
        partials.const_data_ptr<T>(), int(partials.numel()), out.mutable_data_ptr<scalar_t>(),
        gaussian_focal_loss_divisor(n, reduction, avg_factor));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor backward_cuda(const at::Tensor& grad_in, const at::Tensor& pred_in, const at::Tensor& target_in,
                         double alpha, double gamma, double pos_weight, double neg_weight,
                         c10::string_view reduction_name, std::optional<double> avg_factor) {
  const GaussianFocalReduction reduction =
      gaussian_focal_loss_backward_check(grad_in, pred_in, target_in, alpha, gamma, pos_weight, neg_weight, reduction_name, avg_factor);
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous(), grad = grad_in.contiguous();
  at::Tensor out = at::empty(pred.sizes(), pred.options());
  const int64_t n = pred.numel();
  if (n == 0) {
    return out;
  }
  const double divisor = gaussian_focal_loss_divisor(n, reduction, avg_factor);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool per_element = reduction == GaussianFocalReduction::kNone;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "detbench.gaussian_focal_loss", [&] {
    constexpr int kVec = Pack<scalar_t>::kVec;
    const auto q = gaussian_focal_params<at::opmath_type<scalar_t>>(alpha, gamma, pos_weight, neg_weight);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* p = pred.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const bool aligned = aligned16(pred) && aligned16(target) && aligned16(out) && (!per_element || aligned16(grad));
    dispatch_variant(aligned, alpha, gamma, [&](auto kAligned, auto kDefaults) {
      const auto launch = [&](auto kPerElement) {
        constexpr auto kernel = focal_loss_backward_kernel<scalar_t, kAligned, kDefaults, kPerElement>;
        kernel<<<unsigned(grid_for<kernel>(n, kVec)), kThreads, 0, stream>>>(g, p, t, o, n, q, divisor);
      };
      if (per_element) {
        launch(std::true_type{});
      } else {
        launch(std::false_type{});
      }
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CUDA, m) {
  m.impl("gaussian_focal_loss", &forward_cuda);
  m.impl("gaussian_focal_loss_backward", &backward_cuda);
}

}  // namespace detbench
