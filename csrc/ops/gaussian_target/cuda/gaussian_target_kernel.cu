// CUDA kernels of detbench.draw_heatmap, draw_heatmap_batched and gaussian_radius.
//
// Drawing is a gather, in one launch: a block owns a 32x32 tile of one heatmap plane, culls the
// boxes of that plane whose window reaches the tile into shared memory (a chunk of 256 boxes
// at a time), and each thread takes the max over the culled boxes for its 4 pixels, then merges
// it into the heatmap. No atomics, no pre-pass: the result is deterministic, every pixel is
// written by one thread, and a tile no box reaches is never read or written. Load balance
// comes from the tiles: a radius-64 box is split over the up-to-25 tiles it reaches, each a
// different block, while tiles with tiny boxes finish quickly. Blocks loop over the
// (plane, tile) work items, grid-stride, so the grid stays a few waves on any problem.
#include <algorithm>
#include <cfloat>
#include <cstdint>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/gaussian_target/gaussian_target.h"

namespace detbench {

namespace {

constexpr int kTileW = 32;                             // one warp spans a tile row: coalesced
constexpr int kThreads = 256;                          // 8 warps
constexpr int kRowsPerThread = 4;                      // a tile is 32 x (8 * 4) = 32 x 32
constexpr int kTileH = kThreads / kTileW * kRowsPerThread;
constexpr int kBlocksPerSm = 8;                        // 2048 threads per SM

template <typename idx_t>
struct DrawParams {
  float* heatmaps;
  int64_t H, W;
  int64_t planes;         // heatmap planes: M (flat), B (batched) or B * C (class-wise)
  int64_t classes;        // C for class-wise drawing, else 1: plane = image * classes + class
  int64_t tiles_x, tiles_y;
  const idx_t* centers;   // (x, y) per box
  const idx_t* radii;
  const idx_t* index;     // flat: heatmap_index [T]; batched: labels [B, T] or nullptr
  const idx_t* counts;    // batched: counts [B]; flat: nullptr
  int64_t T;              // flat: all boxes; batched: boxes per image (padded)
  float k;
};

// One culled box in shared memory: center, radius (clamped to H + W: past the plane's size it
// covers all of it either way) and the divisor of the true radius.
struct CulledBox {
  int x, y, r;
  float divisor;
};

template <typename idx_t>
__global__ void __launch_bounds__(kThreads) draw_heatmap_kernel(const DrawParams<idx_t> p) {
  __shared__ CulledBox boxes[kThreads];
  __shared__ int culled;
  const int tid = threadIdx.x;
  const int64_t tiles = p.tiles_x * p.tiles_y;
  const int64_t items = p.planes * tiles;
  if (tid == 0) {
    culled = 0;
  }
  __syncthreads();

  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t plane = item / tiles;
    const int64_t tile = item - plane * tiles;
    const int64_t col0 = (tile % p.tiles_x) * kTileW;
    const int64_t row0 = (tile / p.tiles_x) * kTileH;
    const int64_t col_last = min(p.W, col0 + kTileW) - 1;
    const int64_t row_last = min(p.H, row0 + kTileH) - 1;
    const int64_t image = plane / p.classes;
    const int64_t cls = plane - image * p.classes;
    int64_t begin = 0, end = p.T;
    if (p.counts != nullptr) {  // batched: the image's first counts[image] boxes (clamped to [0, T])
      begin = image * p.T;
      end = begin + min(max(int64_t(p.counts[image]), int64_t(0)), p.T);
    }
    const int64_t col = col0 + tid % kTileW;
    const int64_t row_first = row0 + tid / kTileW;
    float acc[kRowsPerThread];
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      acc[i] = -INFINITY;  // no box covers the pixel (a drawn value is finite)
    }
    bool any = false;  // block-uniform

