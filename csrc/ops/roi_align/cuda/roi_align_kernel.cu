// CUDA kernels of detbench.roi_align, detbench.multiscale_roi_align and their backwards.
//
// A block works on one RoI at a time (grid.y strides over the RoIs). It first computes the RoI's
// level (multiscale: LevelMapper on the device), its geometry, and the row and column samples
// (indices + weights, roi_math.h) into shared memory, once for every channel; then its threads
// produce outputs, in one of two walks:
//  - channel vectors (channels-last features, and NCHW ones with many RoIs): the block covers a
//    slice of channels, a thread VEC channels of one bin (16-byte loads), so every corner read of
//    a warp is one contiguous run of channels. NCHW features are first copied to NHWC by a tiled
//    transpose, and the block's NCHW output slice (one contiguous run) is staged in shared memory
//    so that its writes stay coalesced;
//  - direct NCHW (few RoIs on large maps, where copying the maps would cost more than the
//    gather): one output element per thread, pw fastest (grid.x splits a RoI's outputs).
// Backward, by default (sampling ratio 1 or 2): the channel-vector walk reversed, each sample's
// corners added into an opmath NHWC accumulator by channel-contiguous atomics
// (backward_atomic_kernel), then converted to the gradient's dtype and layout. Deterministic
// algorithms, and larger or adaptive sampling grids: a gather, not a scatter. A block owns
// a tile of one feature map and adds in registers what every RoI (of its share of the RoIs)
// touching the tile contributes to it, RoIs in order, then writes the tile once (or its partial
// sum, added to the other shares' in a fixed order). Each RoI's bilinear weights per bin and pixel
// row (column) are tabulated once (roi_windows_kernel), so a tile block only reads them and
// accumulates: bit-identical results run to run.
// Every launch: the current stream, a device guard, C10_CUDA_KERNEL_LAUNCH_CHECK; no host sync
// (validation mode aside).
#include <algorithm>
#include <cstdint>
#include <type_traits>
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
constexpr int kTable = 256;          // shared entries per axis; RoIs with more samples compute them inline
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

template <typename scalar_t>
struct OutLevels {
  scalar_t* data[kMaxLevels];
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

// Direct NCHW forward (few RoIs on large maps): one output element per thread, pw fastest.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    forward_nchw_kernel(Levels<scalar_t> lv, const at::opmath_type<scalar_t>* __restrict__ rois, int64_t K, int64_t N,
                        int C, int PH, int PW, int sr, bool aligned, scalar_t* __restrict__ out) {
  using T = at::opmath_type<scalar_t>;
  __shared__ AxisSample<T> ys[kTable];
  __shared__ AxisSample<T> xs[kTable];
  const int bins = PH * PW;
  const int64_t items = int64_t(C) * bins;
  for (int64_t k = blockIdx.y; k < K; k += gridDim.y) {
    const RoiSetup<T> s = setup_roi(lv, rois + 5 * k, N, PH, PW, sr, aligned, ys, xs);
    for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
         item += int64_t(gridDim.x) * blockDim.x) {
      const int c = int(item / bins), bin = int(item % bins);
      const int ph = bin / PW, pw = bin % PW;
      T sum = 0;
      if (s.level >= 0) {
        const scalar_t* plane = lv.data[s.level] + (int64_t(s.n) * C + c) * int64_t(s.H) * s.W;
        for (int iy = 0; iy < s.g.grid_h; ++iy) {
          const AxisSample<T> Y = row_sample(s, ys, ph, iy);
          if (Y.lo < 0) {
            continue;
          }
          const scalar_t* rlo = plane + int64_t(Y.lo) * s.W;
          const scalar_t* rhi = plane + int64_t(Y.hi) * s.W;
          for (int ix = 0; ix < s.g.grid_w; ++ix) {
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
    }
  }
}

// The channel-vector kernels: a block per (RoI, slice of channels) on NHWC features (the caller's
// channels-last maps, or NHWC copies of NCHW ones); a thread gathers VEC channels of one bin, so a
// warp's corner reads are contiguous runs of channels. With an NCHW output (or gradient) the
// block's slice of it, [slice, PH, PW], is one contiguous run: staged in shared memory so that
// global writes (reads) stay coalesced.
template <int VEC, typename scalar_t, typename T>
__device__ __forceinline__ void gather_bin(const RoiSetup<T>& s, const AxisSample<T>* ys, const AxisSample<T>* xs,
                                           const scalar_t* image, int C, int ph, int pw, T (&acc)[VEC]) {
  using P = Pack<scalar_t, VEC>;
  for (int iy = 0; iy < s.g.grid_h; ++iy) {
    const AxisSample<T> Y = row_sample(s, ys, ph, iy);
    if (Y.lo < 0) {
      continue;
    }
    for (int ix = 0; ix < s.g.grid_w; ++ix) {
      const AxisSample<T> X = col_sample(s, xs, pw, ix);
      if (X.lo < 0) {
        continue;
      }
      const T w1 = Y.wlo * X.wlo, w2 = Y.wlo * X.whi, w3 = Y.whi * X.wlo, w4 = Y.whi * X.whi;
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

template <typename scalar_t, int VEC, bool kNCHWOut>
__global__ void __launch_bounds__(kThreads)
    forward_channels_kernel(Levels<scalar_t> lv, const at::opmath_type<scalar_t>* __restrict__ rois, int64_t K,
                            int64_t N, int C, int PH, int PW, int sr, bool aligned, int slice,
                            scalar_t* __restrict__ out) {
  using T = at::opmath_type<scalar_t>;
  __shared__ AxisSample<T> ys[kTable];
  __shared__ AxisSample<T> xs[kTable];
  extern __shared__ __align__(16) unsigned char stage_bytes[];
  scalar_t* stage = reinterpret_cast<scalar_t*>(stage_bytes);  // [slice, PH, PW] when kNCHWOut
  const int bins = PH * PW;
  const int c_begin = blockIdx.x * slice;
  const int width = min(slice, C - c_begin);  // a multiple of VEC
  const int vectors = width / VEC;
  for (int64_t k = blockIdx.y; k < K; k += gridDim.y) {
    const RoiSetup<T> s = setup_roi(lv, rois + 5 * k, N, PH, PW, sr, aligned, ys, xs);
    for (int item = threadIdx.x; item < bins * vectors; item += blockDim.x) {
      const int cv = item % vectors, bin = item / vectors;
      const int c0 = c_begin + cv * VEC;
      T acc[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        acc[v] = 0;
      }
      if (s.level >= 0) {
        gather_bin<VEC>(s, ys, xs, lv.data[s.level] + int64_t(s.n) * s.H * s.W * C + c0, C, bin / PW, bin % PW, acc);
      }
      Pack<scalar_t, VEC> o;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        o.v[v] = static_cast<scalar_t>(s.level >= 0 ? acc[v] / s.g.count : T(0));
      }
      if constexpr (kNCHWOut) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          stage[(cv * VEC + v) * bins + bin] = o.v[v];
        }
      } else {
        *reinterpret_cast<Pack<scalar_t, VEC>*>(out + (k * bins + bin) * C + c0) = o;
      }
    }
    if constexpr (kNCHWOut) {
      __syncthreads();
      scalar_t* dst = out + (k * C + c_begin) * bins;
      for (int j = threadIdx.x; j < width * bins; j += blockDim.x) {
        dst[j] = stage[j];
      }
      // the next RoI's setup_roi syncs before the stage is written again
    }
  }
}

// Default backward: the forward's walk with the arrows reversed. A block per (RoI, slice of
// channels), a thread VEC channels of one bin: each of the bin's samples adds its 4 corners' shares
// of the bin's gradient into an opmath NHWC accumulator by atomics, so a warp's adds are contiguous
// runs of channels (16-byte vector atomics on sm_90). Such atomics cost about what plain
// read-modify-writes do (H100, the 400 M adds of a 2 x 1000 box head: 0.67 vs 0.63 ms), unlike
// torchvision's, whose warp adds to 32 pixels of one channel. Every sample corner takes part, zero
// weights included, as in the autograd of the forward (a NaN gradient reaches the corners it
// multiplies). The sums' order is the atomics' arrival order: deterministic algorithms select the
// tile kernel below instead (as do sampling grids over 2 x 2, see backward()).
template <int VEC, typename T>
__device__ __forceinline__ void atomic_add_channels(T* dst, T w, const T (&g)[VEC]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kFloat4 = std::is_same_v<T, float> && VEC % 4 == 0;  // dst 16-byte aligned: C % VEC == 0
#else
  constexpr bool kFloat4 = false;
#endif
  if constexpr (kFloat4) {
#pragma unroll
    for (int v = 0; v < VEC; v += 4) {
      atomicAdd(reinterpret_cast<float4*>(dst + v), make_float4(w * g[v], w * g[v + 1], w * g[v + 2], w * g[v + 3]));
    }
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      atomicAdd(dst + v, w * g[v]);
    }
  }
}

// The distinct pixels that two samples of a bin touch along one axis, with their summed weights.
template <typename T>
struct Taps {
  int n;
  int at[4];
  T w[4];
};

template <typename T>
__device__ __forceinline__ void add_tap(Taps<T>& t, int at, T w) {
  bool merged = false;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (!merged && j < t.n && t.at[j] == at) {
      t.w[j] += w;
      merged = true;
    }
  }
  if (!merged) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // constant indices: the taps stay in registers
      if (j == t.n) {
        t.at[j] = at;
        t.w[j] = w;
      }
    }
    ++t.n;
  }
}

