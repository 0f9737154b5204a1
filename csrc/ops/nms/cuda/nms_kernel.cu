// CUDA kernels of detbench.nms, batched_nms, segmented_nms and segmented_nms_padded.
//
// Every op reduces to greedy NMS over segments (nms: one; batched_nms: one per class):
//
// 1. Sort, stable, so that each segment's boxes are contiguous and in rank order (equal scores
//    by index: the input is index-ordered). Boxes that can never be kept (non-finite
//    coordinate, NaN score, score <= score_threshold, outside every segment) go last.
//    - Few segments, small on average (segmented ops, nms of <= kSmallSegment boxes): each
//      segment sorted on its own by cub's segmented sort (one launch, a block per segment).
//    - Otherwise a device-wide cub radix sort on (segment, descending score) keys; a small
//      kernel finds each segment's range by binary search.
//
// 2. Segments of at most kSmallSegment boxes, when the average segment is that small: the whole
//    upper-triangular IoU > threshold bitmask of every such segment is computed by the whole GPU
//    (small_mask_kernel), then a block per segment stages it in shared memory and one warp walks
//    it 64 boxes at a time (small_resolve_kernel). O(n^2) work per segment, but all of it parallel: the RPN case
//    (8 images x 5 levels x 1000 boxes) is ~20 M IoUs, ~10 us on an H200.
//
// 3. nms_kernel, persistent (as many blocks as fit on the GPU at once), for the other segments.
//    A segment is walked in windows of kWindow ranked boxes. The window's boxes not yet resolved
//    are the pending list (in shared memory). A round:
//      (a) every pending box is tested against the boxes kept since it was last tested (the kept
//          list is in global memory, in rank order): a warp tests one box against 32 x R kept
//          boxes per step and stops at the first that suppresses it;
//      (b) the pending list is compacted, and its first boxes (a batch) are resolved exactly: the
//          batch's upper-triangular IoU > threshold bitmask is computed in parallel, then one warp
//          walks it 64 boxes (one word) at a time, appending the kept boxes to the kept list.
//    Each batch box was tested against every box kept before it, and the mask settles the rest,
//    so a box is kept iff no earlier kept box suppresses it: exactly the greedy result.
//    Segments up to max(2048, N / 8) boxes are processed each by one block, many at once.
//    Larger segments are processed one at a time by all blocks together, with a software grid
//    barrier between the steps: stage (a) and the batch masks are spread over the whole GPU;
//    once a window has few pending boxes left, block 0 finishes it alone.
//    Memory: the kept list (boxes, areas, indices) and the flags are O(N); the bitmask exists only
//    per batch (512 x 512 bits); nothing N x N is ever built.
//
// No host synchronization anywhere (segmented ops): sizes come from the host (N, S, the output
// size); data-dependent counts stay on the device. nms and batched_nms read their output length
// once, at the end.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <mutex>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cub/cub.cuh>
#include <torch/library.h>

#include "detbench.h"
#include "ops/box_iou/iou.h"
#include "ops/nms/nms.h"

namespace detbench {

namespace {

constexpr int kThreads = 512;  // per block of nms_kernel
constexpr int kWarps = kThreads / 32;
constexpr int kWindow = 4096;  // ranked boxes per window (the pending list's capacity)
constexpr int kPerThread = kWindow / kThreads;
constexpr int kBatch = 512;        // boxes resolved together by all blocks (a large segment)
constexpr int kWords = kBatch / 64;  // 64-bit words of a bitmask row
constexpr int kLocalBatch = 256;   // boxes resolved together by one block
constexpr int kSlice = 1024;       // kept boxes per stage-(a) work unit
constexpr int kSortThreads = 256;
// Small segments (at most kSmallSegment boxes) skip the rounds: their whole upper-triangular
// bitmask is computed by the whole GPU (small_mask_kernel), then one warp per segment resolves
// it (small_resolve_kernel).
constexpr int kSmallSegment = 1024;
constexpr int kSmallWords = kSmallSegment / 64;
constexpr int kMaskWarps = 8;      // warps per block of small_mask_kernel
constexpr int kResolveThreads = 256;  // per block of small_resolve_kernel (they stage the mask)
// cub's segmented sort synchronizes with the host (to size its launches) above this many
// segments (its smallest partitioning threshold); at or below, it is one sync-free launch.
constexpr int kMaxSegmentedSortSegments = 300;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
struct alignas(16) Box4 {
  T x1, y1, x2, y2;
};

template <typename T>
struct Shared {
  int32_t pend[kWindow];  // pending boxes: positions in the window, in rank order
  Box4<T> bbox[kBatch];   // the batch
  T barea[kBatch];
  int32_t bidx[kBatch];
  uint64_t mask[kBatch * kWords];  // row i, word w: bit j set iff batch box i suppresses 64 w + j > i
  Box4<T> rbox[kBatch];  // the boxes the last resolve kept, in rank order
  T rarea[kBatch];
  typename cub::BlockScan<int, kThreads>::TempStorage scan;
  int32_t kept;  // broadcast of the kept count after a batch
};

template <typename scalar_t, typename T>
struct NmsArgs {
  const Box4<T>* sbox;       // [N] boxes by sorted position, converted
  const T* sarea;            // [N] their areas
  const int32_t* order;      // sorted position -> box index
  const int32_t* seg_begin;  // [S]: segment s is sorted positions [seg_begin[s], seg_end[s])
  const int32_t* seg_end;
  const int32_t* num_segments;  // on the device (batched_nms), or nullptr: num_segments_host
  int32_t num_segments_host;
  const int32_t* big_list;  // segments processed by all blocks together
  const int32_t* big_count;
  int32_t big_threshold;
  int32_t small_segment;  // segments of at most this many boxes are left to the small path (-1: none)
  T iou_threshold;
  int32_t max_out;
  Box4<T>* kept_box;  // kept list of segment s at [seg_begin[s], ...), in rank order
  T* kept_area;
  int32_t* kept_idx;
  uint8_t* dead;  // [N] by sorted position: suppressed by a kept box (stage a)
  uint64_t* gmask;  // [kBatch * kWords]: a large segment's batch mask
  unsigned int* barrier;
  int32_t* gkept;  // a large segment's kept count, published by block 0
  bool* keep_mask;  // optional outputs
  int64_t* padded;
  int64_t padded_cols;
  int64_t* counts;
};

// ---------------------------------------------------------------------------------------------
// Device helpers

template <typename T>
__device__ __forceinline__ Box4<T> ldcg_box(const Box4<T>* p) {
  if constexpr (std::is_same_v<T, float>) {
    const float4 v = __ldcg(reinterpret_cast<const float4*>(p));
    return {v.x, v.y, v.z, v.w};
  } else {
    const double2 a = __ldcg(reinterpret_cast<const double2*>(p));
    const double2 b = __ldcg(reinterpret_cast<const double2*>(p) + 1);
    return {a.x, a.y, b.x, b.y};
  }
}

// For data written before the kernel started (read-only during it).
template <typename T>
__device__ __forceinline__ Box4<T> ldg_box(const Box4<T>* p) {
  if constexpr (std::is_same_v<T, float>) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    return {v.x, v.y, v.z, v.w};
  } else {
    const double2 a = __ldg(reinterpret_cast<const double2*>(p));
    const double2 b = __ldg(reinterpret_cast<const double2*>(p) + 1);
    return {a.x, a.y, b.x, b.y};
  }
}

template <typename T, typename scalar_t>
__device__ __forceinline__ Box4<T> load_input_box(const scalar_t* __restrict__ boxes, int32_t i) {
  const scalar_t* b = boxes + 4 * int64_t(i);
  return {static_cast<T>(b[0]), static_cast<T>(b[1]), static_cast<T>(b[2]), static_cast<T>(b[3])};
}

template <typename T>
__device__ __forceinline__ T area_of(const Box4<T>& b) {
  return box_area(b.x1, b.y1, b.x2, b.y2);
}

// Whether kept box k (area ak) suppresses box b (area ab): IoU > threshold.
template <typename T>
__device__ __forceinline__ bool suppresses(const Box4<T>& k, T ak, const Box4<T>& b, T ab, T thr) {
  return iou_above(box_intersection(k.x1, k.y1, k.x2, k.y2, b.x1, b.y1, b.x2, b.y2), ak, ab, thr);
}

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// A grid-wide barrier. Valid because nms_kernel is launched with no more blocks than fit on the
// GPU at once (occupancy, with the shared-memory carveout preferred at its maximum): blocks that
// are not resident yet (other kernels on the GPU) get an SM as soon as one frees up. `target`
// counts the arrivals expected so far (thread 0's copy). Should a block still be waiting after
// 10 s, something is badly wrong: the kernel traps (an error) rather than hang.
__device__ __forceinline__ void grid_sync(unsigned int* counter, unsigned int& target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    target += gridDim.x;
    __threadfence();
    atomicAdd(counter, 1u);
    uint64_t start = 0;
    for (unsigned spins = 0; static_cast<int>(*reinterpret_cast<volatile unsigned int*>(counter) - target) < 0;
         ++spins) {
      __nanosleep(32);
      if ((spins & 4095) == 4095) {
        const uint64_t now = global_timer_ns();
        if (start == 0) {
          start = now;
        } else if (now - start > 10000000000ull) {
          __trap();
        }
      }
    }
    __threadfence();
  }
  __syncthreads();
}