    for (int64_t base = begin; base < end; base += kThreads) {
      const int64_t t = base + tid;
      if (t < end) {
        const int64_t x = p.centers[2 * t], y = p.centers[2 * t + 1], r = p.radii[t];
        // Boxes of another plane, and (safe result of the default path) boxes with a center
        // outside the plane, a negative radius or a plane index out of range, are skipped.
        bool keep = x >= 0 && x < p.W && y >= 0 && y < p.H && r >= 0;
        if (p.counts == nullptr) {
          keep = keep && int64_t(p.index[t]) == plane;
        } else if (p.index != nullptr) {
          keep = keep && int64_t(p.index[t]) == cls;
        }
        const int64_t reach = min(r, p.H + p.W);
        keep = keep && x - reach <= col_last && x + reach >= col0 && y - reach <= row_last && y + reach >= row0;
        if (keep) {
          const int slot = atomicAdd(&culled, 1);  // slot order varies; the max does not care
          boxes[slot] = {int(x), int(y), int(reach), gaussian_divisor(r)};
        }
      }
      __syncthreads();
      const int n = culled;
      any = any || n > 0;
      for (int j = 0; j < n; ++j) {
        const CulledBox b = boxes[j];  // a broadcast read
        const int64_t dx = col - b.x;
        if (dx < -b.r || dx > b.r) {
          continue;
        }
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) {
          const int64_t dy = row_first + i * (kThreads / kTileW) - b.y;
          if (dy >= -b.r && dy <= b.r) {
            acc[i] = fmaxf(acc[i], gaussian_value(dx, dy, b.divisor, p.k));
          }
        }
      }
      __syncthreads();  // everyone has read the list and its length
      if (tid == 0) {
        culled = 0;
      }
      __syncthreads();
    }

    if (!any || col > col_last) {
      continue;
    }
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int64_t row = row_first + i * (kThreads / kTileW);
      if (row <= row_last && acc[i] != -INFINITY) {
        float* px = p.heatmaps + (plane * p.H + row) * p.W + col;
        *px = max_propagate_nan(*px, acc[i]);
      }
    }
  }
}

