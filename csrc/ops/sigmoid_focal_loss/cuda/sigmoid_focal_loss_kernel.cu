// CUDA kernels of detbench.sigmoid_focal_loss and its backward: one fused, memory-bound pass
// each (torchvision runs ~10 elementwise kernels forward and more backward).
//
// Each thread loads kUnroll packs of VEC elements (16 bytes of inputs) per loop iteration, all
// loads first so they are in flight together, computes in float (double for float64) and, for
// 'none', stores the loss with one vector store per pack. 'mean'/'sum' is a single pass too:
// each block reduces its sum, writes it to partials[block], and the last block to finish (a
// ticket from an atomic counter) adds the partials in double in a fixed order, so the result is
// deterministic for a given size and GPU. Misaligned tensors (a view starting mid-pack) take the
// same kernel with scalar loads. Bytes: forward reads inputs + targets (+ writes the loss for
// 'none'); backward reads inputs + targets (+ grad for 'none') and writes the input gradient.
#include <algorithm>
#include <cstdint>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/sigmoid_focal_loss/sigmoid_focal_loss.h"

namespace detbench {

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 2;
constexpr int64_t kBlocksPerSm = 8;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* __restrict__ p, int64_t pack) {
  return reinterpret_cast<const Pack<T, N>*>(p)[pack];
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// The block's sum of v, valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T warp_sums[kThreads / 32];
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    warp_sums[warp] = v;
  }
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : T(0);
  if (warp == 0) {
    v = warp_sum(v);
  }
  __syncthreads();  // warp_sums may be reused by a second call
  return v;
}

template <typename scalar_t>
constexpr int vec_size() {
  return 16 / int(sizeof(scalar_t));
}

// A result stored in float16/bfloat16 (the forward's loss, the backward's gradient of half logits)
// takes the hardware's exp, log and reciprocal (FocalFastMath); one stored in float32 or float64
// std's (half logits with float32 targets give a float32 loss, accurate to float32).
template <typename scalar_t>
using focal_math_t =
    std::conditional_t<std::is_same_v<scalar_t, at::opmath_type<scalar_t>>, FocalStdMath, FocalFastMath>;