// A flag other blocks may be writing, read once per warp so that the whole warp agrees.
__device__ __forceinline__ bool warp_read_flag(const uint8_t* flag) {
  int v = 0;
  if ((threadIdx.x & 31) == 0) {
    v = __ldcg(flag);
  }
  return __shfl_sync(kFullMask, v, 0) != 0;
}

// ---------------------------------------------------------------------------------------------
// The steps of a round

// (a) Pending boxes pend[head, head + np) against the kept boxes [lo, kept); warps warp0,
// warp0 + nwarps, ... take the work. A warp tests one box against 32 x R kept boxes per step and
// stops at the first hit (a ballot).
//   recent_in_smem: the kept boxes [lo, kept) are those the last resolve kept, also in shared
//   memory (sm.rbox): one unit per box, R = 1 (short lists, no load latency), two boxes' loads
//   in flight per warp.
//   Otherwise from the kept list in global memory, in units of (box, slice of kSlice kept boxes),
//   slice-major, so that by the time a box's later slices come up it is often dead already.
template <typename scalar_t, typename T>
__device__ void test_against_kept(const NmsArgs<scalar_t, T>& a, const Shared<T>& sm, int32_t begin, int32_t w0,
                                  int head, int np, int lo, int kept, bool recent_in_smem, int64_t warp0,
                                  int64_t nwarps) {
  const int nk = kept - lo;
  if (nk <= 0 || np <= 0) {
    return;
  }
  const int lane = threadIdx.x & 31;
  const T thr = a.iou_threshold;
  if (recent_in_smem) {
    auto test = [&](int64_t sp, const Box4<T>& b, T ab) {
      for (int k0 = 0; k0 < nk; k0 += 32) {
        const int k = min(k0 + lane, nk - 1);  // past the end: test the last box again
        if (__any_sync(kFullMask, suppresses(sm.rbox[k], sm.rarea[k], b, ab, thr))) {
          if (lane == 0) {
            a.dead[sp] = 1;
          }
          return;
        }
      }
    };
    for (int64_t u = warp0; u < np; u += 2 * nwarps) {
      const int64_t u2 = u + nwarps;
      const int64_t sp1 = int64_t(w0) + sm.pend[head + u];
      const int64_t sp2 = u2 < np ? int64_t(w0) + sm.pend[head + u2] : sp1;
      const Box4<T> b1 = ldg_box(a.sbox + sp1), b2 = ldg_box(a.sbox + sp2);
      const T a1 = __ldg(a.sarea + sp1), a2 = __ldg(a.sarea + sp2);
      test(sp1, b1, a1);
      if (u2 < np) {
        test(sp2, b2, a2);
      }
    }
    return;
  }
  constexpr int R = sizeof(T) == 4 ? 4 : 2;  // kept boxes per lane per step
  const int per = (nk + kSlice - 1) / kSlice;
  const int64_t units = int64_t(np) * per;
  const Box4<T>* kept_box = a.kept_box + begin;
  const T* kept_area = a.kept_area + begin;
  for (int64_t u = warp0; u < units; u += nwarps) {
    const int sl = int(u / np);
    const int pi = int(u - int64_t(sl) * np);
    const int64_t sp = int64_t(w0) + sm.pend[head + pi];
    if (per > 1 && warp_read_flag(a.dead + sp)) {
      continue;
    }
    const Box4<T> b = ldg_box(a.sbox + sp);
    const T ab = __ldg(a.sarea + sp);
    const int k_lo = lo + sl * kSlice;
    const int k_hi = min(k_lo + kSlice, kept);
    for (int k0 = k_lo; k0 < k_hi; k0 += 32 * R) {
      Box4<T> kb[R];
      T ka[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int k = min(k0 + r * 32 + lane, k_hi - 1);  // past the end: test the last box again
        kb[r] = ldcg_box(kept_box + k);
        ka[r] = __ldcg(kept_area + k);
      }
      bool hit = false;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        hit |= suppresses(kb[r], ka[r], b, ab, thr);
      }
      if (__any_sync(kFullMask, hit)) {
        if (lane == 0) {
          a.dead[sp] = 1;
        }
        break;
      }
    }
  }
}

// Compacts pend[head, head + np) to its boxes not dead, in order, at pend[0, ...); returns how
// many. Every thread of the block calls it.
template <typename T>
__device__ int compact_pending(Shared<T>& sm, const uint8_t* dead, int32_t w0, int head, int np) {
  if (np <= 0) {
    return 0;
  }
  int v[kPerThread];
  uint8_t d[kPerThread];
  int count = 0;
  const int base = threadIdx.x * kPerThread;
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {  // all loads first (indices past np reread the last)
    v[e] = sm.pend[head + min(base + e, np - 1)];
    d[e] = __ldcg(dead + int64_t(w0) + v[e]);
  }
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {
    if (base + e < np && !d[e]) {
      ++count;
    } else {
      v[e] = -1;
    }
  }
  int offset = 0, total = 0;
  cub::BlockScan<int, kThreads>(sm.scan).ExclusiveSum(count, offset, total);
  __syncthreads();  // all of pend read before any is written
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {
    if (v[e] >= 0) {
      sm.pend[offset++] = v[e];
    }
  }
  __syncthreads();
  return total;
}

// The batch: the first nb pending boxes, into shared memory.
template <typename scalar_t, typename T>
__device__ void load_batch(const NmsArgs<scalar_t, T>& a, Shared<T>& sm, int32_t w0, int nb) {
  for (int j = threadIdx.x; j < nb; j += kThreads) {
    const int64_t sp = int64_t(w0) + sm.pend[j];
    sm.bbox[j] = ldg_box(a.sbox + sp);
    sm.barea[j] = __ldg(a.sarea + sp);
    sm.bidx[j] = a.order[sp];
  }
}

// Bits of box bi (area ai) against 64 column boxes cols[0, 64): bit b set iff bi suppresses
// cols[b], for the columns [lo, hi) only (the others: 0; all 64 must be readable). All 64 tests
// fully unrolled and branch-free (constant bit positions), so that the independent tests
// overlap; the columns outside [lo, hi) are masked off afterwards, and in the rare word where the
// division must decide a test, the word is redone exactly.
template <typename T>
__device__ __forceinline__ uint64_t suppression_word(const Box4<T>& bi, T ai, const Box4<T>* cols, const T* col_area,
                                                     int lo, int hi, const IouCutoffs<T>& cut) {
  uint64_t bits = 0;
  bool unsure = false;
#pragma unroll
  for (int b = 0; b < 64; ++b) {
    const Box4<T> bj = cols[b];
    bool decided;
    const bool hit = iou_above_without_division(
        box_intersection(bi.x1, bi.y1, bi.x2, bi.y2, bj.x1, bj.y1, bj.x2, bj.y2), ai, col_area[b], cut, decided);
    bits |= hit ? (1ull << b) : 0ull;
    unsure |= !decided;
  }
  bits &= lo >= hi ? 0 : (~0ull >> (64 - (hi - lo))) << lo;
  if (unsure) {
    bits = 0;
    for (int b = lo; b < hi; ++b) {
      bits |= static_cast<uint64_t>(suppresses(bi, ai, cols[b], col_area[b], cut.threshold)) << b;
    }
  }
  return bits;
}