// All of the launch math: one work item per (plane, 32x32 tile), a grid of at most
// kBlocksPerSm blocks per SM looping over them.
template <typename idx_t>
void launch_draw(DrawParams<idx_t> p) {
  p.tiles_x = ceil_div<int64_t>(p.W, kTileW);
  p.tiles_y = ceil_div<int64_t>(p.H, kTileH);
  const int64_t items = p.planes * p.tiles_x * p.tiles_y;
  if (items == 0) {
    return;
  }
  const int64_t num_sms = sm_count();
  const int64_t grid = std::min(items, num_sms * kBlocksPerSm);
  draw_heatmap_kernel<idx_t><<<unsigned(grid), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void draw_heatmap_cuda(const at::Tensor& heatmaps, const at::Tensor& centers_in, const at::Tensor& radii_in,
                       const at::Tensor& index_in, double k) {
  draw_heatmap_check(heatmaps, centers_in, radii_in, index_in, k);
  const c10::cuda::CUDAGuard guard(heatmaps.device());
  const at::Tensor centers = centers_in.contiguous(), radii = radii_in.contiguous(), index = index_in.contiguous();
  if (validation_enabled()) {  // a sync: the CPU's value checks on a host copy
    const at::Tensor index_host = index.cpu();
    draw_heatmap_check_values("draw_heatmap", centers.cpu(), radii.cpu(), &index_host, nullptr, heatmaps.size(1),
                              heatmaps.size(2), heatmaps.size(0));
  }
  if (centers.size(0) == 0) {
    return;
  }
  AT_DISPATCH_INDEX_TYPES(centers.scalar_type(), "detbench.draw_heatmap", [&] {
    DrawParams<index_t> p{};
    p.heatmaps = heatmaps.mutable_data_ptr<float>();
    p.H = heatmaps.size(1);
    p.W = heatmaps.size(2);
    p.planes = heatmaps.size(0);
    p.classes = 1;
    p.centers = centers.const_data_ptr<index_t>();
    p.radii = radii.const_data_ptr<index_t>();
    p.index = index.const_data_ptr<index_t>();
    p.counts = nullptr;
    p.T = centers.size(0);
    p.k = static_cast<float>(k);
    launch_draw(p);
  });
}

void draw_heatmap_batched_cuda(const at::Tensor& heatmaps, const at::Tensor& centers_in, const at::Tensor& radii_in,
                               const at::Tensor& counts_in, const std::optional<at::Tensor>& labels_in, double k) {
  const at::Tensor* labels_arg = labels_in.has_value() ? &*labels_in : nullptr;
  draw_heatmap_batched_check(heatmaps, centers_in, radii_in, counts_in, labels_arg, k);
  const c10::cuda::CUDAGuard guard(heatmaps.device());
  const at::Tensor centers = centers_in.contiguous(), radii = radii_in.contiguous(), counts = counts_in.contiguous();
  const at::Tensor labels = labels_arg ? labels_arg->contiguous() : at::Tensor();
  const int64_t classes = labels_arg ? heatmaps.size(1) : 1;
  if (validation_enabled()) {  // a sync: the CPU's value checks on a host copy
    const at::Tensor counts_host = counts.cpu();
    const at::Tensor labels_host = labels_arg ? labels.cpu() : at::Tensor();
    draw_heatmap_check_values("draw_heatmap_batched", centers.cpu(), radii.cpu(), labels_arg ? &labels_host : nullptr,
                              &counts_host, heatmaps.size(-2), heatmaps.size(-1), classes);
  }
  if (centers.size(1) == 0) {
    return;
  }
  AT_DISPATCH_INDEX_TYPES(centers.scalar_type(), "detbench.draw_heatmap_batched", [&] {
    DrawParams<index_t> p{};
    p.heatmaps = heatmaps.mutable_data_ptr<float>();
    p.H = heatmaps.size(-2);
    p.W = heatmaps.size(-1);
    p.planes = heatmaps.size(0) * classes;
    p.classes = classes;
    p.centers = centers.const_data_ptr<index_t>();
    p.radii = radii.const_data_ptr<index_t>();
    p.index = labels_arg ? labels.const_data_ptr<index_t>() : nullptr;
    p.counts = counts.const_data_ptr<index_t>();
    p.T = centers.size(1);
    p.k = static_cast<float>(k);
    launch_draw(p);
  });
}

template <typename scalar_t>
__global__ void gaussian_radius_kernel(const scalar_t* __restrict__ heights, const scalar_t* __restrict__ widths,
                                       scalar_t* __restrict__ out, int64_t n, double min_overlap) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = gaussian_radius_value<scalar_t>(heights[i], widths[i], min_overlap);
  }
}

at::Tensor gaussian_radius_cuda(const at::Tensor& heights_in, const at::Tensor& widths_in, double min_overlap) {
  gaussian_radius_check(heights_in, widths_in, min_overlap);
  const c10::cuda::CUDAGuard guard(heights_in.device());
  const at::Tensor heights = heights_in.contiguous(), widths = widths_in.contiguous();
  at::Tensor out = at::empty(heights.sizes(), heights.options());
  const int64_t n = heights.numel();
  if (n == 0) {
    return out;
  }
  const int64_t num_sms = sm_count();
  const int64_t grid = std::min(ceil_div<int64_t>(n, kThreads), num_sms * kBlocksPerSm);
  AT_DISPATCH_FLOATING_TYPES(heights.scalar_type(), "detbench.gaussian_radius", [&] {
    gaussian_radius_kernel<scalar_t><<<unsigned(grid), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        heights.const_data_ptr<scalar_t>(), widths.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n,
        min_overlap);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CUDA, m) {
  m.impl("draw_heatmap", &draw_heatmap_cuda);
  m.impl("draw_heatmap_batched", &draw_heatmap_batched_cuda);
  m.impl("gaussian_radius", &gaussian_radius_cuda);
}

}  // namespace detbench