template <typename T, typename Sample>
__device__ __forceinline__ Taps<T> pair_taps(int i0, int grid, Sample sample) {
  Taps<T> t;
  t.n = 0;
#pragma unroll
  for (int i = i0; i < i0 + 2; ++i) {
    if (i < grid) {
      const AxisSample<T> a = sample(i);
      if (a.lo >= 0) {
        add_tap(t, a.lo, a.wlo);
        add_tap(t, a.hi, a.whi);
      }
    }
  }
  return t;
}

// A bin's samples, two by two along each axis: the weights of a pair of rows times a pair of
// columns are separable, so each distinct pixel they touch takes one atomic (a tiny bin's 4 samples
// touch 4 pixels: 4 atomics instead of 16).
template <int VEC, typename T>
__device__ __forceinline__ void scatter_bin(const RoiSetup<T>& s, const AxisSample<T>* ys, const AxisSample<T>* xs,
                                            T* image, int C, int ph, int pw, const T (&g)[VEC]) {
  for (int iy0 = 0; iy0 < s.g.grid_h; iy0 += 2) {
    const Taps<T> rows = pair_taps<T>(iy0, s.g.grid_h, [&](int iy) { return row_sample(s, ys, ph, iy); });
    if (rows.n == 0) {
      continue;
    }
    for (int ix0 = 0; ix0 < s.g.grid_w; ix0 += 2) {
      const Taps<T> cols = pair_taps<T>(ix0, s.g.grid_w, [&](int ix) { return col_sample(s, xs, pw, ix); });
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (i < rows.n && j < cols.n) {
            atomic_add_channels(image + (int64_t(rows.at[i]) * s.W + cols.at[j]) * C, rows.w[i] * cols.w[j], g);
          }
        }
      }
    }
  }
}

// grad: [K, PH, PW, C] (channels fastest); sums: per level, [N, H, W, C] opmath, zeroed.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    backward_atomic_kernel(Levels<scalar_t> lv, OutLevels<at::opmath_type<scalar_t>> sums,
                           const at::opmath_type<scalar_t>* __restrict__ rois, int64_t K, int64_t N, int C, int PH,
                           int PW, int sr, bool aligned, int slice, const scalar_t* __restrict__ grad) {
  using T = at::opmath_type<scalar_t>;
  __shared__ AxisSample<T> ys[kTable];
  __shared__ AxisSample<T> xs[kTable];
  const int bins = PH * PW;
  const int c_begin = blockIdx.x * slice;
  const int vectors = min(slice, C - c_begin) / VEC;
  for (int64_t k = blockIdx.y; k < K; k += gridDim.y) {
    const RoiSetup<T> s = setup_roi(lv, rois + 5 * k, N, PH, PW, sr, aligned, ys, xs);
    if (s.level < 0) {
      continue;  // block-uniform
    }
    T* image = sums.data[s.level] + int64_t(s.n) * s.H * s.W * C;
    for (int item = threadIdx.x; item < bins * vectors; item += blockDim.x) {
      const int c0 = c_begin + item % vectors * VEC, bin = item / vectors;
      const Pack<scalar_t, VEC> p = *reinterpret_cast<const Pack<scalar_t, VEC>*>(grad + (k * bins + bin) * C + c0);
      T g[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        g[v] = static_cast<T>(p.v[v]) / s.g.count;
      }
      scatter_bin<VEC>(s, ys, xs, image + c0, C, bin / PW, bin % PW, g);
    }
  }
}

// Deterministic backward: a gather over tiles of the feature maps, no atomics. A block owns
// kTileH x kTileW pixels of one level and image and a slice of kTileChannels channels (a thread per
// channel, its tile's 64 sums in registers) and adds the contributions of every RoI whose samples
// touch the tile, in RoI order; then writes the tile once (zeros included). Every sum has a fixed
// order: bit-identical run to run. RoIs are matched to tiles through a pixel rectangle per RoI
// (roi_extent_kernel); the block tests kTileChannels RoIs per
// step, then each warp (32 channels) walks the hits on its own, without block barriers. Few tiles
// (a mask head's RoIs on a coarse level) would leave most SMs idle and a clustered tile's RoIs in
// one long chain: the RoIs are then split into contiguous shares, each block writes its partial
// tile to a float workspace, and the last share of a tile to finish adds them in share order.
// Per RoI and tile the bilinear weights are separable: pixel (y, x) receives
//   sum over bins (ph, pw) of  Wy[ph][y] * grad[ph][pw] / count * Wx[pw][x],
// Wy[ph][y] the summed row weights of bin row ph's samples whose corners lie on pixel row y (Wx
// likewise), so a RoI costs per bin row 8 FMAs per touching bin and 8 per touching pixel row,
// whatever the number of samples. (Sample by sample, the tiny RoIs of a mask head piled
// thousands of read-modify-writes of the same few shared-memory pixels onto one block.) Only
// pixels a sample's corner lies on take part, as in the forward's autograd: a non-finite
// gradient reaches exactly the pixels it would through the samples (an inf as inf where, sample by
// sample, a zero weight's inf * 0 would also add a NaN).
constexpr int kTileH = 8, kTileW = 8, kTilePixels = kTileH * kTileW;
constexpr int kTileChannels = 128;  // threads per block
constexpr int kAxisBins = 32;       // bins of an axis weighed at once (a lane per bin)
constexpr int kWindow = 16;         // pixels of a bin's weight window (AxisWindow)

struct RoiExtent {
  int level;  // -1: contributes nothing
  int n;
  int y0, y1, x0, x1;  // inclusive bounds of every corner its samples can touch (padded by a pixel)
  int wide;  // a bin's samples may span more than a window: weights computed per tile (axis_weights)
};