// Word wd of row i of the batch bitmask. Threads of a warp take consecutive rows of one word, so
// that they read the same column boxes (a shared-memory broadcast). A loop over the row's own
// columns: in this register-capped persistent kernel the 64 unrolled tests of suppression_word
// ran slower (v3d/v3e), and the rounds' batches are often a few boxes.
template <typename T>
__device__ __forceinline__ uint64_t mask_word(const Shared<T>& sm, int nb, int i, int wd, T thr) {
  const int lo = max(i + 1 - 64 * wd, 0), hi = min(nb - 64 * wd, 64);
  uint64_t bits = 0;
  const Box4<T> bi = sm.bbox[i];
  const T ai = sm.barea[i];
  for (int b = lo; b < hi; ++b) {
    if (suppresses(bi, ai, sm.bbox[64 * wd + b], sm.barea[64 * wd + b], thr)) {
      bits |= 1ull << b;
    }
  }
  return bits;
}

// OR of x over the warp (all lanes get it): two redux instructions on sm_80+, else a butterfly.
__device__ __forceinline__ uint64_t warp_or(uint64_t x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned lo = __reduce_or_sync(kFullMask, static_cast<unsigned>(x));
  const unsigned hi = __reduce_or_sync(kFullMask, static_cast<unsigned>(x >> 32));
  return (static_cast<uint64_t>(hi) << 32) | lo;
#else
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    x |= __shfl_xor_sync(kFullMask, x, off);
  }
  return x;
#endif
}

// Greedy NMS over nb ranked boxes given their upper-triangular IoU > threshold bitmask, by one
// warp, one 64-box word at a time. row_word(r, v) returns word v (>= r / 64) of row r: bit b set
// iff box r suppresses box 64 v + b (> r). keep_box(j, q) is called for each kept box j, the q-th
// kept (0-based, in rank order). Keeps at most `room` (> 0) boxes; returns how many it kept.
// Within a word, greedy keeps the set G with G = cand \ (boxes suppressed by G), where cand are
// the word's boxes not suppressed by earlier words: G is the one fixed point of
// K -> cand \ rows(K) (each bit depends only on lower bits), and iterating it from K = cand
// makes bits [0, t) exact after t steps. Each step ORs the rows of K across the warp (a
// butterfly), so a word costs a few steps, not one step per kept box as a bit-by-bit walk does.
template <int kMaxWords, typename RowWord, typename KeepBox>
__device__ __forceinline__ int greedy_over_mask(int nb, int room, RowWord row_word, KeepBox keep_box) {
  static_assert(kMaxWords <= 32, "lane l holds word l of the suppressed set");
  const int lane = threadIdx.x & 31;
  const int words = (nb + 63) / 64;
  uint64_t removed = 0;  // lane l < words: the boxes 64 l .. 64 l + 63 suppressed so far
  int added = 0;
  for (int w = 0; w < words; ++w) {
    // Lane l holds rows 64 w + l and 64 w + 32 + l: their words w (d0, d1) and later (row0,
    // row1), all loaded first so that their latencies overlap.
    const int r0 = 64 * w + lane;
    const int r1 = r0 + 32;
    const uint64_t d0 = r0 < nb ? row_word(r0, w) : 0;
    const uint64_t d1 = r1 < nb ? row_word(r1, w) : 0;
    uint64_t row0[kMaxWords], row1[kMaxWords];
#pragma unroll
    for (int v = 0; v < kMaxWords; ++v) {
      const bool later = v > w && v < words;
      row0[v] = later && r0 < nb ? row_word(r0, v) : 0;
      row1[v] = later && r1 < nb ? row_word(r1, v) : 0;
    }
    const uint64_t cur = __shfl_sync(kFullMask, removed, w);
    const int nbits = min(64, nb - 64 * w);
    const uint64_t valid = nbits == 64 ? ~0ull : ((1ull << nbits) - 1);
    const uint64_t cand = ~cur & valid;
    uint64_t keep = cand;
    while (true) {  // uniform over the warp; at most 65 steps
      const uint64_t sup = warp_or((((keep >> lane) & 1) ? d0 : 0) | (((keep >> (lane + 32)) & 1) ? d1 : 0));
      const uint64_t next = cand & ~sup;
      if (next == keep) {
        break;
      }
      keep = next;
    }
    const bool full = added + __popcll(keep) >= room;
    while (added + __popcll(keep) > room) {  // keep the first ones only
      keep &= ~(1ull << (63 - __clzll(keep)));
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int bit = lane + 32 * h;
      if ((keep >> bit) & 1) {
        keep_box(64 * w + bit, added + __popcll(keep & ((1ull << bit) - 1)));
      }
    }
    added += __popcll(keep);
    if (full) {
      break;
    }
    // The kept rows suppress boxes of the later words: OR them across the warp, every word at
    // once (no branches, so that the reductions overlap).
    if (keep != 0) {
      const uint64_t k0 = ((keep >> lane) & 1) ? ~0ull : 0, k1 = ((keep >> (lane + 32)) & 1) ? ~0ull : 0;
#pragma unroll
      for (int v = 0; v < kMaxWords; ++v) {
        const uint64_t x = warp_or((row0[v] & k0) | (row1[v] & k1));  // 0 unless w < v < words
        removed |= lane == v ? x : 0;
      }
    }
  }
  return added;
}

// Resolves the batch (nb boxes, mask in shared memory) with warp 0; appends the kept boxes to
// the kept list (and to the outputs) after the `kept` already there, stopping at max_out. Leaves
// the new kept count in sm.kept.
template <typename scalar_t, typename T>
__device__ void resolve_batch(const NmsArgs<scalar_t, T>& a, Shared<T>& sm, int s, int32_t begin, int nb, int kept) {
  const int added = greedy_over_mask<kWords>(
      nb, a.max_out - kept, [&](int r, int v) { return sm.mask[r * kWords + v]; },
      [&](int j, int q0) {
        const int q = kept + q0;
        const int32_t idx = sm.bidx[j];
        a.kept_box[begin + q] = sm.bbox[j];
        a.kept_area[begin + q] = sm.barea[j];
        a.kept_idx[begin + q] = idx;
        sm.rbox[q0] = sm.bbox[j];
        sm.rarea[q0] = sm.barea[j];
        if (a.keep_mask != nullptr) {
          a.keep_mask[idx] = true;
        }
        if (a.padded != nullptr) {
          a.padded[int64_t(s) * a.padded_cols + q] = idx;
        }
      });
  if ((threadIdx.x & 31) == 0) {
    sm.kept = kept + added;
  }
}

// Rounds over the pending boxes pend[0, np) of the window at w0, by this block alone, until none
// is left or max_out is reached. The pending boxes have been tested against the kept boxes
// [0, lo). Returns the new kept count (uniform).
template <typename scalar_t, typename T>
__device__ int block_rounds(const NmsArgs<scalar_t, T>& a, Shared<T>& sm, int s, int32_t begin, int32_t w0, int np,
                            int lo, int kept) {
  const int warp = threadIdx.x >> 5;
  int head = 0;
  bool recent = false;  // whether [lo, kept) are the last resolve's, in shared memory
  while (true) {
    test_against_kept(a, sm, begin, w0, head, np, lo, kept, recent, warp, kWarps);
    __syncthreads();
    np = compact_pending(sm, a.dead, w0, head, np);
    if (np == 0) {
      break;
    }
    const int nb = min(np, kLocalBatch);
    load_batch(a, sm, w0, nb);
    __syncthreads();
    const int words = (nb + 63) / 64;
    for (int t = threadIdx.x; t < nb * words; t += kThreads) {
      const int wd = t / nb;
      const int i = t - wd * nb;
      sm.mask[i * kWords + wd] = mask_word(sm, nb, i, wd, a.iou_threshold);
    }
    __syncthreads();
    if (warp == 0) {
      resolve_batch(a, sm, s, begin, nb, kept);
    }
    __syncthreads();
    lo = kept;
    kept = sm.kept;
    recent = true;
    head = nb;
    np -= nb;
    if (np == 0 || kept >= a.max_out) {
      break;
    }
  }
  return kept;
}

