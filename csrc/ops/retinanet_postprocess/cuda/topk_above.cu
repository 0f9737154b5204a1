// The per-level top-k of detbench.retinanet_postprocess on CUDA: topk_above_cpu's contract (the
// top k of the elements scoring > score_thresh, score descending, equal scores by index ascending,
// padded with (-inf, 0)) in one read of the logits for realistic rows, where at::topk runs a
// multi-pass radix select over all N_l * C of them (~12 M for the largest level of an image).
//
// One call = one level, a row per image, no host sync (CUDA-graph capturable):
//  1. compact_kernel, many blocks per row, each over a contiguous chunk: every element that passes
//     (logit above the CPU's bound, then score > score_thresh, the score computed in the dtype as
//     the decode kernel and torch's sigmoid compute it) gets a slot in its row's buffer of
//     `capacity` entries (warp-aggregated atomics on a per-row counter). An entry packs the score's
//     bits over the index's complement, so the greatest entry ranks first.
//  2. A row with more passing elements than its buffer holds (contents all_above, ties) is resolved
//     exactly by a radix select over the score bits. Its kernels run for every row and return at
//     once for rows that fit (the host cannot know which overflow):
//       radix_pass_kernel, once per 11-bit digit from the top: the row's histogram of the digit
//         among keys matching the digits found so far; the row's last block to finish (an atomic
//         ticket: no block ever waits for another) picks the digit that holds the k-th key;
//       collect_above_kernel: every key above the k-th into the buffer; each block counts its ties
//         (keys equal to the k-th);
//       collect_ties_kernel: the ties still needed, lowest indices first: a block's first tie ranks
//         after the ties of the chunks before it (per-block counts summed), its others in order.
//     The buffer of such a row then holds exactly its k entries.
//  3. sort_kernel, a block per row: bitonic sort of the buffer in shared memory, the first k
//     written as (logit, index), the rest padding.
#include "ops/retinanet_postprocess/cuda/topk_above.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "detbench.h"
#include "ops/retinanet_postprocess/decode_math.h"