// One bin's weights along one axis, for every pixel its samples' corners lie on: weight[j] sums the
// weights of those on pixel start + j (the bin's lowest), bit j of touch says whether any does.
// Tabulated once per RoI (roi_windows_kernel) for the RoIs that are not wide.
template <typename T>
struct AxisWindow {
  int start;
  unsigned touch;
  T weight[kWindow];
};
static_assert(kWindow <= 32, "touch is a 32-bit mask");

// Whether a bin's samples (grid of them, bin pixels wide) fit a window: the first and last sample
// of a bin are |bin| (grid - 1) / grid apart and their corners span at most that + 2 pixels; 3
// leaves a pixel for rounding. (Inf or NaN: no.)
template <typename T>
__device__ bool fits_window(T bin, int grid) {
  return std::abs(bin) * static_cast<T>(grid - 1) / static_cast<T>(grid) + T(3) < T(kWindow);
}

struct TileLevels {
  int64_t begin[kMaxLevels + 1];  // first tile of each level; tiles of a level: N x rows x columns
};

// The corners of samples start + p * bin + (i + .5) * bin / grid (p < pooled, i < grid) lie in
// [lo, hi] (positions are monotone in p * grid + i up to rounding: a pixel of padding covers that).
template <typename T>
__device__ bool axis_extent(T start, T bin, int pooled, int grid, int size, int& lo, int& hi) {
  const T a = roi::sample_position(start, bin, 0, 0, grid);
  const T b = roi::sample_position(start, bin, pooled - 1, grid - 1, grid);
  const T first = a < b ? a : b, last = a < b ? b : a;
  if (!(last >= T(-1) && first <= T(size))) {
    return false;
  }
  lo = first <= T(1) ? 0 : (first >= T(size - 1) ? size - 1 : static_cast<int>(first) - 1);
  hi = last >= T(size - 2) ? size - 1 : (last <= T(0) ? 1 : static_cast<int>(last) + 2);
  hi = hi < size - 1 ? hi : size - 1;
  return true;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    roi_extent_kernel(Levels<scalar_t> lv, const at::opmath_type<scalar_t>* __restrict__ rois, int64_t K, int64_t N,
                      int PH, int PW, int sr, bool aligned, RoiExtent* __restrict__ extents) {
  using T = at::opmath_type<scalar_t>;
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= K) {
    return;
  }
  const T* roi = rois + 5 * k;
  RoiExtent e{-1, 0, 0, -1, 0, -1, 0};
  if (roi::roi_ok(roi, N)) {
    const int level =
        lv.map ? roi::map_level(roi + 1, lv.canonical_scale, lv.canonical_level, lv.k_min, lv.k_max) : 0;
    if (level >= 0 && level < lv.count && lv.H[level] > 0 && lv.W[level] > 0) {
      const roi::Geometry<T> g = roi::geometry(roi + 1, lv.scale[level], PH, PW, sr, aligned);
      if (g.grid_h > 0 && g.grid_w > 0 &&
          axis_extent(g.start_h, g.bin_h, PH, g.grid_h, lv.H[level], e.y0, e.y1) &&
          axis_extent(g.start_w, g.bin_w, PW, g.grid_w, lv.W[level], e.x0, e.x1)) {
        e.level = level;
        e.n = static_cast<int>(roi[0]);
        e.wide = !(fits_window(g.bin_h, g.grid_h) && fits_window(g.bin_w, g.grid_w));
      }
    }
  }
  extents[k] = e;
}

// The windows of every RoI that is pooled and not wide: [K][PH row bins, then PW column bins], a
// thread per bin and axis; and 1 / samples per bin. The weights add the samples in order, as
// axis_weights does: a tile's weights are the same bits either way.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    roi_windows_kernel(Levels<scalar_t> lv, const at::opmath_type<scalar_t>* __restrict__ rois,
                       const RoiExtent* __restrict__ extents, int64_t K, int PH, int PW, int sr, bool aligned,
                       AxisWindow<at::opmath_type<scalar_t>>* __restrict__ windows,
                       at::opmath_type<scalar_t>* __restrict__ inv_counts) {
  using T = at::opmath_type<scalar_t>;
  const int per_roi = PH + PW;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < K * per_roi;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i / per_roi;
    const int e = int(i % per_roi);
    const RoiExtent ex = extents[k];
    if (ex.level < 0 || ex.wide) {
      continue;
    }
    const roi::Geometry<T> g = roi::geometry(rois + 5 * k + 1, lv.scale[ex.level], PH, PW, sr, aligned);
    if (e == 0) {
      inv_counts[k] = T(1) / g.count;
    }
    const bool row = e < PH;
    const int p = row ? e : e - PH;
    const T start = row ? g.start_h : g.start_w, bin = row ? g.bin_h : g.bin_w;
    const int grid = row ? g.grid_h : g.grid_w, size = row ? lv.H[ex.level] : lv.W[ex.level];
    int lowest = size;  // no sample inside: touch stays 0
    for (int s = 0; s < grid; ++s) {
      const AxisSample<T> a = roi::axis_entry(start, bin, p, s, grid, size);
      lowest = a.lo >= 0 && a.lo < lowest ? a.lo : lowest;
    }
    T w[kWindow];
#pragma unroll
    for (int j = 0; j < kWindow; ++j) w[j] = T(0);
    unsigned touch = 0;
    for (int s = 0; s < grid; ++s) {
      const AxisSample<T> a = roi::axis_entry(start, bin, p, s, grid, size);
      if (a.lo < 0) continue;
#pragma unroll
      for (int j = 0; j < kWindow; ++j) {  // fits_window: every corner is within the window
        const bool lo = a.lo == lowest + j, hi = a.hi == lowest + j;
        w[j] += (lo ? a.wlo : T(0)) + (hi ? a.whi : T(0));
        touch |= unsigned(lo | hi) << j;
      }
    }
    AxisWindow<T>& out = windows[i];
    out.start = lowest;
    out.touch = touch;
#pragma unroll
    for (int j = 0; j < kWindow; ++j) out.weight[j] = w[j];
  }
}

// One RoI's weights on one axis of a tile, for kAxisBins bins (a lane per bin): weight[b][j] sums
// the weights of bin b's samples whose corners lie on pixel t0 + j; bit j of touch[b] says
// whether any does.
template <typename T>
struct AxisWeights {
  T weight[kAxisBins][kTileH];
  unsigned touch[kAxisBins];
};
static_assert(kTileH == kTileW, "AxisWeights serves both axes");

template <typename T>
struct WarpTables {
  AxisWeights<T> rows, cols;
};