// A small segment, by this block alone.
template <typename scalar_t, typename T>
__device__ void segment_by_block(const NmsArgs<scalar_t, T>& a, Shared<T>& sm, int s) {
  const int32_t begin = a.seg_begin[s], end = a.seg_end[s];
  int kept = 0;
  for (int32_t w0 = begin; w0 < end && kept < a.max_out; w0 += kWindow) {
    const int n = min(kWindow, end - w0);
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += kThreads) {
      sm.pend[i] = i;
    }
    __syncthreads();
    kept = block_rounds(a, sm, s, begin, w0, n, 0, kept);
  }
  if (threadIdx.x == 0 && a.counts != nullptr) {
    a.counts[s] = kept;
  }
}

// A large segment, by all blocks together. Every block runs the same control flow (the same
// barriers), driven by values that are identical in all blocks after each barrier.
template <typename scalar_t, typename T>
__device__ void segment_by_grid(const NmsArgs<scalar_t, T>& a, Shared<T>& sm, int s, unsigned int& target) {
  const int32_t begin = a.seg_begin[s], end = a.seg_end[s];
  const int64_t warp0 = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t nwarps = int64_t(gridDim.x) * kWarps;
  int kept = 0;
  for (int32_t w0 = begin; w0 < end && kept < a.max_out; w0 += kWindow) {
    const int n = min(kWindow, end - w0);
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += kThreads) {
      sm.pend[i] = i;
    }
    __syncthreads();
    int np = n, head = 0, lo = 0;
    while (true) {
      test_against_kept(a, sm, begin, w0, head, np, lo, kept, false, warp0, nwarps);
      grid_sync(a.barrier, target);
      np = compact_pending(sm, a.dead, w0, head, np);
      // Few left (or none): block 0 finishes the window alone. Block 0 may then mark boxes dead
      // while a slower block still reads the flags: that block sees a smaller np, so the test
      // must be one that a smaller np passes too (np == 0 must not take a branch of its own).
      if (np <= kBatch) {
        if (blockIdx.x == 0) {
          const int k = np > 0 ? block_rounds(a, sm, s, begin, w0, np, kept, kept) : kept;
          if (threadIdx.x == 0) {
            *a.gkept = k;
          }
        }
        grid_sync(a.barrier, target);
        kept = __ldcg(a.gkept);
        break;
      }
      load_batch(a, sm, w0, kBatch);
      __syncthreads();
      for (int t = blockIdx.x * kThreads + threadIdx.x; t < kBatch * kWords; t += gridDim.x * kThreads) {
        const int wd = t / kBatch;
        const int i = t - wd * kBatch;
        a.gmask[i * kWords + wd] = mask_word(sm, kBatch, i, wd, a.iou_threshold);
      }
      grid_sync(a.barrier, target);
      if (blockIdx.x == 0) {
        for (int t = threadIdx.x; t < kBatch * kWords; t += kThreads) {
          sm.mask[t] = __ldcg(a.gmask + t);
        }
        __syncthreads();
        if (threadIdx.x < 32) {
          resolve_batch(a, sm, s, begin, kBatch, kept);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
          *a.gkept = sm.kept;
        }
      }
      grid_sync(a.barrier, target);
      lo = kept;
      kept = __ldcg(a.gkept);
      head = kBatch;
      np -= kBatch;
      if (kept >= a.max_out) {
        break;
      }
    }
  }
  if (blockIdx.x == 0 && threadIdx.x == 0 && a.counts != nullptr) {
    a.counts[s] = kept;
  }
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads, 2) nms_kernel(const NmsArgs<scalar_t, T> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  Shared<T>& sm = *reinterpret_cast<Shared<T>*>(smem);
  unsigned int target = 0;
  const int nbig = *a.big_count;
  for (int b = 0; b < nbig; ++b) {
    segment_by_grid(a, sm, a.big_list[b], target);
  }
  const int segments = a.num_segments != nullptr ? *a.num_segments : a.num_segments_host;
  for (int s = blockIdx.x; s < segments; s += gridDim.x) {
    const int32_t len = a.seg_end[s] - a.seg_begin[s];
    if (len <= a.big_threshold && len > a.small_segment) {
      segment_by_block(a, sm, s);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Small segments: the whole bitmask, then one warp per segment

// The bitmask of the small segments. Row i of segment s (rows kSmallWords words apart, by
// sorted position), word w: bit b set iff box i suppresses box 64 w + b (> i) of the segment.
// Only the words from the row's own (possibly 0) to the segment's last are written. Block
// (s, t) computes rows [32 t, 32 t + 32) of segment s, if the segment is small; warp k takes
// words t / 2 + k, t / 2 + k + kMaskWarps, ..., so that a warp's 32 rows read the same column
// boxes (shared-memory broadcasts).
template <typename T>
__global__ void __launch_bounds__(32 * kMaskWarps) small_mask_kernel(const Box4<T>* sbox, const T* sarea,
                                                                     const int32_t* seg_begin, const int32_t* seg_end,
                                                                     T thr, uint64_t* mask) {
  __shared__ Box4<T> box[kSmallSegment];
  __shared__ T area[kSmallSegment];
  const int32_t begin = seg_begin[blockIdx.x];
  const int len = seg_end[blockIdx.x] - begin;
  const int row0 = 32 * blockIdx.y;
  if (len > kSmallSegment || row0 >= len) {
    return;
  }
  const int first_word = row0 / 64;
  const int words = (len + 63) / 64;
  for (int j = 64 * first_word + threadIdx.x; j < 64 * words; j += blockDim.x) {
    // Past the segment's end (the rest of its last word): zeros, tested but masked off below.
    box[j] = j < len ? ldg_box(sbox + begin + j) : Box4<T>{};
    area[j] = j < len ? __ldg(sarea + begin + j) : T(0);
  }
  __syncthreads();
  const int i = row0 + (threadIdx.x & 31);
  if (i >= len) {
    return;
  }
  const Box4<T> bi = box[i];
  const T ai = area[i];
  const IouCutoffs<T> cut(thr);
  for (int w = first_word + (threadIdx.x >> 5); w < words; w += kMaskWarps) {
    // Columns not this row's to suppress (j <= i, past the segment's end) are masked off.
    const int lo = max(i + 1 - 64 * w, 0), hi = min(len - 64 * w, 64);
    const uint64_t bits = suppression_word(bi, ai, box + 64 * w, area + 64 * w, lo, hi, cut);
    mask[int64_t(begin + i) * kSmallWords + w] = bits;
  }
}

// Greedy over each small segment's bitmask, a block per segment: the rows are staged in shared
// memory (L2 latency once, not once per word), then warp 0 walks them. Writes the same outputs
// as segment_by_block. Dynamic shared memory: kSmallWords words and an index per row, for
// max_rows rows (the largest segment this launch can see).
template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kResolveThreads) small_resolve_kernel(const NmsArgs<scalar_t, T> a,
                                                                        const uint64_t* mask, int max_rows) {
  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* rows = reinterpret_cast<uint64_t*>(smem);
  const int s = blockIdx.x;
  const int32_t begin = a.seg_begin[s];
  const int len = a.seg_end[s] - begin;
  if (len > kSmallSegment) {
    return;
  }
  // Whole rows, 16 bytes at a time (a row is 128 bytes, 128-byte aligned), and the box indices.
  const ulonglong2* from = reinterpret_cast<const ulonglong2*>(mask + int64_t(begin) * kSmallWords);
  ulonglong2* to = reinterpret_cast<ulonglong2*>(rows);
  for (int t = threadIdx.x; t < len * (kSmallWords / 2); t += kResolveThreads) {
    to[t] = __ldcg(from + t);
  }
  int32_t* order = reinterpret_cast<int32_t*>(rows + int64_t(max_rows) * kSmallWords);
  for (int t = threadIdx.x; t < len; t += kResolveThreads) {
    order[t] = a.order[begin + t];
  }
  __syncthreads();
  if (threadIdx.x >= 32) {
    return;
  }
  const int kept = len == 0 || a.max_out <= 0
                       ? 0
                       : greedy_over_mask<kSmallWords>(
                             len, a.max_out, [&](int r, int v) { return rows[r * kSmallWords + v]; },
                             [&](int j, int q) {
                               const int32_t idx = order[j];
                               a.kept_idx[begin + q] = idx;
                               if (a.keep_mask != nullptr) {
                                 a.keep_mask[idx] = true;
                               }
                               if (a.padded != nullptr) {
                                 a.padded[int64_t(s) * a.padded_cols + q] = idx;
                               }
                             });
  if (threadIdx.x == 0 && a.counts != nullptr) {
    a.counts[s] = kept;
  }
}

// ---------------------------------------------------------------------------------------------
// Sorting and segment ranges

// Keys that sort descending scores first. -0.0 becomes +0.0 (equal scores, ordered by index).
__device__ __forceinline__ uint32_t descending_key(float f) {
  const uint32_t u = __float_as_uint(f + 0.0f);
  return (u & 0x80000000u) ? u : (~u & 0x7fffffffu);
}
__device__ __forceinline__ uint64_t descending_key(double f) {
  const uint64_t u = static_cast<uint64_t>(__double_as_longlong(f + 0.0));
  return (u & 0x8000000000000000ull) ? u : (~u & 0x7fffffffffffffffull);
}

// Whether box i can be kept at all: finite coordinates, a score that is not NaN and is above
// score_threshold (if any).
template <typename scalar_t>
__device__ __forceinline__ bool box_is_valid(const scalar_t* boxes, const scalar_t* scores, int32_t i,
                                             bool has_score_threshold, double score_threshold) {
  using T = at::opmath_type<scalar_t>;
  const Box4<T> b = load_input_box<T>(boxes, i);
  const T sc = static_cast<T>(scores[i]);
  return isfinite(b.x1) && isfinite(b.y1) && isfinite(b.x2) && isfinite(b.y2) && !isnan(sc) &&
         (!has_score_threshold || static_cast<double>(sc) > score_threshold);
}

// Clamps segment_offsets to [0, n] and makes them non-decreasing (prefix maximum). One block.
struct MaxOp {
  __device__ __forceinline__ int32_t operator()(int32_t a, int32_t b) const {
    return a > b ? a : b;
  }
};

__global__ void __launch_bounds__(1024) sanitize_offsets_kernel(const int64_t* offsets, int32_t count, int64_t n,
                                                                 int32_t* out) {
  using Scan = cub::BlockScan<int32_t, 1024>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ int32_t carry;
  if (threadIdx.x == 0) {
    carry = 0;
  }
  __syncthreads();
  for (int32_t base = 0; base < count; base += 1024) {
    const int32_t i = base + threadIdx.x;
    int32_t v = carry;
    if (i < count) {
      const int64_t o = offsets[i];
      v = max(v, static_cast<int32_t>(o < 0 ? 0 : (o > n ? n : o)));
    }
    int32_t r;
    Scan(tmp).InclusiveScan(v, r, MaxOp());
    if (i < count) {
      out[i] = r;
    }
    __syncthreads();
    if (threadIdx.x == 1023) {
      carry = r;
    }
    __syncthreads();
  }
}

// Sort keys of the segmented ops. float types: key (segment << 32 | descending score), one sort.
// double: the score key and the segment separately, two sorts. Invalid boxes: segment S.
template <typename scalar_t>
__global__ void segmented_keys_kernel(const scalar_t* boxes, const scalar_t* scores, int32_t n,
                                      const int32_t* offsets, int32_t segments, bool has_score_threshold,
                                      double score_threshold, uint64_t* keys, uint32_t* seg_keys, int32_t* values) {
  using T = at::opmath_type<scalar_t>;
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) {
    return;
  }
  int32_t seg = 0;
  if (offsets != nullptr) {  // the number of offsets <= i, minus 1
    int32_t lo = 0, hi = segments + 1;
    while (lo < hi) {
      const int32_t mid = (lo + hi) / 2;
      if (offsets[mid] <= i) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    seg = lo - 1;
  }
  if (seg < 0 || seg >= segments || !box_is_valid(boxes, scores, i, has_score_threshold, score_threshold)) {
    seg = segments;
  }
  const T sc = static_cast<T>(scores[i]);
  values[i] = i;
  if constexpr (std::is_same_v<T, double>) {
    keys[i] = seg == segments ? ~0ull : descending_key(sc);
    seg_keys[i] = static_cast<uint32_t>(seg);
  } else {
    keys[i] = (static_cast<uint64_t>(seg) << 32) | (seg == segments ? 0xffffffffu : descending_key(sc));
  }
}

__global__ void gather_segments_kernel(const uint32_t* seg_of_box, const int32_t* order, int32_t n, uint32_t* out) {
  const int32_t p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p < n) {
    out[p] = seg_of_box[order[p]];
  }
}

// Keys of the per-segment sort: descending score; boxes that can never be kept get the largest
// key (all ones), last in their segment. Both value buffers start as the identity, so that
// positions outside every segment (which the sort leaves alone) map to themselves.
template <typename scalar_t, typename K>
__global__ void per_segment_keys_kernel(const scalar_t* boxes, const scalar_t* scores, int32_t n,
                                        bool has_score_threshold, double score_threshold, K* keys, int32_t* values,
                                        int32_t* sorted_values) {
  using T = at::opmath_type<scalar_t>;
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    keys[i] = box_is_valid(boxes, scores, i, has_score_threshold, score_threshold)
                  ? descending_key(static_cast<T>(scores[i]))
                  : ~K(0);
    values[i] = i;
    sorted_values[i] = i;
  }
}