namespace detbench {

namespace {

namespace cg = cooperative_groups;

constexpr int kScanThreads = 256;       // threads of the kernels that read the logits
constexpr int kScanBlocksPerSM = 4;     // their launch bound (<= 64 registers) and the grid's target
constexpr int kUnroll = 4;              // 16-byte loads in flight per thread (radix passes: 2, for registers)
constexpr int kSortThreads = 1024;
constexpr int kDigitBits = 11;          // radix select: 3 passes for float scores, 2 for half, 6 for double
constexpr int kBins = 1 << kDigitBits;
constexpr int kMinCapacity = 4096;      // buffer entries per row; realistic rows: a few hundred to a few thousand
constexpr int kMaxSortBytes = 128 * 1024;  // the sort's shared memory, capacity x entry: k <= 16,384 (8,192 for double)

// A buffer entry; the greater ranks first: score descending, then index ascending. For 16/32-bit
// dtypes one 64-bit word, the score's bits (a score is >= 0, so its bits order as the scores do)
// over the index's complement; float64 scores take all 64 bits, so a pair. An all-zero entry (the
// sort's padding) ranks after every real one: a passing score is > score_thresh >= 0.
struct PackedEntry {
  uint64_t bits;
};
struct WideEntry {
  uint64_t score;
  uint32_t not_index;
  uint32_t unused;
};
template <typename scalar_t>
using EntryOf = std::conditional_t<sizeof(scalar_t) == 8, WideEntry, PackedEntry>;

template <typename E>
__device__ __forceinline__ E make_entry(uint64_t key, uint32_t index);
template <>
__device__ __forceinline__ PackedEntry make_entry<PackedEntry>(uint64_t key, uint32_t index) {
  return {(key << 32) | uint64_t(~index)};
}
template <>
__device__ __forceinline__ WideEntry make_entry<WideEntry>(uint64_t key, uint32_t index) {
  return {key, ~index, 0};
}
__device__ __forceinline__ bool ranks_before(PackedEntry a, PackedEntry b) {
  return a.bits > b.bits;
}
__device__ __forceinline__ bool ranks_before(WideEntry a, WideEntry b) {
  return a.score > b.score || (a.score == b.score && a.not_index > b.not_index);
}
__device__ __forceinline__ uint32_t entry_index(PackedEntry e) {
  return ~uint32_t(e.bits);
}
__device__ __forceinline__ uint32_t entry_index(WideEntry e) {
  return ~e.not_index;
}

// A score's bits (>= 0, not NaN), ordered as unsigned integers as the scores are.
__device__ __forceinline__ uint64_t score_bits(c10::Half s) {
  return s.x;
}
__device__ __forceinline__ uint64_t score_bits(c10::BFloat16 s) {
  return s.x;
}
__device__ __forceinline__ uint64_t score_bits(float s) {
  return __float_as_uint(s);
}
__device__ __forceinline__ uint64_t score_bits(double s) {
  return static_cast<uint64_t>(__double_as_longlong(s));
}

struct RowState {
  int count;        // passing elements that asked for a slot; exact when <= capacity
  int taken;        // radix path: keys above the k-th written to the buffer so far
  int remaining;    // radix path: keys equal to the prefix still to take (after the last pass: ties)
  int unused;
  uint64_t prefix;  // radix path: the k-th key's digits found so far (the whole key after the last pass)
};

template <typename scalar_t>
struct TopkArgs {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* logits;            // [rows, m]
  scalar_t* values;                  // [rows, k]
  int64_t* index;                    // [rows, k]
  EntryOf<scalar_t>* buffer;         // [rows, capacity]
  RowState* state;                   // [rows]
  int* hist;                         // [passes, rows, kBins]
  unsigned* tickets;                 // [passes, rows]
  int* tie_counts;                   // [rows, blocks_per_row]
  int64_t m, chunk;                  // row length; elements per block (a multiple of the vector width)
  int rows, k, capacity, blocks_per_row;
  float lowest;       // 16/32-bit dtypes: x is looked at iff float(x) >= lowest, the CPU's double(x) > bound
  double bound;       // float64: iff x > bound
  T thr;              // score > thr, thr = T(scalar_t(score_thresh)) as on the CPU
  scalar_t padding;   // -inf
};

// Whether x passes (as topk_above_row decides it) and, if so, its score's bits.
template <typename scalar_t>
__device__ __forceinline__ bool passing_key(const TopkArgs<scalar_t>& a, scalar_t x, uint64_t& key) {
  using T = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, double>) {
    if (!(x > a.bound)) {
      return false;
    }
  } else if (!(static_cast<float>(x) >= a.lowest)) {  // most elements stop here, with no exp
    return false;
  }
  const T score = sigmoid_score<scalar_t, T>(x);
  if (!(score > a.thr)) {
    return false;
  }
  key = score_bits(static_cast<scalar_t>(score));
  return true;
}

struct Range {
  int64_t begin, end;
};

template <typename scalar_t>
__device__ __forceinline__ Range chunk_of(const TopkArgs<scalar_t>& a, int block) {
  const int64_t begin = int64_t(block) * a.chunk;
  return {begin, min(a.m, begin + a.chunk)};
}

// Calls f(x, i) for every element i of [r.begin, r.end) of a row, spread over the block's threads
// in no particular order: 16-byte loads from the first aligned address on (a view's rows need not
// start aligned), single elements before it and after the last whole vector.
template <int unroll = kUnroll, typename scalar_t, typename F>
__device__ __forceinline__ void for_each_element(const scalar_t* row, Range r, F&& f) {
  constexpr int V = 16 / sizeof(scalar_t);
  const int misaligned = int((reinterpret_cast<uintptr_t>(row + r.begin) & 15) / sizeof(scalar_t));
  const int64_t body = min(r.end, r.begin + (V - misaligned) % V);
  const int64_t vectors = (r.end - body) / V;
  const int64_t tail = body + vectors * V;
  if (threadIdx.x < body - r.begin) {
    f(row[r.begin + threadIdx.x], r.begin + threadIdx.x);
  }
  if (threadIdx.x < r.end - tail) {
    f(row[tail + threadIdx.x], tail + threadIdx.x);
  }
  const uint4* vec = reinterpret_cast<const uint4*>(row + body);
  for (int64_t v0 = threadIdx.x; v0 < vectors; v0 += int64_t(unroll) * blockDim.x) {
    uint4 raw[unroll];
#pragma unroll
    for (int u = 0; u < unroll; ++u) {  // all loads first: `unroll` in flight
      const int64_t v = v0 + int64_t(u) * blockDim.x;
      if (v < vectors) {
        raw[u] = __ldg(vec + v);
      }
    }
#pragma unroll
    for (int u = 0; u < unroll; ++u) {
      const int64_t v = v0 + int64_t(u) * blockDim.x;
      if (v < vectors) {
        scalar_t x[V];
        memcpy(x, &raw[u], sizeof(raw[u]));
#pragma unroll
        for (int j = 0; j < V; ++j) {
          f(x[j], body + v * V + j);
        }
      }
    }
  }
}

// A distinct slot of *counter for each calling thread: one atomic per group of converged threads.
__device__ __forceinline__ int aggregated_add(int* counter) {
  const cg::coalesced_group group = cg::coalesced_threads();
  int base = 0;
  if (group.thread_rank() == 0) {
    base = atomicAdd(counter, int(group.size()));
  }
  return group.shfl(base, 0) + int(group.thread_rank());
}

template <typename scalar_t>
__global__ void __launch_bounds__(kScanThreads, kScanBlocksPerSM) compact_kernel(const TopkArgs<scalar_t> a) {
  using Entry = EntryOf<scalar_t>;
  const int row = blockIdx.y;
  Entry* buffer = a.buffer + int64_t(row) * a.capacity;
  int* count = &a.state[row].count;
  // Set once this block finds the row's buffer full: the row then takes the radix path, which needs
  // only count > capacity, so later elements ask for no slot (all_above: no atomic per warp and load).
  __shared__ int full;
  if (threadIdx.x == 0) {
    full = 0;
  }
  __syncthreads();
  volatile int* full_flag = &full;
  for_each_element(a.logits + int64_t(row) * a.m, chunk_of(a, blockIdx.x), [&](scalar_t x, int64_t i) {
    uint64_t key;
    if (passing_key(a, x, key) && !*full_flag) {
      const int slot = aggregated_add(count);
      if (slot < a.capacity) {
        buffer[slot] = make_entry<Entry>(key, uint32_t(i));
      } else {
        *full_flag = 1;
      }
    }
  });
}

// The key bits below radix pass `pass`'s digit (digits of kDigitBits from the top; the last narrower).
template <typename scalar_t>
__host__ __device__ constexpr int radix_passes() {
  return ceil_div(int(8 * sizeof(scalar_t)), kDigitBits);
}
template <typename scalar_t>
__device__ __forceinline__ int digit_shift(int pass) {
  return max(int(8 * sizeof(scalar_t)) - kDigitBits * (pass + 1), 0);
}

// Warp 0 of a row's last block of pass `pass`: the digit d such that fewer than `remaining` keys
// (matching the prefix) have a greater digit and at least `remaining` have d or greater.
__device__ __forceinline__ void pick_digit(const int* row_hist, int width, int shift, uint64_t prefix, int remaining,
                                           RowState& st) {
  const int lane = threadIdx.x;
  const int bins = 1 << width;
  const int per_lane = ceil_div(bins, 32);
  const int hi = bins - lane * per_lane;  // lane 0 sums the highest digits
  const int lo = max(hi - per_lane, 0);
  int sum = 0;
  for (int b = lo; b < hi; ++b) {
    sum += __ldcg(row_hist + b);  // L2: where the other blocks' atomics landed
  }
  int inclusive = sum;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int up = __shfl_up_sync(~0u, inclusive, offset);
    inclusive += lane >= offset ? up : 0;
  }
  // Non-empty: the keys matching the prefix are at least `remaining` (k at pass 0: count > capacity >= k).
  const unsigned reach = __ballot_sync(~0u, inclusive >= remaining);
  if (reach != 0 && lane == __ffs(reach) - 1) {
    int above = inclusive - sum;
    for (int b = hi - 1; b >= lo; --b) {
      const int c = __ldcg(row_hist + b);
      if (above + c >= remaining) {
        st.prefix = prefix | (uint64_t(b) << shift);
        st.remaining = remaining - above;
        break;
      }
      above += c;
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kScanThreads, kScanBlocksPerSM) radix_pass_kernel(const TopkArgs<scalar_t> a,
                                                                                    const int pass) {
  const int row = blockIdx.y;
  RowState& st = a.state[row];
  if (st.count <= a.capacity) {  // the row fits its buffer (the same for all its blocks)
    return;
  }
  const int shift = digit_shift<scalar_t>(pass);
  const int width = int(8 * sizeof(scalar_t)) - kDigitBits * pass - shift;
  // Keys must match the digits of the earlier passes (none at pass 0; shift + width < 64 after it).
  const uint64_t high = pass == 0 ? 0 : ~uint64_t(0) << (shift + width);
  const uint64_t prefix = pass == 0 ? 0 : st.prefix;
  __shared__ int hist[kBins];
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
    hist[b] = 0;
  }
  __syncthreads();
  for_each_element<2>(a.logits + int64_t(row) * a.m, chunk_of(a, blockIdx.x), [&](scalar_t x, int64_t) {
    uint64_t key;
    if (passing_key(a, x, key) && (key & high) == prefix) {
      const int digit = int(key >> shift) & ((1 << width) - 1);
      // one shared atomic per digit among the converged threads (ties: one per warp, not 32)
      const unsigned peers = __match_any_sync(__activemask(), digit);
      if (int(threadIdx.x & 31) == __ffs(peers) - 1) {
        atomicAdd(&hist[digit], __popc(peers));
      }
    }
  });
  __syncthreads();
  int* row_hist = a.hist + (int64_t(pass) * a.rows + row) * kBins;
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
    if (hist[b] != 0) {
      atomicAdd(row_hist + b, hist[b]);
    }
  }
  // The row's last block to arrive picks the digit: every other block's counts precede its ticket.
  __threadfence();
  __syncthreads();
  __shared__ bool last;
  if (threadIdx.x == 0) {
    last = atomicAdd(a.tickets + pass * a.rows + row, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (last && threadIdx.x < 32) {
    __threadfence();
    pick_digit(row_hist, width, shift, prefix, pass == 0 ? a.k : st.remaining, st);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kScanThreads, kScanBlocksPerSM) collect_above_kernel(const TopkArgs<scalar_t> a) {
  using Entry = EntryOf<scalar_t>;
  const int row = blockIdx.y;
  RowState& st = a.state[row];
  if (st.count <= a.capacity) {
    return;
  }
  const uint64_t kth = st.prefix;
  Entry* buffer = a.buffer + int64_t(row) * a.capacity;
  int ties = 0;
  for_each_element(a.logits + int64_t(row) * a.m, chunk_of(a, blockIdx.x), [&](scalar_t x, int64_t i) {
    uint64_t key;
    if (passing_key(a, x, key)) {
      if (key > kth) {  // k - remaining of them in all: slots below k <= capacity
        buffer[aggregated_add(&st.taken)] = make_entry<Entry>(key, uint32_t(i));
      } else if (key == kth) {
        ++ties;
      }
    }
  });
  using Reduce = cub::BlockReduce<int, kScanThreads>;
  __shared__ typename Reduce::TempStorage reduce;
  const int total = Reduce(reduce).Sum(ties);
  if (threadIdx.x == 0) {
    a.tie_counts[int64_t(row) * a.blocks_per_row + blockIdx.x] = total;
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kScanThreads) collect_ties_kernel(const TopkArgs<scalar_t> a) {
  using Entry = EntryOf<scalar_t>;
  constexpr int V = 16 / sizeof(scalar_t);  // consecutive elements per thread and tile
  const int row = blockIdx.y;
  const RowState& st = a.state[row];
  if (st.count <= a.capacity) {
    return;
  }
  const int* counts = a.tie_counts + int64_t(row) * a.blocks_per_row;
  int mine = counts[blockIdx.x];
  if (mine == 0) {
    return;
  }
  const int remaining = st.remaining;
  using Reduce = cub::BlockReduce<int, kScanThreads>;
  using Scan = cub::BlockScan<int, kScanThreads>;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  } tmp;
  __shared__ int before_block;
  int part = 0;
  for (int b = threadIdx.x; b < int(blockIdx.x); b += blockDim.x) {
    part += counts[b];
  }
  const int sum = Reduce(tmp.reduce).Sum(part);
  if (threadIdx.x == 0) {
    before_block = sum;
  }
  __syncthreads();
  int before = before_block;  // ties at lower indices: taken first
  const uint64_t kth = st.prefix;
  const int first = a.k - remaining;  // the ties' slots follow the keys above the k-th
  const scalar_t* logits = a.logits + int64_t(row) * a.m;
  Entry* buffer = a.buffer + int64_t(row) * a.capacity;
  const Range r = chunk_of(a, blockIdx.x);
  // tile by tile in index order, each thread V consecutive elements; the loop's condition is the
  // same for the whole block (it changes only by the scan's block-wide totals)
  for (int64_t t = r.begin; t < r.end && mine > 0 && before < remaining; t += int64_t(V) * blockDim.x) {
    const int64_t i0 = t + int64_t(threadIdx.x) * V;
    unsigned tied = 0;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      uint64_t key = 0;
      if (i0 + j < r.end && passing_key(a, logits[i0 + j], key) && key == kth) {
        tied |= 1u << j;
      }
    }
    int rank, tile_ties;
    Scan(tmp.scan).ExclusiveSum(__popc(tied), rank, tile_ties);
    for (int j = 0; j < V; ++j) {
      if ((tied >> j) & 1) {
        if (before + rank < remaining) {
          buffer[first + before + rank] = make_entry<Entry>(kth, uint32_t(i0 + j));
        }
        ++rank;
      }
    }
    before += tile_ties;
    mine -= tile_ties;
    __syncthreads();  // tmp.scan is reused by the next tile
  }
}

// Sorts s[0, n) best first; n a power of two. Stages of stride < 64 keep each warp on its own 64
// entries (pairs 32w .. 32w + 31, + multiples of blockDim), so only a warp barrier separates two
// such stages.
template <typename Entry>
__device__ void bitonic_sort(Entry* s, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int p = threadIdx.x; p < n / 2; p += blockDim.x) {
        const int i = 2 * p - (p & (stride - 1));
        const int j = i + stride;
        const bool best_first = (i & size) == 0;  // the direction of this run of `size`
        const Entry x = s[i], y = s[j];
        if (ranks_before(y, x) == best_first) {
          s[i] = y;
          s[j] = x;
        }
      }
      const int next = stride > 1 ? stride >> 1 : size;
      if (stride >= 64 || next >= 64) {
        __syncthreads();
      } else {
        __syncwarp();
      }
    }
  }
  __syncthreads();
}