// A wide RoI's weights on a tile, from its samples. Called by a whole warp, for bins [first, end)
// (lane = bin - first, end - first <= 32); returns the warp's ballot of touching bins.
template <typename T>
__device__ unsigned axis_weights(T start, T bin, int grid, int size, int t0, int first, int end,
                                 AxisWeights<T>& out) {
  const int lane = threadIdx.x % 32;
  const int p = first + lane;
  T w[kTileH];
#pragma unroll
  for (int j = 0; j < kTileH; ++j) w[j] = T(0);
  unsigned touch = 0;
  if (p < end) {
    for (int i = 0; i < grid; ++i) {
      const AxisSample<T> s = roi::axis_entry(start, bin, p, i, grid, size);
      if (s.lo < 0) continue;
#pragma unroll
      for (int j = 0; j < kTileH; ++j) {
        const bool lo = s.lo == t0 + j, hi = s.hi == t0 + j;
        w[j] += (lo ? s.wlo : T(0)) + (hi ? s.whi : T(0));
        touch |= unsigned(lo | hi) << j;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kTileH; ++j) out.weight[lane][j] = w[j];
  out.touch[lane] = touch;
  return __ballot_sync(0xffffffffu, touch != 0);
}

// The same from the RoI's windows: the tile's pixels t0 + j are the window's d + j.
template <typename T>
__device__ __forceinline__ unsigned tile_touch(const AxisWindow<T>& win, int t0) {
  const int d = t0 - win.start;
  const unsigned bits = d >= 0 ? (d < 32 ? win.touch >> d : 0u) : (d > -32 ? win.touch << -d : 0u);
  return bits & ((1u << kTileH) - 1u);
}

template <typename T>
__device__ __forceinline__ void window_weights(const AxisWindow<T>& win, unsigned touch, int t0, T (&w)[kTileH]) {
  const T* weight = win.weight + (t0 - win.start);
#pragma unroll
  for (int j = 0; j < kTileH; ++j) w[j] = touch >> j & 1u ? weight[j] : T(0);  // touched: inside the window
}

// Both axes of a tile from the windows, bins [rb, row_end) x [cb, col_end) (at most 32 each): the
// row and column windows loaded together (one latency), a lane per bin of each axis.
template <typename T>
__device__ void tile_weights_from_windows(const AxisWindow<T>* __restrict__ rows, const AxisWindow<T>* __restrict__ cols,
                                          int ty0, int tx0, int rb, int row_end, int cb, int col_end,
                                          WarpTables<T>& t, unsigned& row_bits, unsigned& col_bits) {
  const int lane = threadIdx.x % 32;
  const bool has_row = rb + lane < row_end, has_col = cb + lane < col_end;
  const unsigned ry = has_row ? tile_touch(rows[rb + lane], ty0) : 0u;
  const unsigned rx = has_col ? tile_touch(cols[cb + lane], tx0) : 0u;
  T wy[kTileH], wx[kTileW];
  window_weights(rows[has_row ? rb + lane : 0], ry, ty0, wy);
  window_weights(cols[has_col ? cb + lane : 0], rx, tx0, wx);
#pragma unroll
  for (int j = 0; j < kTileH; ++j) {
    t.rows.weight[lane][j] = wy[j];
    t.cols.weight[lane][j] = wx[j];
  }
  t.rows.touch[lane] = ry;
  t.cols.touch[lane] = rx;
  row_bits = __ballot_sync(0xffffffffu, ry != 0);
  col_bits = __ballot_sync(0xffffffffu, rx != 0);
}

// Gradients of bins loaded at once per lane: kGradRows bin rows x kGradCols bins.
constexpr int kGradRows = 2, kGradCols = 4;

// The bins row_bits x col_bits (bits relative to rows rb.., columns cb..) added onto one lane's
// tile: per bin row the gradients weighed onto the tile's columns (sx), then sx added onto the
// touched pixel rows. A gradient that is not finite reaches only the columns its bin touches (a
// zero weight elsewhere would make it a NaN there); finite ones are weighed with all 8 columns,
// the untouched ones' zero weights adding exact zeros.
template <typename scalar_t, typename T>
__device__ __forceinline__ void add_bins(T (&acc)[kTilePixels], const WarpTables<T>& t, const scalar_t* gk, T inv_count,
                                         int C, int PW, int rb, int cb, unsigned row_bits, unsigned col_bits) {
  const int pa = rb + __ffs(row_bits) - 1, pb = rb + 31 - __clz(row_bits);
  const int qa = cb + __ffs(col_bits) - 1, qb = cb + 31 - __clz(col_bits);
  for (int r0 = pa; r0 <= pb; r0 += kGradRows) {
    T sx[kGradRows][kTileW];
#pragma unroll
    for (int i = 0; i < kGradRows; ++i) {
#pragma unroll
      for (int x = 0; x < kTileW; ++x) sx[i][x] = T(0);
    }
    for (int q0 = qa; q0 <= qb; q0 += kGradCols) {
      T v[kGradRows][kGradCols];
      bool finite = true;
#pragma unroll
      for (int i = 0; i < kGradRows; ++i) {
#pragma unroll
        for (int j = 0; j < kGradCols; ++j) {  // all loads first: their latencies overlap
          const int r = r0 + i, q = q0 + j;
          const bool used = (row_bits >> (r - rb) & 1u) && q <= qb && (col_bits >> (q - cb) & 1u);
          v[i][j] = used ? static_cast<T>(gk[(int64_t(r) * PW + q) * C]) * inv_count : T(0);
          finite = finite && std::isfinite(v[i][j]);
        }
      }
      const auto weigh = [&](auto masked) {
#pragma unroll
        for (int j = 0; j < kGradCols; ++j) {
          const int q = q0 + j - cb;
          if (q0 + j > qb) continue;  // warp-uniform, as are the branches below
          const unsigned rx = t.cols.touch[q];
#pragma unroll
          for (int x = 0; x < kTileW; ++x) {
            const T w = t.cols.weight[q][x];
#pragma unroll
            for (int i = 0; i < kGradRows; ++i) {
              if (!masked || (rx >> x & 1u)) sx[i][x] += v[i][j] * w;
            }
          }
        }
      };
      if (finite) {  // per lane: diverges only where a gradient is not finite
        weigh(std::false_type{});
      } else {
        weigh(std::true_type{});
      }
    }
#pragma unroll
    for (int i = 0; i < kGradRows; ++i) {
      if (r0 + i > pb) continue;
      const unsigned ry = t.rows.touch[r0 + i - rb];
#pragma unroll
      for (int y = 0; y < kTileH; ++y) {
        if (ry >> y & 1u) {
          const T wy = t.rows.weight[r0 + i - rb][y];
#pragma unroll
          for (int x = 0; x < kTileW; ++x) acc[y * kTileW + x] += wy * sx[i][x];
        }
      }
    }
  }
}

// One RoI's contribution to one tile, for the warp's 32 channels (warp-uniform: every lane calls
// it; `active` lanes, those with a channel, add). windows: the RoI's [PH + PW] windows, or
// nullptr for a wide RoI (weights from the geometry g). gk: the lane's channel of the RoI's
// gradient [PH, PW, C]; acc: the lane's tile, [y][x].
template <typename scalar_t, typename T>
__device__ __forceinline__ void add_roi_to_tile(T (&acc)[kTilePixels], WarpTables<T>& t,
                                                const AxisWindow<T>* __restrict__ windows, const roi::Geometry<T>& g,
                                                T inv_count, const scalar_t* gk, bool active, int C, int PH, int PW,
                                                int H, int W, int ty0, int tx0) {
  for (int rb = 0; rb < PH; rb += kAxisBins) {
    for (int cb = 0; cb < PW; cb += kAxisBins) {
      __syncwarp();  // the previous readers are done with the weights
      const int row_end = min(PH, rb + kAxisBins), col_end = min(PW, cb + kAxisBins);
      unsigned row_bits, col_bits;
      if (windows != nullptr) {
        tile_weights_from_windows(windows, windows + PH, ty0, tx0, rb, row_end, cb, col_end, t, row_bits, col_bits);
      } else {
        row_bits = axis_weights(g.start_h, g.bin_h, g.grid_h, H, ty0, rb, row_end, t.rows);
        col_bits = axis_weights(g.start_w, g.bin_w, g.grid_w, W, tx0, cb, col_end, t.cols);
      }
      __syncwarp();
      if (row_bits != 0 && col_bits != 0 && active) {
        add_bins(acc, t, gk, inv_count, C, PW, rb, cb, row_bits, col_bits);
      }
    }
  }
}

// Tile t: its level, image and first pixel.
struct TileCoord {
  int l, n, H, W, ty0, tx0;
};

template <typename scalar_t>
__device__ TileCoord tile_coord(const Levels<scalar_t>& lv, const TileLevels& tiles, int64_t t) {
  TileCoord tc;
  tc.l = 0;
  while (tc.l + 1 < lv.count && t >= tiles.begin[tc.l + 1]) {
    ++tc.l;
  }
  tc.H = lv.H[tc.l];
  tc.W = lv.W[tc.l];
  const int tiles_w = ceil_div(tc.W, kTileW), per_image = ceil_div(tc.H, kTileH) * tiles_w;
  const int64_t local = t - tiles.begin[tc.l];
  tc.n = int(local / per_image);
  const int r = int(local % per_image);
  tc.ty0 = r / tiles_w * kTileH;
  tc.tx0 = r % tiles_w * kTileW;
  return tc;
}

// Writes the block's tile (thread = channel blockIdx.y * kTileChannels + threadIdx.x, its 64 sums
// in acc) into the level's gradient; zeros included. NCHW: each thread its channel's tile rows,
// 8 contiguous pixels each, as 16-byte packs where the rows allow (v5 staged the tile in 33 KiB
// of shared memory for coalesced rows: that capped the NCHW tile kernel at 3 blocks per SM, and
// a row of a channel is one 32-byte sector either way).
template <typename scalar_t, bool kNHWC, typename T>
__device__ __forceinline__ void store_tile(const T (&acc)[kTilePixels], scalar_t* __restrict__ dst, const TileCoord& tc,
                                           int C) {
  const int c = blockIdx.y * kTileChannels + threadIdx.x;
  if (c >= C) {
    return;
  }
  if constexpr (kNHWC) {
#pragma unroll
    for (int p = 0; p < kTilePixels; ++p) {
      const int y = tc.ty0 + p / kTileW, x = tc.tx0 + p % kTileW;
      if (y < tc.H && x < tc.W) {
        dst[((int64_t(tc.n) * tc.H + y) * tc.W + x) * C + c] = static_cast<scalar_t>(acc[p]);
      }
    }
  } else {
    constexpr int kVec = 16 / int(sizeof(scalar_t));
    static_assert(kTileW % kVec == 0, "a tile row is whole 16-byte packs");
    scalar_t* plane = dst + (int64_t(tc.n) * C + c) * tc.H * tc.W;
    // tx0 is a multiple of kTileW (>= 16 bytes): with 16-byte aligned rows the packs are aligned
    const bool packed = tc.tx0 + kTileW <= tc.W && (int64_t(tc.W) * int(sizeof(scalar_t))) % 16 == 0 &&
                        reinterpret_cast<std::uintptr_t>(dst) % 16 == 0;
#pragma unroll
    for (int r = 0; r < kTileH; ++r) {
      const int y = tc.ty0 + r;
      if (y >= tc.H) {
        continue;
      }
      scalar_t* row = plane + int64_t(y) * tc.W + tc.tx0;
      if (packed) {
#pragma unroll
        for (int v = 0; v < kTileW; v += kVec) {
          Pack<scalar_t, kVec> pack;
#pragma unroll
          for (int e = 0; e < kVec; ++e) pack.v[e] = static_cast<scalar_t>(acc[r * kTileW + v + e]);
          *reinterpret_cast<Pack<scalar_t, kVec>*>(row + v) = pack;
        }
      } else {
#pragma unroll
        for (int x = 0; x < kTileW; ++x) {
          if (tc.tx0 + x < tc.W) {
            row[x] = static_cast<scalar_t>(acc[r * kTileW + x]);
          }
        }
      }
    }
  }
}

constexpr int kWideHit = 1 << 30;  // in a tile kernel's hit list

// Workspace of the split backward: [tile][share][pixel][channel] (a warp's stores coalesced), so
// block x's partial tile is the x-th.
template <typename T>
__device__ __forceinline__ T* partial_tile(T* partial, int64_t block, int C) {
  return partial + block * kTilePixels * C;
}

// grad: [K, PH, PW, C] (channels fastest); out: per level, NCHW or NHWC (kNHWC). Block x is share
// x % shares of tile x / shares: RoIs [share * rois_per_share, + rois_per_share). One share: the
// block writes its tile into out. Else it writes its partial sum into the workspace and counts
// itself in arrivals (per tile and channel slice); the last of a tile's shares to arrive adds the
// partials in share order and writes the tile. A tile's shares are neighbours in the grid, so they
// run at about the same time and that last block reads the others' partials from L2 (a second
// kernel over the whole workspace took 14 % of a 2 x 1000 box head's fwd+bwd on an H100).
// kMinBlocksPerSm 4 caps the registers at 128 for launches with many blocks; 1 leaves ptxas its
// 168 (see tile_blocks_many).
template <typename scalar_t, bool kNHWC, int kMinBlocksPerSm>
__global__ void __launch_bounds__(kTileChannels, kMinBlocksPerSm)
    roi_align_backward_tile_kernel(Levels<scalar_t> lv, OutLevels<scalar_t> out, TileLevels tiles,
                                   const scalar_t* __restrict__ grad, const at::opmath_type<scalar_t>* __restrict__ rois,
                                   const RoiExtent* __restrict__ extents,
                                   const AxisWindow<at::opmath_type<scalar_t>>* __restrict__ windows,
                                   const at::opmath_type<scalar_t>* __restrict__ inv_counts, int64_t K, int C, int PH,
                                   int PW, int sr, bool aligned, int shares, int64_t rois_per_share,
                                   at::opmath_type<scalar_t>* __restrict__ partial, unsigned* __restrict__ arrivals) {
  using T = at::opmath_type<scalar_t>;
  __shared__ WarpTables<T> warp_tables[kTileChannels / 32];
  __shared__ int hits[kTileChannels];  // RoI - k0, | kWideHit for a wide one
  __shared__ int warp_hits[kTileChannels / 32];
  __shared__ bool last_share;
  const int64_t tile = blockIdx.x / shares;
  const int share = int(blockIdx.x % shares);
  const TileCoord tc = tile_coord(lv, tiles, tile);
  const int l = tc.l, n = tc.n, H = tc.H, W = tc.W, ty0 = tc.ty0, tx0 = tc.tx0;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int c = blockIdx.y * kTileChannels + threadIdx.x;  // lanes past C only help with the walk
  const bool warp_active = blockIdx.y * kTileChannels + warp * 32 < C;
  const int64_t k_begin = share * rois_per_share, k_end = min(K, k_begin + rois_per_share);
  T acc[kTilePixels];
#pragma unroll
  for (int p = 0; p < kTilePixels; ++p) acc[p] = T(0);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kTileChannels) {
    bool hit = false, wide = false;
    if (k0 + threadIdx.x < k_end) {
      const RoiExtent e = extents[k0 + threadIdx.x];
      hit = e.level == l && e.n == n && e.y1 >= ty0 && e.y0 < ty0 + kTileH && e.x1 >= tx0 && e.x0 < tx0 + kTileW;
      wide = e.wide != 0;
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, hit);
    __syncthreads();  // every warp is done with the previous step's hits
    if (lane == 0) {
      warp_hits[warp] = __popc(ballot);
    }
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < kTileChannels / 32; ++w) {
      before += w < warp ? warp_hits[w] : 0;
      total += warp_hits[w];
    }
    if (hit) {
      hits[before + __popc(ballot & ((1u << lane) - 1u))] = int(threadIdx.x) | (wide ? kWideHit : 0);
    }
    __syncthreads();
    if (!warp_active) {
      continue;
    }
    for (int h = 0; h < total; ++h) {
      const int64_t k = k0 + (hits[h] & ~kWideHit);
      const scalar_t* gk = grad + k * PH * PW * C + c;
      if (hits[h] & kWideHit) {
        const roi::Geometry<T> g = roi::geometry(rois + 5 * k + 1, lv.scale[l], PH, PW, sr, aligned);
        add_roi_to_tile(acc, warp_tables[warp], static_cast<const AxisWindow<T>*>(nullptr), g, T(1) / g.count, gk,
                        c < C, C, PH, PW, H, W, ty0, tx0);
      } else {
        add_roi_to_tile(acc, warp_tables[warp], windows + k * (PH + PW), roi::Geometry<T>{}, inv_counts[k], gk, c < C,
                        C, PH, PW, H, W, ty0, tx0);
      }
    }
  }
  if (shares > 1) {
    if (c < C) {
      T* dst = partial_tile(partial, blockIdx.x, C);
#pragma unroll
      for (int p = 0; p < kTilePixels; ++p) dst[p * C + c] = acc[p];
    }
    __threadfence();  // the partial is visible device-wide before the arrival is counted
    __syncthreads();
    if (threadIdx.x == 0) {
      last_share = atomicAdd(arrivals + tile * gridDim.y + blockIdx.y, 1u) == unsigned(shares - 1);
    }
    __syncthreads();
    if (!last_share) {
      return;
    }
    __threadfence();
#pragma unroll
    for (int p = 0; p < kTilePixels; ++p) acc[p] = T(0);
    if (c < C) {
      for (int z = 0; z < shares; ++z) {  // share order, the own partial re-read: the same sum whoever is last
        const T* src = partial_tile(partial, tile * shares + z, C);
#pragma unroll
        for (int p = 0; p < kTilePixels; ++p) acc[p] += __ldcg(src + p * C + c);  // L2: written by other SMs
      }
    }
  }
  store_tile<scalar_t, kNHWC>(acc, out.data[l], tc, C);
}