// Segment ranges after the per-segment sort: segment s starts at its (sanitized) offset and
// ends before its first box that can never be kept.
template <typename K>
__global__ void per_segment_ranges_kernel(const K* sorted, const int32_t* offsets, int32_t segments,
                                          int32_t big_threshold, int32_t* seg_begin, int32_t* seg_end,
                                          int32_t* big_list, int32_t* big_count) {
  const int32_t s = blockIdx.x * blockDim.x + threadIdx.x;
  if (s >= segments) {
    return;
  }
  const int32_t b = offsets[s];
  int32_t lo = b, hi = offsets[s + 1];
  while (lo < hi) {
    const int32_t mid = (lo + hi) / 2;
    if (sorted[mid] != ~K(0)) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  seg_begin[s] = b;
  seg_end[s] = lo;
  if (lo - b > big_threshold) {
    big_list[atomicAdd(big_count, 1)] = s;
  }
}

// Segment ranges from the sorted keys (segment in the bits from kShift): binary searches.
template <typename K, int kShift>
__global__ void segment_ranges_kernel(const K* sorted, int32_t n, int32_t segments, int32_t big_threshold,
                                      int32_t* seg_begin, int32_t* seg_end, int32_t* big_list, int32_t* big_count) {
  const int32_t s = blockIdx.x * blockDim.x + threadIdx.x;
  if (s >= segments) {
    return;
  }
  auto lower_bound = [&](uint32_t seg) {
    int32_t lo = 0, hi = n;
    while (lo < hi) {
      const int32_t mid = (lo + hi) / 2;
      if (static_cast<uint32_t>(sorted[mid] >> kShift) < seg) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    return lo;
  };
  const int32_t b = lower_bound(s), e = lower_bound(s + 1);
  seg_begin[s] = b;
  seg_end[s] = e;
  if (e - b > big_threshold) {
    big_list[atomicAdd(big_count, 1)] = s;
  }
}

// batched_nms: the rank key (descending score; invalid boxes last) and validity of each box.
template <typename scalar_t, typename K>
__global__ void rank_keys_kernel(const scalar_t* boxes, const scalar_t* scores, int32_t n, K* keys, int32_t* values,
                                 uint8_t* valid) {
  using T = at::opmath_type<scalar_t>;
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) {
    return;
  }
  const bool ok = box_is_valid(boxes, scores, i, false, 0.0);
  valid[i] = ok;
  keys[i] = ok ? descending_key(static_cast<T>(scores[i])) : ~K(0);
  values[i] = i;
}

// batched_nms: the class key of each box in rank order (int64 made unsigned-ordered).
__global__ void class_keys_kernel(const int64_t* idxs, const int32_t* ranked, int32_t n, uint64_t* keys,
                                  int32_t* values) {
  const int32_t p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p < n) {
    const int32_t i = ranked[p];
    keys[p] = static_cast<uint64_t>(idxs[i]) ^ 0x8000000000000000ull;
    values[p] = i;
  }
}

