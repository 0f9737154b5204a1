// CUDA kernel of detbench.box_iou.
//
// The op is bound by writing its output. Each thread computes VEC outputs (16 bytes) per row
// for rows kRowsPerThread at a time, looping down the rows: its VEC boxes2 stay in registers,
// and each boxes1 row it reads is shared by all threads working on that row (a cached broadcast).
#include <algorithm>
#include <cstdint>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/box_iou/box_iou.h"
#include "ops/box_iou/iou.h"

namespace detbench {

namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kRowsPerThread = 4;
constexpr int64_t kBlocksPerSm = 16;  // a few waves: enough to balance the SMs
constexpr int64_t kMaxGridYZ = 65535;

template <typename T>
struct Box {
  T x1, y1, x2, y2;
};

// VEC outputs written with one 16-byte store.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kSize = 16 / sizeof(T);
  T val[kSize];
};

// One box as stored, aligned so that it loads in one go (one 8- or 16-byte load, two for double).
template <typename scalar_t>
struct alignas(4 * sizeof(scalar_t)) StoredBox {
  scalar_t v[4];
};

// Box i of a contiguous [., 4] array whose data box_iou_cuda has aligned to a whole box.
template <typename T, typename scalar_t>
__device__ __forceinline__ Box<T> load_box(const scalar_t* __restrict__ boxes, int64_t i) {
  const StoredBox<scalar_t> b = reinterpret_cast<const StoredBox<scalar_t>*>(boxes)[i];
  return {static_cast<T>(b.v[0]), static_cast<T>(b.v[1]), static_cast<T>(b.v[2]), static_cast<T>(b.v[3])};
}

template <typename T>
__device__ __forceinline__ T area(const Box<T>& b) {
  return box_area(b.x1, b.y1, b.x2, b.y2);
}

// The formula of iou.h, shared with nms.
template <typename T>
__device__ __forceinline__ T iou(const Box<T>& a, T area_a, const Box<T>& b, T area_b) {
  return iou_from_intersection(box_intersection(a.x1, a.y1, a.x2, a.y2, b.x1, b.y1, b.x2, b.y2), area_a, area_b);
}

// Each thread computes out[b, i, col0 + v * col_step] for v < VEC and rows i = row0 + k * blockDim.y,
// k < kRowsPerThread, for every row0 and b of its grid-stride loops.
// kVecStore (M % VEC == 0, so every row starts 16-byte aligned): a thread's VEC columns are
// adjacent and stored at once. Otherwise they are blockDim.x apart, so that each scalar store
// of a warp writes adjacent columns.
template <typename scalar_t, bool kVecStore>
__global__ void __launch_bounds__(kThreadsPerBlock)
    box_iou_kernel(const scalar_t* __restrict__ boxes1, const scalar_t* __restrict__ boxes2,
                   at::opmath_type<scalar_t>* __restrict__ out, int64_t B, int64_t N, int64_t M) {
  using T = at::opmath_type<scalar_t>;
  constexpr int VEC = Vec16<T>::kSize;
  const int64_t tile = int64_t(blockIdx.x) * blockDim.x * VEC;  // first column of the block
  const int64_t col0 = kVecStore ? tile + threadIdx.x * VEC : tile + threadIdx.x;
  const int col_step = kVecStore ? 1 : blockDim.x;
  if (col0 >= M) {
    return;
  }
  // How many of this thread's VEC columns are before M; the rest are computed but not stored.
  const int ncols = int(min(int64_t(VEC), ceil_div<int64_t>(M - col0, col_step)));
  const int64_t rows_per_block = int64_t(blockDim.y) * kRowsPerThread;

  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    Box<T> box2[VEC];
    T area2[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      // Columns past M reload the last box; their results are never stored.
      box2[v] = load_box<T>(boxes2, b * M + min(col0 + v * col_step, M - 1));
      area2[v] = area(box2[v]);
    }

    for (int64_t row0 = blockIdx.y * rows_per_block + threadIdx.y; row0 < N; row0 += gridDim.y * rows_per_block) {
      // All row loads first (clamped like the columns), so they are in flight together.
      Box<T> box1[kRowsPerThread];
#pragma unroll
      for (int k = 0; k < kRowsPerThread; ++k) {
        box1[k] = load_box<T>(boxes1, b * N + min(row0 + k * blockDim.y, N - 1));
      }
#pragma unroll
      for (int k = 0; k < kRowsPerThread; ++k) {
        const int64_t row = row0 + k * blockDim.y;
        if (row >= N) {
          break;
        }
        const T area1 = area(box1[k]);
        T* o = out + (b * N + row) * M + col0;
        if constexpr (kVecStore) {
          Vec16<T> vals;
#pragma unroll
          for (int v = 0; v < VEC; ++v) {
            vals.val[v] = iou(box1[k], area1, box2[v], area2[v]);
          }
          *reinterpret_cast<Vec16<T>*>(o) = vals;
        } else {
#pragma unroll
          for (int v = 0; v < VEC; ++v) {
            if (v < ncols) {
              o[v * col_step] = iou(box1[k], area1, box2[v], area2[v]);
            }
          }
        }
      }
    }
  }
}