// out[n, s, r] = in[n, r, s] for N matrices R x S, through shared-memory tiles of 64 rows (r) by at
// least 256 bytes of columns (s: 128 halves, 64 floats or doubles), both the reads and the writes
// coalesced: NCHW -> NHWC is R = C, S = H * W; NHWC -> NCHW the reverse. A thread issues all its
// loads (64 bytes; doubles 128) before its first store: 32 x 32 tiles (16 bytes per thread in
// flight) ran at 2.15 TB/s on the H200, under half its bandwidth. Rows are padded by one 4-byte
// word (a double: one element) so that a warp's transposed reads hit 32 different banks.
constexpr int kTransposeRows = 8;  // block: 32 x kTransposeRows threads

template <typename In>
struct TransposeTile {
  static constexpr int kR = 64;
  static constexpr int kS = sizeof(In) < 4 ? 64 * 4 / int(sizeof(In)) : 64;
  static constexpr int kPad = sizeof(In) < 4 ? 4 / int(sizeof(In)) : 1;
};

template <typename In, typename Out>
__global__ void __launch_bounds__(32 * kTransposeRows)
    transpose_kernel(const In* __restrict__ in, Out* __restrict__ out, int64_t N, int64_t R, int64_t S) {
  using Tile = TransposeTile<In>;
  constexpr int kLoadRows = Tile::kR / kTransposeRows, kLoadCols = Tile::kS / 32;
  constexpr int kStoreRows = Tile::kS / kTransposeRows, kStoreCols = Tile::kR / 32;
  __shared__ In tile[Tile::kR][Tile::kS + Tile::kPad];
  const int64_t s_tiles = ceil_div<int64_t>(S, Tile::kS);
  const int64_t r0 = blockIdx.x / s_tiles * Tile::kR, s0 = blockIdx.x % s_tiles * Tile::kS;
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const In* src = in + n * R * S;
    Out* dst = out + n * R * S;
    In v[kLoadRows][kLoadCols];
#pragma unroll
    for (int j = 0; j < kLoadRows; ++j) {
      const int64_t r = r0 + ty + j * kTransposeRows;
#pragma unroll
      for (int h = 0; h < kLoadCols; ++h) {
        const int64_t s = s0 + tx + h * 32;
        v[j][h] = r < R && s < S ? src[r * S + s] : In(0);
      }
    }
#pragma unroll
    for (int j = 0; j < kLoadRows; ++j) {
#pragma unroll
      for (int h = 0; h < kLoadCols; ++h) {
        tile[ty + j * kTransposeRows][tx + h * 32] = v[j][h];
      }
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kStoreRows; ++j) {
      const int64_t s = s0 + ty + j * kTransposeRows;
#pragma unroll
      for (int h = 0; h < kStoreCols; ++h) {
        const int64_t r = r0 + tx + h * 32;
        if (s < S && r < R) {
          dst[s * R + r] = static_cast<Out>(tile[tx + h * 32][ty + j * kTransposeRows]);
        }
      }
    }
    __syncthreads();
  }
}