// batched_nms: one segment per run of equal class keys, its invalid boxes (last in the run) cut
// off. Segments get slots in any order.
__global__ void class_runs_kernel(const uint64_t* keys, const int32_t* order, const uint8_t* valid, int32_t n,
                                  int32_t big_threshold, int32_t* seg_begin, int32_t* seg_end, int32_t* num_segments,
                                  int32_t* big_list, int32_t* big_count) {
  const int32_t p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= n) {
    return;
  }
  const uint64_t k = keys[p];
  if (p > 0 && keys[p - 1] == k) {
    return;
  }
  int32_t lo = p + 1, hi = n;
  while (lo < hi) {
    const int32_t mid = (lo + hi) / 2;
    if (keys[mid] <= k) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  hi = lo;
  lo = p;
  while (lo < hi) {
    const int32_t mid = (lo + hi) / 2;
    if (valid[order[mid]]) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  const int32_t slot = atomicAdd(num_segments, 1);
  seg_begin[slot] = p;
  seg_end[slot] = lo;
  if (lo - p > big_threshold) {
    big_list[atomicAdd(big_count, 1)] = slot;
  }
}

// The boxes in sorted order, converted, with their areas; no box dead yet.
template <typename scalar_t, typename T>
__global__ void gather_boxes_kernel(const scalar_t* boxes, const int32_t* order, int32_t n, Box4<T>* sbox,
                                    T* sarea, uint8_t* dead) {
  const int32_t p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p < n) {
    const Box4<T> b = load_input_box<T>(boxes, order[p]);
    sbox[p] = b;
    sarea[p] = area_of(b);
    dead[p] = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side

int blocks_for(int64_t n, int threads) {
  return static_cast<int>(ceil_div<int64_t>(std::max<int64_t>(n, 1), threads));
}

// Bits needed to hold values 0..v.
int bits_for(int64_t v) {
  int bits = 1;
  while ((int64_t(1) << bits) <= v) {
    ++bits;
  }
  return bits;
}

// Stable ascending radix sort of (keys, values) over bits [0, end_bit); returns the buffers that
// hold the result (of the two given).
template <typename K>
std::pair<K*, int32_t*> radix_sort(K* keys, K* keys_alt, int32_t* values, int32_t* values_alt, int32_t n, int end_bit,
                                   const at::TensorOptions& options, cudaStream_t stream) {
  cub::DoubleBuffer<K> k(keys, keys_alt);
  cub::DoubleBuffer<int32_t> v(values, values_alt);
  size_t bytes = 0;
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, k, v, n, 0, end_bit, stream));
  at::Tensor temp = at::empty({static_cast<int64_t>(bytes)}, options.dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), bytes, k, v, n, 0, end_bit, stream));
  return {k.Current(), v.Current()};
}

// Stable ascending sort of (keys, values) within each segment [offsets[s], offsets[s + 1]): one
// launch, no host sync (segments <= kMaxSegmentedSortSegments), a block per segment.
template <typename K>
void segmented_sort(const K* keys, K* sorted_keys, const int32_t* values, int32_t* sorted_values, int32_t n,
                    int32_t segments, const int32_t* offsets, const at::TensorOptions& options,
                    cudaStream_t stream) {
  TORCH_INTERNAL_ASSERT(segments <= kMaxSegmentedSortSegments);
  size_t bytes = 0;
  C10_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairs(nullptr, bytes, keys, sorted_keys, values, sorted_values,
                                                           n, segments, offsets, offsets + 1, stream));
  at::Tensor temp = at::empty({static_cast<int64_t>(bytes)}, options.dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairs(temp.data_ptr(), bytes, keys, sorted_keys, values,
                                                           sorted_values, n, segments, offsets, offsets + 1, stream));
}

// What the NMS kernel needs from the sort. (Buffers freed on return stay valid for the work
// queued on the stream: the caching allocator reuses them only for later work.)
struct Sorted {
  int32_t* order = nullptr;
  at::Tensor seg_begin, seg_end;
  at::Tensor rank;  // batched_nms: box indices by rank over all boxes
};

// Dynamic shared memory of small_resolve_kernel for segments of up to max_rows boxes.
int small_resolve_smem(int max_rows) {
  return max_rows * (kSmallWords * static_cast<int>(sizeof(uint64_t)) + static_cast<int>(sizeof(int32_t)));
}

// The launch configuration of nms_kernel<scalar_t, T>, per device: dynamic shared memory set up
// and the number of blocks that fit at once (the grid barrier needs them all resident).
template <typename scalar_t, typename T>
int nms_grid(int device) {
  constexpr int kMaxDevices = 64;
  static int grid[kMaxDevices] = {};
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  TORCH_CHECK(device < kMaxDevices, "detbench.nms: device index ", device, " out of range");
  if (grid[device] == 0) {
    const int smem = static_cast<int>(sizeof(Shared<T>));
    C10_CUDA_CHECK(cudaFuncSetAttribute(nms_kernel<scalar_t, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    C10_CUDA_CHECK(cudaFuncSetAttribute(nms_kernel<scalar_t, T>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        cudaSharedmemCarveoutMaxShared));
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, nms_kernel<scalar_t, T>, kThreads, smem));
    TORCH_CHECK(per_sm > 0, "detbench.nms: the NMS kernel does not fit on this GPU");
    grid[device] = std::min(per_sm, 2) * sm_count(device);
    C10_CUDA_CHECK(cudaFuncSetAttribute(small_resolve_kernel<scalar_t, T>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        small_resolve_smem(kSmallSegment)));
  }
  return grid[device];
}

// Validation mode only (syncs): raises the CPU's error for a bad value.
void validate_values(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* offsets) {
  if (offsets != nullptr) {
    const at::Tensor host = offsets->to(at::kCPU).contiguous();
    nms_check_offset_values(op, host.const_data_ptr<int64_t>(), host.size(0), boxes.size(0));
  }
  const at::Tensor bad_box = at::isfinite(boxes).all(-1).logical_not().nonzero();
  if (bad_box.size(0) > 0) {
    nms_nonfinite_box_error(op, bad_box[0][0].item<int64_t>());
  }
  const at::Tensor bad_score = at::isnan(scores).nonzero();
  if (bad_score.size(0) > 0) {
    nms_nan_score_error(op, bad_score[0][0].item<int64_t>());
  }
}

// Outputs the NMS kernel may write.
struct Outputs {
  bool* keep_mask = nullptr;
  int64_t* padded = nullptr;
  int64_t padded_cols = 0;
  int64_t* counts = nullptr;
  at::Tensor kept_idx;  // set by run_nms: [N] int32, kept list of segment s from seg_begin[s]
};