template <typename scalar_t>
__global__ void __launch_bounds__(kSortThreads) sort_kernel(const TopkArgs<scalar_t> a) {
  using Entry = EntryOf<scalar_t>;
  extern __shared__ __align__(16) unsigned char sort_smem[];
  Entry* s = reinterpret_cast<Entry*>(sort_smem);
  const int row = blockIdx.x;
  const RowState& st = a.state[row];
  const int n = st.count > a.capacity ? a.k : st.count;  // an overflowing row's buffer holds its k entries
  int n2 = 1;
  while (n2 < n) {
    n2 <<= 1;
  }
  const Entry* buffer = a.buffer + int64_t(row) * a.capacity;
  for (int j = threadIdx.x; j < n2; j += blockDim.x) {
    s[j] = j < n ? buffer[j] : Entry{};
  }
  __syncthreads();
  bitonic_sort(s, n2);
  const int taken = min(n, a.k);
  const scalar_t* logits = a.logits + int64_t(row) * a.m;
  for (int j = threadIdx.x; j < a.k; j += blockDim.x) {
    const int64_t out = int64_t(row) * a.k + j;
    if (j < taken) {
      const uint32_t i = entry_index(s[j]);
      a.values[out] = logits[i];
      a.index[out] = i;
    } else {
      a.values[out] = a.padding;
      a.index[out] = 0;
    }
  }
}