template <typename In, typename Out>
void launch_transpose(const In* in, Out* out, int64_t N, int64_t R, int64_t S, cudaStream_t stream) {
  const int64_t tiles = ceil_div<int64_t>(R, TransposeTile<In>::kR) * ceil_div<int64_t>(S, TransposeTile<In>::kS);
  transpose_kernel<In, Out><<<dim3(unsigned(tiles), unsigned(std::min(N, kMaxGridY))), dim3(32, kTransposeRows), 0,
                              stream>>>(in, out, N, R, S);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// [N, C, H, W] NCHW-contiguous -> the same tensor, channels-last.
template <typename scalar_t>
at::Tensor to_nhwc(const at::Tensor& f, cudaStream_t stream) {
  at::Tensor t = at::empty(f.sizes(), f.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (t.numel() > 0) {
    launch_transpose(f.const_data_ptr<scalar_t>(), t.mutable_data_ptr<scalar_t>(), f.size(0), f.size(1),
                     f.size(2) * f.size(3), stream);
  }
  return t;
}

// All of the launch math.
constexpr int kStageBytes = 20 * 1024;  // shared-memory stage of an NCHW slice: with the tables, 8 blocks per SM

struct Plan {
  bool channels;  // the channel-vector kernels (reading NHWC); else the direct NCHW ones
  bool nhwc_copy;  // NCHW features read through NHWC copies
  int vec;         // channels per thread
  int slice;       // channels per block
  int slices;
  size_t stage_bytes;  // dynamic shared memory per block
};

bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// 16-byte channel vectors where C and every pointer the kernel reads or writes per channel allow.
// nhwc_io: the output or gradient the kernel accesses by channel vectors (nullptr: staged NCHW).
template <typename scalar_t>
int channel_vec(const RoiAlignProblem& p, const void* nhwc_io) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  if (p.C % kVec != 0) {
    return 1;
  }
  if (p.channels_last) {
    for (const at::Tensor& f : p.features) {
      if (!aligned16(f.const_data_ptr())) {
        return 1;
      }
    }
  }
  return nhwc_io == nullptr || aligned16(nhwc_io) ? kVec : 1;
}

// NCHW features: copying them to NHWC (a read and a write of each feature) pays once the gather is
// large next to the maps (the direct kernel reads a 32-byte sector per 4-byte corner), here once
// the outputs number a quarter of the feature elements; the stage must hold a slice of VEC channels.
template <typename scalar_t>
Plan plan_of(const RoiAlignProblem& p, int vec) {
  const int64_t bins = p.pooled_h * p.pooled_w;
  const int64_t slice_max = kStageBytes / (bins * int64_t(sizeof(scalar_t))) / vec * vec;
  Plan plan{};
  plan.vec = vec;
  if (p.channels_last) {
    plan.channels = true;
  } else {
    int64_t features = 0;
    for (const at::Tensor& f : p.features) {
      features += f.numel();
    }
    plan.channels = plan.nhwc_copy = slice_max >= vec && 4 * p.K * p.C * bins >= features;
  }
  if (plan.channels) {
    const int64_t slice = std::max<int64_t>(slice_max, vec);
    plan.slices = int(ceil_div<int64_t>(p.C, slice));
    plan.slice = int(ceil_div<int64_t>(ceil_div<int64_t>(p.C, plan.slices), vec) * vec);
    plan.stage_bytes = p.channels_last ? 0 : size_t(plan.slice * bins) * sizeof(scalar_t);
  }
  return plan;
}

dim3 channels_grid(const RoiAlignProblem& p, const Plan& plan) {
  return dim3(unsigned(plan.slices), unsigned(std::min(p.K, kMaxGridY)));
}

dim3 nchw_grid(const RoiAlignProblem& p) {
  const int64_t items = p.C * p.pooled_h * p.pooled_w;
  const int64_t gx = std::min(std::max<int64_t>(1, ceil_div<int64_t>(items, kThreads)), kMaxGridX);
  return dim3(unsigned(gx), unsigned(std::min(p.K, kMaxGridY)));
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

template <typename scalar_t, int VEC>
void launch_forward_channels(const RoiAlignProblem& p, const Plan& plan, const Levels<scalar_t>& lv,
                             scalar_t* out, cudaStream_t stream) {
  const auto* rois = p.rois.const_data_ptr<at::opmath_type<scalar_t>>();
  const int C = int(p.C), PH = int(p.pooled_h), PW = int(p.pooled_w), sr = int(p.sampling_ratio);
  const dim3 grid = channels_grid(p, plan);
  if (p.channels_last) {
    forward_channels_kernel<scalar_t, VEC, false><<<grid, kThreads, 0, stream>>>(lv, rois, p.K, p.N, C, PH, PW, sr,
                                                                                 p.aligned, plan.slice, out);
  } else {
    forward_channels_kernel<scalar_t, VEC, true><<<grid, kThreads, plan.stage_bytes, stream>>>(
        lv, rois, p.K, p.N, C, PH, PW, sr, p.aligned, plan.slice, out);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor forward(const RoiAlignProblem& p) {
  at::Tensor out = roi_align_allocate_output(p.features, p.rois, p.pooled_h, p.pooled_w);
  if (out.numel() == 0) {
    return out;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.features[0].scalar_type(), "detbench.roi_align", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const Plan plan = plan_of<scalar_t>(p, channel_vec<scalar_t>(p, p.channels_last ? o : nullptr));
    Levels<scalar_t> lv = levels_of<scalar_t>(p);
    if (!plan.channels) {
      forward_nchw_kernel<scalar_t><<<nchw_grid(p), kThreads, 0, stream>>>(
          lv, p.rois.const_data_ptr<at::opmath_type<scalar_t>>(), p.K, p.N, int(p.C), int(p.pooled_h),
          int(p.pooled_w), int(p.sampling_ratio), p.aligned, o);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    std::vector<at::Tensor> copies;  // alive until the kernel is queued (the allocator is stream-ordered)
    if (plan.nhwc_copy) {
      for (int l = 0; l < lv.count; ++l) {
        copies.push_back(to_nhwc<scalar_t>(p.features[l], stream));
        lv.data[l] = copies.back().const_data_ptr<scalar_t>();
      }
    }
    if (plan.vec == kVec) {
      launch_forward_channels<scalar_t, kVec>(p, plan, lv, o, stream);
    } else {
      launch_forward_channels<scalar_t, 1>(p, plan, lv, o, stream);
    }
  });
  return out;
}

// The backward's launch math. Shares: one while there are at least kBackwardBlocksPerSm tile
// blocks per SM (a clustered tile's chain of RoIs is long, so many more blocks than fit keep the
// SMs busy); else enough shares for that, each of at least kMinRoisPerShare RoIs, at most
// kMaxShares. The workspace (shares x tiles x 64 pixels x C floats) stays below ~(SMs x 112 +
// tiles) x 32 KiB per 128 channels (~0.5 GB on an H200). Measured on the H200 (fwd+bwd, ms):
// mask head (2 x 100 RoIs, 14x14, on 2 x 256 x 50 x 84: 308 tile blocks) fp32 NCHW 1 share 9.3,
// 6 shares 3.4, 12 shares 1.8, 16 shares 1.47; box head (2 x 1000 RoIs, 4,200 tile blocks) with
// 1 share / 4 shares: fp32 NHWC 3.23 / 2.87, NCHW 4.38 / 4.10.
constexpr int kBackwardBlocksPerSm = 112, kMinRoisPerShare = 8, kMaxShares = 16;

int backward_shares(int64_t blocks, int64_t K) {
  const int64_t wanted = ceil_div<int64_t>(int64_t(sm_count()) * kBackwardBlocksPerSm, std::max<int64_t>(blocks, 1));
  return int(std::max<int64_t>(1, std::min({wanted, K / kMinRoisPerShare, int64_t(kMaxShares)})));
}

// The tile kernel's register budget: with at least kManyTileBlocksPerSm blocks per SM (the box
// head) 4 resident blocks at 128 registers beat 3 at 168 (fp32 NHWC 3.50 -> 3.23 ms, fp16 2.64 ->
// 2.30); with few blocks, split into shares (the mask head), 168 registers win (fp32 1.47 vs 1.67 ms).
constexpr int kManyTileBlocksPerSm = 28;

bool tile_blocks_many(int64_t blocks) {
  return blocks >= int64_t(sm_count()) * kManyTileBlocksPerSm;
}

// The default (atomic) backward's blocks: enough (RoI, channel slice) blocks for kAtomicBlocksPerSm
// per SM (a mask head's 200 RoIs alone would leave most SMs idle), slices of at least
// kMinSliceVectors channel vectors.
constexpr int kAtomicBlocksPerSm = 16, kMinSliceVectors = 8;

template <typename scalar_t>
void backward_by_atomics(const RoiAlignProblem& p, const Levels<scalar_t>& lv, const at::Tensor& grad_nhwc,
                         std::vector<at::Tensor>& result, cudaStream_t stream) {
  using T = at::opmath_type<scalar_t>;
  // Channels-last gradients of the opmath type are the accumulators; others get an NHWC opmath one.
  const bool in_place = p.channels_last && std::is_same_v<scalar_t, T>;
  std::vector<at::Tensor> sums;
  OutLevels<T> sum_levels{};
  for (size_t l = 0; l < result.size(); ++l) {
    if (in_place) {
      result[l].zero_();
      sums.push_back(result[l]);
    } else {
      // (at::zeros would drop the memory format)
      sums.push_back(at::empty(result[l].sizes(), result[l].options()
                                                      .dtype(c10::CppTypeToScalarType<T>::value)
                                                      .memory_format(at::MemoryFormat::ChannelsLast))
                         .zero_());
    }
    sum_levels.data[l] = sums[l].mutable_data_ptr<T>();
  }
  // 16 bytes of accumulator per thread (float16: 8 bytes of gradient), so that one atomic
  // instruction of a warp covers one contiguous run (8 halves per thread took two 16-byte atomics
  // 32 bytes apart: float16 ran slower than float32)
  constexpr int kVec = 16 / sizeof(T);
  const int vec = p.C % kVec == 0 && aligned16(grad_nhwc.const_data_ptr()) ? kVec : 1;
  const int64_t vectors = p.C / vec;
  const int64_t wanted = ceil_div<int64_t>(int64_t(sm_count()) * kAtomicBlocksPerSm, p.K);
  const int64_t slices = std::max<int64_t>(1, std::min(wanted, vectors / kMinSliceVectors));
  const int slice = int(ceil_div<int64_t>(vectors, slices) * vec);
  const dim3 grid(unsigned(ceil_div<int64_t>(p.C, slice)), unsigned(std::min(p.K, kMaxGridY)));
  const auto launch = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, stream>>>(lv, sum_levels, p.rois.const_data_ptr<T>(), p.K, p.N, int(p.C),
                                         int(p.pooled_h), int(p.pooled_w), int(p.sampling_ratio), p.aligned, slice,
                                         grad_nhwc.const_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (vec == kVec) {
    launch(backward_atomic_kernel<scalar_t, kVec>);
  } else {
    launch(backward_atomic_kernel<scalar_t, 1>);
  }
  if (in_place) {
    return;
  }
  for (size_t l = 0; l < result.size(); ++l) {
    at::Tensor& r = result[l];
    if (p.channels_last) {
      r.copy_(sums[l]);
    } else {  // [N, H * W, C] -> [N, C, H * W]
      launch_transpose(sums[l].const_data_ptr<T>(), r.mutable_data_ptr<scalar_t>(), r.size(0),
                       r.size(2) * r.size(3), r.size(1), stream);
    }
  }
}

std::vector<at::Tensor> backward(const RoiAlignProblem& p, const at::Tensor& grad_in) {
  const at::Tensor grad = roi_align_prepare_grad(p, grad_in);
  const auto format = p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  std::vector<at::Tensor> result;
  TileLevels tiles{};
  for (size_t l = 0; l < p.features.size(); ++l) {
    const at::Tensor& f = p.features[l];
    result.push_back(at::empty(f.sizes(), f.options().memory_format(format)));
    tiles.begin[l + 1] = tiles.begin[l] + f.size(0) * ceil_div<int64_t>(f.size(2), kTileH) *
                                              ceil_div<int64_t>(f.size(3), kTileW);
  }
  const int64_t total_tiles = tiles.begin[p.features.size()];
  if (total_tiles == 0 || p.C == 0) {
    return result;
  }
  if (p.K == 0) {  // no RoI: a fill (the tile kernel took 0.156 ms to store 2 x 256 x 200 x 336 float32 zeros; a fill ~0.03)
    for (at::Tensor& r : result) {
      r.zero_();
    }
    return result;
  }
  // The tile gather with deterministic algorithms, and for sampling grids over 2 x 2 (adaptive ones
  // included): its work does not grow with the samples, the atomics' does (H100, box head 2 x 1000
  // RoIs, NCHW float32 fwd+bwd: sampling_ratio 0, atomics 7.44 ms, gather 5.27; ratio 2, 1.27 vs 2.51).
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const bool tiles_fit = total_tiles * kMaxShares < (int64_t(1) << 31);
  DETBENCH_CHECK(!deterministic || tiles_fit, p.op,
                 "feature maps this large are not supported in the deterministic backward");
  const bool gather = deterministic || (tiles_fit && !(p.sampling_ratio >= 1 && p.sampling_ratio <= 2));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.features[0].scalar_type(),
                                  "detbench.roi_align_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const Levels<scalar_t> lv = levels_of<scalar_t>(p);
    OutLevels<scalar_t> out{};
    for (size_t l = 0; l < result.size(); ++l) {
      out.data[l] = result[l].mutable_data_ptr<scalar_t>();
    }
    const int C = int(p.C), PH = int(p.pooled_h), PW = int(p.pooled_w), sr = int(p.sampling_ratio);
    const T* rois = p.rois.const_data_ptr<T>();
    // the gradient channels-fastest, [K, PH, PW, C]
    at::Tensor grad_nhwc = grad;
    if (!p.channels_last && grad.numel() > 0) {
      grad_nhwc = at::empty({p.K, PH, PW, C}, grad.options());
      launch_transpose(grad.const_data_ptr<scalar_t>(), grad_nhwc.mutable_data_ptr<scalar_t>(), p.K, p.C,
                       p.pooled_h * p.pooled_w, stream);
    }
    if (!gather) {
      backward_by_atomics<scalar_t>(p, lv, grad_nhwc, result, stream);
      return;
    }
    at::Tensor extents = at::empty({p.K, int64_t(sizeof(RoiExtent) / sizeof(int))}, p.rois.options().dtype(at::kInt));
    RoiExtent* ext = reinterpret_cast<RoiExtent*>(extents.mutable_data_ptr<int>());
    roi_extent_kernel<scalar_t><<<unsigned(ceil_div<int64_t>(p.K, kThreads)), kThreads, 0, stream>>>(
        lv, rois, p.K, p.N, PH, PW, sr, p.aligned, ext);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t window_count = p.K * (PH + PW);
    at::Tensor window_bytes = at::empty({window_count * int64_t(sizeof(AxisWindow<T>))}, p.rois.options().dtype(at::kByte));
    at::Tensor inv_counts = at::empty({p.K}, p.rois.options().dtype(c10::CppTypeToScalarType<T>::value));
    auto* windows = reinterpret_cast<AxisWindow<T>*>(window_bytes.mutable_data_ptr<uint8_t>());
    const int64_t window_blocks = std::min<int64_t>(ceil_div<int64_t>(window_count, kThreads), kMaxGridY);
    roi_windows_kernel<scalar_t><<<unsigned(window_blocks), kThreads, 0, stream>>>(
        lv, rois, ext, p.K, PH, PW, sr, p.aligned, windows, inv_counts.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t slices = ceil_div<int64_t>(p.C, kTileChannels);
    const int shares = backward_shares(total_tiles * slices, p.K);
    const int64_t rois_per_share = ceil_div<int64_t>(p.K, shares);
    at::Tensor partial, arrivals;
    if (shares > 1) {
      partial = at::empty({total_tiles, shares, kTilePixels, p.C}, grad.options().dtype(c10::CppTypeToScalarType<T>::value));
      arrivals = at::zeros({total_tiles, slices}, grad.options().dtype(at::kInt));
    }
    T* partial_data = shares > 1 ? partial.mutable_data_ptr<T>() : nullptr;
    auto* arrival_data = shares > 1 ? reinterpret_cast<unsigned*>(arrivals.mutable_data_ptr<int>()) : nullptr;
    // kMinBlocksPerSm: the tile kernel's register budget (tile_blocks_many).
    const auto launch = [&](auto kNHWC, auto kMinBlocksPerSm) {
      const auto tile_kernel = roi_align_backward_tile_kernel<scalar_t, kNHWC, kMinBlocksPerSm>;
      tile_kernel<<<dim3(unsigned(total_tiles * shares), unsigned(slices)), kTileChannels, 0, stream>>>(
          lv, out, tiles, grad_nhwc.const_data_ptr<scalar_t>(), rois, ext, windows, inv_counts.const_data_ptr<T>(), p.K,
          C, PH, PW, sr, p.aligned, shares, rois_per_share, partial_data, arrival_data);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    const auto by_budget = [&](auto kNHWC) {
      if (tile_blocks_many(total_tiles * slices)) {
        launch(kNHWC, std::integral_constant<int, 4>{});
      } else {
        launch(kNHWC, std::integral_constant<int, 1>{});
      }
    };
    if (p.channels_last) {
      by_budget(std::true_type{});
    } else {
      by_budget(std::false_type{});
    }
  });
  return result;
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