// All of the launch math. Blocks of 256 threads: along x they cover the M columns, VEC each,
// and when M needs fewer than 256 threads the rest go along y, to more rows. Along y the grid
// stops at about kBlocksPerSm blocks per SM: past that, a thread rather loops over more rows,
// reusing the boxes2 in its registers. y and z also stop at the grid limit; the kernel loops
// over the rows and batches beyond.
struct LaunchConfig {
  dim3 grid;
  dim3 block;
};

LaunchConfig launch_config(int64_t B, int64_t N, int64_t M, int vec, int num_sms) {
  const int64_t col_threads = ceil_div<int64_t>(M, vec);
  int bx = 1;
  while (bx < col_threads && bx < kThreadsPerBlock) {
    bx *= 2;
  }
  const int by = kThreadsPerBlock / bx;
  const int64_t gx = ceil_div<int64_t>(col_threads, bx);
  const int64_t gz = std::min(B, kMaxGridYZ);
  const int64_t gy = std::min({ceil_div<int64_t>(N, int64_t(by) * kRowsPerThread), kMaxGridYZ,
                               std::max<int64_t>(1, num_sms * kBlocksPerSm / (gx * gz))});
  return {dim3(unsigned(gx), unsigned(gy), unsigned(gz)), dim3(unsigned(bx), unsigned(by))};
}

// Contiguous, with its data aligned to a whole box for load_box: a contiguous view can start at
// any element of its storage, and then it is copied.
at::Tensor contiguous_for_loads(const at::Tensor& boxes) {
  at::Tensor c = boxes.contiguous();
  if (reinterpret_cast<std::uintptr_t>(c.const_data_ptr()) % (4 * c.element_size()) != 0) {
    c = c.clone();
  }
  return c;
}

// Validation mode only: syncs with the device to find the first box with a non-finite coordinate.
void check_finite(const char* arg, const at::Tensor& boxes) {
  const at::Tensor bad = at::isfinite(boxes).all(-1).logical_not().flatten().nonzero();
  if (bad.size(0) > 0) {
    box_iou_nonfinite_error(arg, boxes, bad[0][0].item<int64_t>());
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  at::Tensor out = box_iou_allocate_output(boxes1_in, boxes2_in);
  if (out.numel() == 0) {
    return out;
  }
  const c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor boxes1 = contiguous_for_loads(boxes1_in);
  const at::Tensor boxes2 = contiguous_for_loads(boxes2_in);
  if (validation_enabled()) {
    check_finite("boxes1", boxes1);
    check_finite("boxes2", boxes2);
  }
  const int64_t B = boxes1.dim() == 3 ? boxes1.size(0) : 1;
  const int64_t N = boxes1.size(-2);
  const int64_t M = boxes2.size(-2);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int num_sms = sm_count(out.get_device());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "detbench.box_iou", [&] {
    using T = at::opmath_type<scalar_t>;
    constexpr int VEC = Vec16<T>::kSize;
    const LaunchConfig cfg = launch_config(B, N, M, VEC, num_sms);
    const scalar_t* b1 = boxes1.const_data_ptr<scalar_t>();
    const scalar_t* b2 = boxes2.const_data_ptr<scalar_t>();
    T* o = out.mutable_data_ptr<T>();
    if (M % VEC == 0) {
      box_iou_kernel<scalar_t, true><<<cfg.grid, cfg.block, 0, stream>>>(b1, b2, o, B, N, M);
    } else {
      box_iou_kernel<scalar_t, false><<<cfg.grid, cfg.block, 0, stream>>>(b1, b2, o, B, N, M);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CUDA, m) {
  m.impl("box_iou", &box_iou_cuda);
}

}  // namespace detbench