// The least float f with double(f) > bound (the CPU's test for a logit), NaN where none is.
float lowest_float_above(double bound) {
  constexpr float kMax = std::numeric_limits<float>::max();
  if (std::isnan(bound) || bound == std::numeric_limits<double>::infinity()) {
    return std::numeric_limits<float>::quiet_NaN();
  }
  if (bound >= kMax) {
    return std::numeric_limits<float>::infinity();
  }
  if (bound < -kMax) {
    return -kMax;
  }
  float f = static_cast<float>(bound);
  if (static_cast<double>(f) <= bound) {
    return std::nextafter(f, std::numeric_limits<float>::infinity());
  }
  const float below = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return static_cast<double>(below) > bound ? below : f;
}

// Every size and offset of one call, computed in one place.
struct TopkPlan {
  int64_t rows, m, k, capacity, chunk, blocks_per_row, passes;
  size_t entry_bytes, sort_smem;
  size_t state_at, tickets_at, hist_at, ties_at, workspace_bytes;  // byte offsets in the workspace
};

size_t align_up(size_t n) {
  return (n + 255) / 256 * 256;
}

// false where the fast path cannot run (then at::topk): its sort capacity, 32-bit indices, grid.y.
template <typename scalar_t>
bool plan_topk(int64_t rows, int64_t m, int64_t k, TopkPlan& p) {
  p.rows = rows;
  p.m = m;
  p.k = k;
  p.passes = radix_passes<scalar_t>();
  p.entry_bytes = sizeof(EntryOf<scalar_t>);
  p.capacity = kMinCapacity;
  while (p.capacity < k) {
    p.capacity *= 2;
  }
  p.sort_smem = size_t(p.capacity) * p.entry_bytes;
  if (p.sort_smem > size_t(kMaxSortBytes) || m >= (int64_t(1) << 31) || rows > 65535) {
    return false;
  }
  // About two waves of resident blocks over all rows (a block reads contiguous chunks of one row);
  // no block with less than one loop iteration of elements.
  const int64_t vector = 16 / sizeof(scalar_t);
  const int sms = sm_count();
  const int64_t per_iteration = int64_t(kScanThreads) * vector * kUnroll;
  const int64_t wanted = ceil_div<int64_t>(int64_t(sms) * kScanBlocksPerSM * 2, rows);
  const int64_t blocks = std::clamp<int64_t>(ceil_div(m, per_iteration), 1, std::max<int64_t>(wanted, 1));
  p.chunk = ceil_div(ceil_div(m, blocks), vector) * vector;  // every chunk starts at the row's alignment
  p.blocks_per_row = ceil_div(m, p.chunk);
  p.state_at = 0;
  p.tickets_at = align_up(sizeof(RowState) * rows);
  p.hist_at = p.tickets_at + align_up(sizeof(unsigned) * p.passes * rows);
  p.ties_at = p.hist_at + align_up(sizeof(int) * p.passes * rows * kBins);
  p.workspace_bytes = p.ties_at + align_up(sizeof(int) * rows * p.blocks_per_row);
  return true;
}