// The forward: out[i] = loss(i) for 'none'; else out[0] = the sum or mean.
template <typename scalar_t, typename target_t, bool kGamma2, FocalReduction R, bool kVec>
__global__ void __launch_bounds__(kThreads)
    focal_forward_kernel(const scalar_t* __restrict__ x, const target_t* __restrict__ t,
                         focal_out_t<scalar_t, target_t>* __restrict__ out, double* __restrict__ partials,
                         unsigned int* __restrict__ counter, int64_t n, FocalParams<at::opmath_type<scalar_t>> fp) {
  using T = at::opmath_type<scalar_t>;
  using out_t = focal_out_t<scalar_t, target_t>;
  constexpr int VEC = vec_size<scalar_t>();
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t packs = kVec ? n / VEC : 0;
  T acc = 0;
  for (int64_t base = tid; base < packs; base += stride * kUnroll) {
    Pack<scalar_t, VEC> xv[kUnroll];
    Pack<target_t, VEC> tv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t pack = base + u * stride;
      if (pack < packs) {
        xv[u] = load_pack<scalar_t, VEC>(x, pack);
        tv[u] = load_pack<target_t, VEC>(t, pack);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t pack = base + u * stride;
      if (pack < packs) {
        Pack<out_t, VEC> ov;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const T loss = focal_loss_value<T, kGamma2, focal_math_t<out_t>>(T(xv[u].v[k]), T(tv[u].v[k]), fp);
          if constexpr (R == FocalReduction::kNone) {
            ov.v[k] = static_cast<out_t>(loss);
          } else {
            acc += loss;
          }
        }
        if constexpr (R == FocalReduction::kNone) {
          reinterpret_cast<Pack<out_t, VEC>*>(out)[pack] = ov;
        }
      }
    }
  }
  for (int64_t i = packs * VEC + tid; i < n; i += stride) {  // the tail, or everything unaligned
    const T loss = focal_loss_value<T, kGamma2, focal_math_t<out_t>>(T(x[i]), T(t[i]), fp);
    if constexpr (R == FocalReduction::kNone) {
      out[i] = static_cast<out_t>(loss);
    } else {
      acc += loss;
    }
  }
  if constexpr (R != FocalReduction::kNone) {
    const T sum = block_sum(acc);
    __shared__ bool last;
    if (threadIdx.x == 0) {
      partials[blockIdx.x] = static_cast<double>(sum);
      __threadfence();  // the partial is visible before the ticket is taken
      last = atomicAdd(counter, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (last) {  // every other block's partial is written: add them all in a fixed order
      double total = 0;
      for (int b = threadIdx.x; b < int(gridDim.x); b += blockDim.x) {
        total += __ldcg(partials + b);
      }
      total = block_sum(total);
      if (threadIdx.x == 0) {
        out[0] = static_cast<out_t>(R == FocalReduction::kMean ? total / static_cast<double>(n) : total);
      }
    }
  }
}

// The backward: dx[i] = grad(i) * d loss(i) / d x(i); grad is per element for 'none', else one
// value (divided by n for 'mean').
template <typename scalar_t, typename target_t, bool kGamma2, FocalReduction R, bool kVec>
__global__ void __launch_bounds__(kThreads)
    focal_backward_kernel(const focal_out_t<scalar_t, target_t>* __restrict__ grad, const scalar_t* __restrict__ x,
                          const target_t* __restrict__ t, scalar_t* __restrict__ dx, int64_t n,
                          FocalParams<at::opmath_type<scalar_t>> fp) {
  using T = at::opmath_type<scalar_t>;
  using out_t = focal_out_t<scalar_t, target_t>;
  constexpr int VEC = vec_size<scalar_t>();
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t packs = kVec ? n / VEC : 0;
  T scale = 0;
  if constexpr (R != FocalReduction::kNone) {
    scale = static_cast<T>(grad[0]);
    if constexpr (R == FocalReduction::kMean) {
      scale /= static_cast<T>(n);
    }
  }
  for (int64_t base = tid; base < packs; base += stride * kUnroll) {
    Pack<scalar_t, VEC> xv[kUnroll];
    Pack<target_t, VEC> tv[kUnroll];
    Pack<out_t, VEC> gv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t pack = base + u * stride;
      if (pack < packs) {
        xv[u] = load_pack<scalar_t, VEC>(x, pack);
        tv[u] = load_pack<target_t, VEC>(t, pack);
        if constexpr (R == FocalReduction::kNone) {
          gv[u] = load_pack<out_t, VEC>(grad, pack);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t pack = base + u * stride;
      if (pack < packs) {
        Pack<scalar_t, VEC> dv;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const T g = R == FocalReduction::kNone ? static_cast<T>(gv[u].v[k]) : scale;
          dv.v[k] = static_cast<scalar_t>(g * focal_loss_grad<T, kGamma2, focal_math_t<scalar_t>>(T(xv[u].v[k]), T(tv[u].v[k]), fp));
        }
        reinterpret_cast<Pack<scalar_t, VEC>*>(dx)[pack] = dv;
      }
    }
  }
  for (int64_t i = packs * VEC + tid; i < n; i += stride) {
    const T g = R == FocalReduction::kNone ? static_cast<T>(grad[i]) : scale;
    dx[i] = static_cast<scalar_t>(g * focal_loss_grad<T, kGamma2, focal_math_t<scalar_t>>(T(x[i]), T(t[i]), fp));
  }
}

// All of the launch math: enough blocks to cover the packs, at most kBlocksPerSm per SM (the
// threads loop beyond), so the reduction's partials count is fixed by n and the GPU.
int grid_size(int64_t n, int vec, int device) {
  const int num_sms = sm_count(device);
  const int64_t work = std::max<int64_t>(1, ceil_div<int64_t>(n, int64_t(vec) * kUnroll));
  return int(std::min(ceil_div<int64_t>(work, kThreads), num_sms * kBlocksPerSm));
}

bool aligned(const at::Tensor& t, int64_t bytes) {
  return reinterpret_cast<std::uintptr_t>(t.const_data_ptr()) % bytes == 0;
}

template <typename T>
FocalParams<T> focal_params(double alpha, double gamma) {
  return {static_cast<T>(alpha), static_cast<T>(gamma), alpha >= 0.0};
}

// Calls f(std::integral_constant<bool, kGamma2>, std::integral_constant<FocalReduction, R>).
template <typename F>
void dispatch_variant(double gamma, FocalReduction reduction, F&& f) {
  auto with_reduction = [&](auto g2) {
    switch (reduction) {
      case FocalReduction::kNone:
        return f(g2, std::integral_constant<FocalReduction, FocalReduction::kNone>{});
      case FocalReduction::kMean:
        return f(g2, std::integral_constant<FocalReduction, FocalReduction::kMean>{});
      case FocalReduction::kSum:
        return f(g2, std::integral_constant<FocalReduction, FocalReduction::kSum>{});
    }
  };
  if (gamma == 2.0) {
    with_reduction(std::true_type{});
  } else {
    with_reduction(std::false_type{});
  }
}

at::Tensor focal_forward_cuda(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                              c10::string_view reduction_name) {
  const FocalReduction reduction = focal_check(inputs, targets, alpha, gamma, reduction_name);
  at::Tensor out = focal_allocate_output(inputs, targets, reduction);
  const int64_t n = inputs.numel();
  if (n == 0) {  // torch: the mean of nothing is NaN (0 / 0), the sum 0
    return reduction == FocalReduction::kNone ? out
                                              : out.fill_(reduction == FocalReduction::kMean ? NAN : 0.0);
  }
  const c10::cuda::CUDAGuard guard(inputs.device());
  const at::Tensor x = inputs.contiguous();
  const at::Tensor t = targets.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  focal_dispatch(x, t, [&](auto* s, auto* tt) {
    using scalar_t = std::remove_pointer_t<decltype(s)>;
    using target_t = std::remove_pointer_t<decltype(tt)>;
    using out_t = focal_out_t<scalar_t, target_t>;
    using T = at::opmath_type<scalar_t>;
    constexpr int VEC = vec_size<scalar_t>();
    const bool vec = aligned(x, VEC * sizeof(scalar_t)) && aligned(t, VEC * sizeof(target_t)) &&
                     (reduction != FocalReduction::kNone || aligned(out, VEC * sizeof(out_t)));
    const int grid = grid_size(n, vec ? VEC : 1, x.get_device());
    at::Tensor partials;
    at::Tensor counter;
    if (reduction != FocalReduction::kNone) {
      partials = at::empty({grid}, x.options().dtype(at::kDouble));
      counter = at::zeros({1}, x.options().dtype(at::kInt));
    }
    dispatch_variant(gamma, reduction, [&](auto g2, auto r) {
      constexpr bool kGamma2 = decltype(g2)::value;
      constexpr FocalReduction R = decltype(r)::value;
      auto* o = out.mutable_data_ptr<out_t>();
      double* p = R == FocalReduction::kNone ? nullptr : partials.mutable_data_ptr<double>();
      auto* c = R == FocalReduction::kNone ? nullptr : reinterpret_cast<unsigned int*>(counter.mutable_data_ptr<int>());
      const auto fp = focal_params<T>(alpha, gamma);
      if (vec) {
        focal_forward_kernel<scalar_t, target_t, kGamma2, R, true><<<grid, kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), t.const_data_ptr<target_t>(), o, p, c, n, fp);
      } else {
        focal_forward_kernel<scalar_t, target_t, kGamma2, R, false><<<grid, kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), t.const_data_ptr<target_t>(), o, p, c, n, fp);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor focal_backward_cuda(const at::Tensor& grad, const at::Tensor& inputs, const at::Tensor& targets,
                               double alpha, double gamma, c10::string_view reduction_name) {
  const FocalReduction reduction = focal_check(inputs, targets, alpha, gamma, reduction_name);
  focal_check_grad(grad, inputs, targets, reduction);
  at::Tensor dx = at::empty(inputs.sizes(), inputs.options());
  const int64_t n = inputs.numel();
  if (n == 0) {
    return dx;
  }
  const c10::cuda::CUDAGuard guard(inputs.device());
  const at::Tensor x = inputs.contiguous();
  const at::Tensor t = targets.contiguous();
  const at::Tensor g = grad.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  focal_dispatch(x, t, [&](auto* s, auto* tt) {
    using scalar_t = std::remove_pointer_t<decltype(s)>;
    using target_t = std::remove_pointer_t<decltype(tt)>;
    using out_t = focal_out_t<scalar_t, target_t>;
    using T = at::opmath_type<scalar_t>;
    constexpr int VEC = vec_size<scalar_t>();
    const bool vec = aligned(x, VEC * sizeof(scalar_t)) && aligned(t, VEC * sizeof(target_t)) &&
                     aligned(dx, VEC * sizeof(scalar_t)) &&
                     (reduction != FocalReduction::kNone || aligned(g, VEC * sizeof(out_t)));
    const int grid = grid_size(n, vec ? VEC : 1, x.get_device());
    dispatch_variant(gamma, reduction, [&](auto g2, auto r) {
      constexpr bool kGamma2 = decltype(g2)::value;
      constexpr FocalReduction R = decltype(r)::value;
      const auto fp = focal_params<T>(alpha, gamma);
      if (vec) {
        focal_backward_kernel<scalar_t, target_t, kGamma2, R, true><<<grid, kThreads, 0, stream>>>(
            g.const_data_ptr<out_t>(), x.const_data_ptr<scalar_t>(), t.const_data_ptr<target_t>(),
            dx.mutable_data_ptr<scalar_t>(), n, fp);
      } else {
        focal_backward_kernel<scalar_t, target_t, kGamma2, R, false><<<grid, kThreads, 0, stream>>>(
            g.const_data_ptr<out_t>(), x.const_data_ptr<scalar_t>(), t.const_data_ptr<target_t>(),
            dx.mutable_data_ptr<scalar_t>(), n, fp);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CUDA, m) {
  m.impl("sigmoid_focal_loss", &focal_forward_cuda);
  m.impl("sigmoid_focal_loss_backward", &focal_backward_cuda);
}

}  // namespace detbench