// Sorts and runs the NMS kernel. Segments: `offsets` (segmented ops), none (nms: all boxes one
// segment), or `idxs` (batched_nms: one per class).
template <typename scalar_t>
void run_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* offsets, const at::Tensor* idxs,
             double iou_threshold, int64_t max_out, std::optional<double> score_threshold, Outputs& out,
             Sorted& sorted) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kDouble = std::is_same_v<T, double>;
  const int32_t n = static_cast<int32_t>(boxes.size(0));
  const auto options = boxes.options();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const scalar_t* b = boxes.const_data_ptr<scalar_t>();
  const scalar_t* sc = scores.const_data_ptr<scalar_t>();
  const int big_threshold = static_cast<int>(std::max<int64_t>(2048, n / 8));
  const int sort_blocks = blocks_for(n, kSortThreads);

  // Control words, zeroed: barrier counter, kept count, big-segment count, segment count.
  at::Tensor ctl = at::zeros({4}, options.dtype(at::kInt));
  int32_t* ctl_p = ctl.mutable_data_ptr<int32_t>();
  at::Tensor big_list = at::empty({16}, options.dtype(at::kInt));
  int32_t* big = big_list.mutable_data_ptr<int32_t>();

  // Sort buffers: keys 2 x [n] uint64, values 2 x [n] int32 (double buffers); batched_nms
  // needs a second pair of value buffers.
  at::Tensor keys = at::empty({2, n}, options.dtype(at::kLong));
  at::Tensor values = at::empty({idxs != nullptr ? 4 : 2, n}, options.dtype(at::kInt));
  uint64_t* k0 = reinterpret_cast<uint64_t*>(keys.mutable_data_ptr<int64_t>());
  uint64_t* k1 = k0 + n;
  int32_t* v = values.mutable_data_ptr<int32_t>();

  int32_t num_segments_host = 0;
  const int32_t* num_segments_dev = nullptr;
  // The small-segment path runs when the average segment is small (its bitmask takes
  // kSmallWords words per box); segments above kSmallSegment still go to nms_kernel.
  bool small_path = false;
  if (idxs == nullptr) {
    num_segments_host = offsets != nullptr ? static_cast<int32_t>(offsets->size(0) - 1) : 1;
    small_path = int64_t(n) <= int64_t(num_segments_host) * kSmallSegment;
    const bool per_segment_sort = small_path && num_segments_host <= kMaxSegmentedSortSegments;
    sorted.seg_begin = at::empty({num_segments_host}, options.dtype(at::kInt));
    sorted.seg_end = at::empty({num_segments_host}, options.dtype(at::kInt));
    const int32_t* sanitized = nullptr;
    at::Tensor sanitized_t;
    if (offsets != nullptr) {
      sanitized_t = at::empty({num_segments_host + 1}, options.dtype(at::kInt));
      sanitize_offsets_kernel<<<1, 1024, 0, stream>>>(offsets->const_data_ptr<int64_t>(), num_segments_host + 1, n,
                                                      sanitized_t.mutable_data_ptr<int32_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      sanitized = sanitized_t.const_data_ptr<int32_t>();
    } else if (per_segment_sort) {
      sanitized_t = at::arange(0, int64_t(n) + 1, n, options.dtype(at::kInt));  // [0, n]
      sanitized = sanitized_t.const_data_ptr<int32_t>();
    }
    const int ranges_blocks = blocks_for(num_segments_host, kSortThreads);
    if (per_segment_sort) {
      // Each segment sorted on its own: one launch of a block per segment, instead of a
      // device-wide sort's several passes over every box.
      using K = std::conditional_t<kDouble, uint64_t, uint32_t>;
      K* unsorted_keys = reinterpret_cast<K*>(k0);
      K* sorted_keys = reinterpret_cast<K*>(k1);
      per_segment_keys_kernel<scalar_t, K><<<sort_blocks, kSortThreads, 0, stream>>>(
          b, sc, n, score_threshold.has_value(), score_threshold.value_or(0.0), unsorted_keys, v, v + n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      segmented_sort<K>(unsorted_keys, sorted_keys, v, v + n, n, num_segments_host, sanitized, options, stream);
      sorted.order = v + n;
      per_segment_ranges_kernel<K><<<ranges_blocks, kSortThreads, 0, stream>>>(
          sorted_keys, sanitized, num_segments_host, big_threshold, sorted.seg_begin.mutable_data_ptr<int32_t>(),
          sorted.seg_end.mutable_data_ptr<int32_t>(), big, ctl_p + 2);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      // double: the segment of each box goes in k1's memory (as uint32), sorted separately.
      uint32_t* seg_of_box = reinterpret_cast<uint32_t*>(k1);
      segmented_keys_kernel<scalar_t><<<sort_blocks, kSortThreads, 0, stream>>>(
          b, sc, n, sanitized, num_segments_host, score_threshold.has_value(), score_threshold.value_or(0.0), k0,
          seg_of_box, v);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int seg_bits = bits_for(num_segments_host);
      if constexpr (kDouble) {
        // By score (64 bits), then stably by segment (the segments wait in k1's memory).
        at::Tensor score_keys_alt = at::empty({n}, options.dtype(at::kLong));
        int32_t* ranked = radix_sort<uint64_t>(k0, reinterpret_cast<uint64_t*>(score_keys_alt.mutable_data_ptr<int64_t>()),
                                               v, v + n, n, 64, options, stream)
                              .second;
        at::Tensor seg_keys = at::empty({2, n}, options.dtype(at::kInt));
        uint32_t* s0 = reinterpret_cast<uint32_t*>(seg_keys.mutable_data_ptr<int32_t>());
        gather_segments_kernel<<<sort_blocks, kSortThreads, 0, stream>>>(seg_of_box, ranked, n, s0);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        int32_t* other = ranked == v ? v + n : v;
        auto [segs, order] = radix_sort<uint32_t>(s0, s0 + n, ranked, other, n, seg_bits, options, stream);
        sorted.order = order;
        segment_ranges_kernel<uint32_t, 0><<<ranges_blocks, kSortThreads, 0, stream>>>(
            segs, n, num_segments_host, big_threshold, sorted.seg_begin.mutable_data_ptr<int32_t>(),
            sorted.seg_end.mutable_data_ptr<int32_t>(), big, ctl_p + 2);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        auto [sk, order] = radix_sort<uint64_t>(k0, k1, v, v + n, n, 32 + seg_bits, options, stream);
        sorted.order = order;
        segment_ranges_kernel<uint64_t, 32><<<ranges_blocks, kSortThreads, 0, stream>>>(
            sk, n, num_segments_host, big_threshold, sorted.seg_begin.mutable_data_ptr<int32_t>(),
            sorted.seg_end.mutable_data_ptr<int32_t>(), big, ctl_p + 2);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  } else {
    // batched_nms: rank over all boxes, then stably by class; one segment per class.
    at::Tensor valid = at::empty({n}, options.dtype(at::kByte));
    uint8_t* valid_p = valid.mutable_data_ptr<uint8_t>();
    int32_t* ranked = nullptr;
    if constexpr (kDouble) {
      rank_keys_kernel<scalar_t, uint64_t><<<sort_blocks, kSortThreads, 0, stream>>>(b, sc, n, k0, v, valid_p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      ranked = radix_sort<uint64_t>(k0, k1, v, v + n, n, 64, options, stream).second;
    } else {
      uint32_t* r0 = reinterpret_cast<uint32_t*>(k0);
      rank_keys_kernel<scalar_t, uint32_t><<<sort_blocks, kSortThreads, 0, stream>>>(b, sc, n, r0, v, valid_p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      ranked = radix_sort<uint32_t>(r0, r0 + n, v, v + n, n, 32, options, stream).second;
    }
    const at::Tensor idx64 = idxs->to(at::kLong).contiguous();
    int32_t* v2 = v + 2 * n;  // the other pair of value buffers
    class_keys_kernel<<<sort_blocks, kSortThreads, 0, stream>>>(idx64.const_data_ptr<int64_t>(), ranked, n, k0, v2);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto [ck, order] = radix_sort<uint64_t>(k0, k1, v2, v2 + n, n, 64, options, stream);
    sorted.order = order;
    sorted.seg_begin = at::empty({n}, options.dtype(at::kInt));
    sorted.seg_end = at::empty({n}, options.dtype(at::kInt));
    class_runs_kernel<<<sort_blocks, kSortThreads, 0, stream>>>(
        ck, order, valid_p, n, big_threshold, sorted.seg_begin.mutable_data_ptr<int32_t>(),
        sorted.seg_end.mutable_data_ptr<int32_t>(), ctl_p + 3, big, ctl_p + 2);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    num_segments_dev = ctl_p + 3;
    num_segments_host = n;
    // The rank order over all boxes, kept for the output.
    sorted.rank = values.select(0, ranked == v ? 0 : 1);
  }

  // The sort keys are no longer needed: their memory can serve the buffers below.
  keys = at::Tensor();

  // The NMS kernel's own buffers.
  const auto area_dtype = kDouble ? at::kDouble : at::kFloat;
  at::Tensor sbox = at::empty({n, static_cast<int64_t>(sizeof(Box4<T>))}, options.dtype(at::kByte));
  at::Tensor sarea = at::empty({n}, options.dtype(area_dtype));
  at::Tensor dead = at::empty({n}, options.dtype(at::kByte));
  gather_boxes_kernel<scalar_t, T><<<sort_blocks, kSortThreads, 0, stream>>>(
      b, sorted.order, n, reinterpret_cast<Box4<T>*>(sbox.mutable_data_ptr<uint8_t>()), sarea.mutable_data_ptr<T>(),
      dead.mutable_data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor kept_box = at::empty({n, static_cast<int64_t>(sizeof(Box4<T>))}, options.dtype(at::kByte));
  at::Tensor kept_area = at::empty({n}, options.dtype(area_dtype));
  out.kept_idx = at::empty({n}, options.dtype(at::kInt));
  at::Tensor gmask = at::empty({kBatch * kWords}, options.dtype(at::kLong));

  NmsArgs<scalar_t, T> args;
  args.sbox = reinterpret_cast<const Box4<T>*>(sbox.const_data_ptr<uint8_t>());
  args.sarea = sarea.const_data_ptr<T>();
  args.order = sorted.order;
  args.seg_begin = sorted.seg_begin.const_data_ptr<int32_t>();
  args.seg_end = sorted.seg_end.const_data_ptr<int32_t>();
  args.num_segments = num_segments_dev;
  args.num_segments_host = num_segments_host;
  args.big_list = big;
  args.big_count = ctl_p + 2;
  args.big_threshold = big_threshold;
  args.iou_threshold = nms_threshold<T>(iou_threshold);
  args.max_out = static_cast<int32_t>(std::min<int64_t>(max_out, n));
  args.kept_box = reinterpret_cast<Box4<T>*>(kept_box.mutable_data_ptr<uint8_t>());
  args.kept_area = kept_area.mutable_data_ptr<T>();
  args.kept_idx = out.kept_idx.mutable_data_ptr<int32_t>();
  args.dead = dead.mutable_data_ptr<uint8_t>();
  args.gmask = reinterpret_cast<uint64_t*>(gmask.mutable_data_ptr<int64_t>());
  args.barrier = reinterpret_cast<unsigned int*>(ctl_p);
  args.gkept = ctl_p + 1;
  args.keep_mask = out.keep_mask;
  args.padded = out.padded;
  args.padded_cols = out.padded_cols;
  args.counts = out.counts;

  args.small_segment = small_path ? kSmallSegment : -1;

  const int grid = nms_grid<scalar_t, T>(boxes.get_device());
  nms_kernel<scalar_t, T><<<grid, kThreads, sizeof(Shared<T>), stream>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (small_path) {
    at::Tensor mask = at::empty({n, kSmallWords}, options.dtype(at::kLong));
    uint64_t* mask_p = reinterpret_cast<uint64_t*>(mask.mutable_data_ptr<int64_t>());
    const int row_tiles = static_cast<int>(ceil_div<int64_t>(std::min<int64_t>(n, kSmallSegment), 32));
    small_mask_kernel<T><<<dim3(num_segments_host, row_tiles), 32 * kMaskWarps, 0, stream>>>(
        args.sbox, args.sarea, args.seg_begin, args.seg_end, args.iou_threshold, mask_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int max_rows = row_tiles * 32;
    small_resolve_kernel<scalar_t, T><<<num_segments_host, kResolveThreads, small_resolve_smem(max_rows), stream>>>(
        args, mask_p, max_rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void check_sizes(const char* op, const at::Tensor& boxes, const at::Tensor* offsets) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max() - 1;
  DETBENCH_CHECK(boxes.size(0) <= kMax, op, "boxes must hold at most ", kMax, " boxes on CUDA, got ", boxes.size(0));
  if (offsets != nullptr) {
    DETBENCH_CHECK(offsets->size(0) <= kMax, op, "segment_offsets must hold at most ", kMax, " offsets on CUDA, got ",
                   offsets->size(0));
  }
}

at::Tensor nms_cuda(const at::Tensor& boxes_in, const at::Tensor& scores_in, double iou_threshold) {
  constexpr const char* kOp = "nms";
  nms_check(kOp, boxes_in, scores_in, nullptr, nullptr, iou_threshold, std::nullopt, std::nullopt);
  check_sizes(kOp, boxes_in, nullptr);
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  if (validation_enabled()) {
    validate_values(kOp, boxes, scores, nullptr);
  }
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  at::Tensor counts = at::empty({1}, boxes.options().dtype(at::kLong));
  Outputs out;
  out.counts = counts.mutable_data_ptr<int64_t>();
  Sorted sorted;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "detbench.nms", [&] {
    run_nms<scalar_t>(boxes, scores, nullptr, nullptr, iou_threshold, n, std::nullopt, out, sorted);
  });
  const int64_t k = counts.item<int64_t>();  // the one sync
  return out.kept_idx.narrow(0, 0, k).to(at::kLong);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor& idxs,
                            double iou_threshold) {
  constexpr const char* kOp = "batched_nms";
  nms_check(kOp, boxes_in, scores_in, &idxs, nullptr, iou_threshold, std::nullopt, std::nullopt);
  check_sizes(kOp, boxes_in, nullptr);
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  if (validation_enabled()) {
    validate_values(kOp, boxes, scores, nullptr);
  }
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  at::Tensor keep = at::zeros({n}, boxes.options().dtype(at::kBool));
  Outputs out;
  out.keep_mask = keep.mutable_data_ptr<bool>();
  Sorted sorted;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "detbench.batched_nms", [&] {
    run_nms<scalar_t>(boxes, scores, nullptr, &idxs, iou_threshold, n, std::nullopt, out, sorted);
  });
  // The kept boxes in rank order over all boxes; masked_select is the one sync.
  return sorted.rank.masked_select(keep.index_select(0, sorted.rank)).to(at::kLong);
}

at::Tensor segmented_nms_cuda(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                              const at::Tensor& segment_offsets, double iou_threshold,
                              std::optional<int64_t> max_output_per_segment, std::optional<double> score_threshold) {
  constexpr const char* kOp = "segmented_nms";
  nms_check(kOp, boxes_in, scores_in, nullptr, &segment_offsets, iou_threshold, max_output_per_segment,
            score_threshold);
  check_sizes(kOp, boxes_in, &segment_offsets);
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const at::Tensor offsets = segment_offsets.contiguous();
  if (validation_enabled()) {
    validate_values(kOp, boxes, scores, &offsets);
  }
  at::Tensor mask = segmented_nms_allocate_mask(boxes);
  mask.zero_();
  const int64_t n = boxes.size(0);
  if (n == 0 || offsets.size(0) <= 1) {
    return mask;
  }
  Outputs out;
  out.keep_mask = mask.mutable_data_ptr<bool>();
  Sorted sorted;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "detbench.segmented_nms", [&] {
    run_nms<scalar_t>(boxes, scores, &offsets, nullptr, iou_threshold, max_output_per_segment.value_or(n),
                      score_threshold, out, sorted);
  });
  return mask;
}

std::tuple<at::Tensor, at::Tensor> segmented_nms_padded_cuda(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                                                             const at::Tensor& segment_offsets, double iou_threshold,
                                                             int64_t max_output_per_segment,
                                                             std::optional<double> score_threshold) {
  constexpr const char* kOp = "segmented_nms_padded";
  nms_check(kOp, boxes_in, scores_in, nullptr, &segment_offsets, iou_threshold, max_output_per_segment,
            score_threshold);
  check_sizes(kOp, boxes_in, &segment_offsets);
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const at::Tensor offsets = segment_offsets.contiguous();
  if (validation_enabled()) {
    validate_values(kOp, boxes, scores, &offsets);
  }
  auto [indices, counts] = segmented_nms_allocate_padded(boxes, offsets, max_output_per_segment);
  indices.fill_(-1);
  const int64_t n = boxes.size(0);
  if (n == 0 || offsets.size(0) <= 1 || max_output_per_segment == 0) {
    counts.zero_();
    return {indices, counts};
  }  // otherwise the kernels write every segment's count
  Outputs out;
  out.padded = indices.mutable_data_ptr<int64_t>();
  out.padded_cols = max_output_per_segment;
  out.counts = counts.mutable_data_ptr<int64_t>();
  Sorted sorted;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "detbench.segmented_nms_padded",
                                  [&] {
                                    run_nms<scalar_t>(boxes, scores, &offsets, nullptr, iou_threshold,
                                                      max_output_per_segment, score_threshold, out, sorted);
                                  });
  return {indices, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
  m.impl("segmented_nms", &segmented_nms_cuda);
  m.impl("segmented_nms_padded", &segmented_nms_padded_cuda);
}

}  // namespace detbench