template <typename scalar_t>
void launch_topk(const TopkPlan& p, const at::Tensor& logits, double score_thresh, const at::Tensor& values,
                 const at::Tensor& index) {
  using T = at::opmath_type<scalar_t>;
  using Entry = EntryOf<scalar_t>;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto options = logits.options().dtype(at::kByte);
  const at::Tensor buffer = at::empty({int64_t(p.rows * p.capacity * p.entry_bytes)}, options);
  const at::Tensor workspace = at::empty({int64_t(p.workspace_bytes)}, options);
  uint8_t* ws = workspace.mutable_data_ptr<uint8_t>();
  C10_CUDA_CHECK(cudaMemsetAsync(ws, 0, p.workspace_bytes, stream));  // counters, histograms, tickets
  TopkArgs<scalar_t> a{};
  a.logits = logits.const_data_ptr<scalar_t>();
  a.values = values.mutable_data_ptr<scalar_t>();
  a.index = index.mutable_data_ptr<int64_t>();
  a.buffer = reinterpret_cast<Entry*>(buffer.mutable_data_ptr<uint8_t>());
  a.state = reinterpret_cast<RowState*>(ws + p.state_at);
  a.tickets = reinterpret_cast<unsigned*>(ws + p.tickets_at);
  a.hist = reinterpret_cast<int*>(ws + p.hist_at);
  a.tie_counts = reinterpret_cast<int*>(ws + p.ties_at);
  a.m = p.m;
  a.chunk = p.chunk;
  a.rows = int(p.rows);
  a.k = int(p.k);
  a.capacity = int(p.capacity);
  a.blocks_per_row = int(p.blocks_per_row);
  const double bound = score_threshold_logit_bound(score_thresh);
  a.lowest = lowest_float_above(bound);
  a.bound = bound;
  a.thr = static_cast<T>(static_cast<scalar_t>(score_thresh));
  a.padding = -std::numeric_limits<scalar_t>::infinity();
  const dim3 scan_grid(unsigned(p.blocks_per_row), unsigned(p.rows));
  compact_kernel<scalar_t><<<scan_grid, kScanThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int pass = 0; pass < p.passes; ++pass) {
    radix_pass_kernel<scalar_t><<<scan_grid, kScanThreads, 0, stream>>>(a, pass);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  collect_above_kernel<scalar_t><<<scan_grid, kScanThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  collect_ties_kernel<scalar_t><<<scan_grid, kScanThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  C10_CUDA_CHECK(
      cudaFuncSetAttribute(sort_kernel<scalar_t>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(p.sort_smem)));
  sort_kernel<scalar_t><<<unsigned(p.rows), kSortThreads, p.sort_smem, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_above_cuda(const at::Tensor& flat_logits, int64_t k, double score_thresh) {
  const at::Tensor logits = flat_logits.contiguous();
  const int64_t rows = logits.size(0), m = logits.size(1);
  at::Tensor values = at::empty({rows, k}, logits.options());
  at::Tensor index = at::empty({rows, k}, logits.options().dtype(at::kLong));
  if (rows == 0 || k == 0) {
    return {values, index};
  }
  if (m == 0) {  // nothing to take: all padding
    return {values.fill_(-std::numeric_limits<double>::infinity()), index.zero_()};
  }
  bool fast = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "detbench.retinanet_postprocess",
                                  [&] {
                                    TopkPlan p;
                                    fast = plan_topk<scalar_t>(rows, m, k, p);
                                    if (fast) {
                                      launch_topk<scalar_t>(p, logits, score_thresh, values, index);
                                    }
                                  });
  if (!fast) {
    return at::topk(logits, k, 1, /*largest=*/true, /*sorted=*/true);
  }
  return {values, index};
}

}  // namespace detbench
