// CUDA top-k of detbench.retinanet_postprocess (step 1 of the pipeline): of every (image, level)
// segment, the top k of the elements scoring above score_thresh, reading the logits once when
// a segment has at most kCapacity of them (realistic data: a few hundred of ~16 M per image).
//  1. compact: each element passing the decode's own test (sigmoid(x) > score_thresh, the
//     sigmoid computed only above a conservative logit bound) is appended as a 64-bit key to its
//     segment's buffer of kCapacity keys; the segment's count goes on counting past the capacity.
//  2. overflow (count > kCapacity: logits above the threshold everywhere, ties): a radix select
//     of the k-th largest key over those segments only, up to kPasses histogram passes of
//     kDigitBits from the top, each ending in its segment's last block choosing the digit, then a
//     gather of the keys at or above it into the buffer. Launched always; the blocks of segments
//     that did not overflow (or are resolved) exit at once: nothing is decided on the host.
//  3. sort: one block per segment sorts its <= kCapacity keys and writes the top k in at::topk's
//     layout (values = the logits, index = anchor * C + class), padded with -inf and index 0.
// A key is the logit's float bits in unsigned order (high 32 bits) and ~index (low 32 bits): keys
// are unique, descending key order is descending logit with equal logits by ascending index, so
// the selection is deterministic (torch.topk leaves the choice among equal values unspecified).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>

#include "detbench.h"
#include "ops/retinanet_postprocess/cuda/topk_above.h"
#include "ops/retinanet_postprocess/decode_math.h"

namespace detbench {

namespace {

constexpr int kThreads = 256;                  // compaction, histogram and gather blocks
constexpr int kItems = 16;                     // elements per thread of a tile, loaded before use
constexpr int64_t kTile = kThreads * kItems;   // elements of one compaction block
constexpr int64_t kHistTile = 16 * kTile;      // of one histogram / gather block: fewer flushes
constexpr int kCapacity = 4096;                // keys buffered per segment (and the most k)
constexpr int kSortThreads = 512;
constexpr int kSortItems = kCapacity / kSortThreads;
constexpr int kDigitBits = 11;
constexpr int kRadix = 1 << kDigitBits;
constexpr int kPasses = (64 + kDigitBits - 1) / kDigitBits;
static_assert(kItems <= 32, "a tile's candidates are a 32-bit mask per thread");
static_assert(kRadix % kThreads == 0, "the digit choice gives every thread the same number of bins");

template <typename scalar_t>
struct SelectLevel {
  const scalar_t* logits;  // [B, m]
  scalar_t* values;        // [B, k]
  int64_t* index;          // [B, k]
  int64_t m, k;
};

// Tiles of one size laid out per image: level l's tiles are first[l] .. first[l + 1] - 1 of the
// image's first[levels]; block i covers tile i % first[levels] of image i / first[levels].
struct TileMap {
  int64_t first[kRetinaMaxLevels + 1];
};

// A segment's radix select (zeroed before the compaction).
struct SelectState {
  uint64_t prefix;  // the resolved top bits of the k-th largest key (bits from `shift` up)
  int shift;
  int needed;       // how many keys sharing the prefix belong to the top k
  int done;         // the keys sharing the prefix are all needed: the top k = keys >= prefix
  int blocks_done;  // histogram blocks of the segment finished in the current pass
  int gathered;     // keys the gather appended
};

template <typename scalar_t>
struct SelectArgs {
  SelectLevel<scalar_t> level[kRetinaMaxLevels];
  int levels;
  TileMap compact_tiles, hist_tiles;
  float bound;         // no logit at or below it scores above the threshold
  float thresh;        // score_thresh rounded to the dtype, as the decode compares
  scalar_t pad_value;  // -inf
  uint64_t* keys;      // [S, kCapacity], segment s = image * levels + level
  int* count;          // [S]
  int* hist;           // [S, kRadix]
  SelectState* state;  // [S]
};

struct Tile {
  int64_t image, segment, begin;
  int level;
};

template <typename scalar_t>
__device__ inline Tile locate(const SelectArgs<scalar_t>& a, const TileMap& map, int64_t tile_size) {
  const int64_t per_image = map.first[a.levels];
  const int64_t j = blockIdx.x % per_image;
  Tile t;
  t.image = blockIdx.x / per_image;
  t.level = 0;
  while (j >= map.first[t.level + 1]) {  // skips empty levels (no tiles)
    ++t.level;
  }
  t.segment = t.image * a.levels + t.level;
  t.begin = (j - map.first[t.level]) * tile_size;
  return t;
}

// The decode's test (retinanet_decode_slot), the sigmoid only above the bound.
template <typename scalar_t>
__device__ inline bool is_candidate(const SelectArgs<scalar_t>& a, scalar_t x) {
  return static_cast<float>(x) > a.bound && sigmoid_score<scalar_t, float>(x) > a.thresh;
}

__device__ inline uint64_t select_key(float logit, int64_t element) {
  const uint32_t bits = __float_as_uint(logit == 0.f ? 0.f : logit);  // -0 ties with +0, as in torch
  const uint32_t ordered = (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
  return (uint64_t(ordered) << 32) | uint32_t(~uint32_t(element));
}

__device__ inline int64_t key_element(uint64_t key) {
  return ~uint32_t(key);
}

// kItems elements per thread, element begin + i * kThreads + threadIdx.x in item i (coalesced),
// all loaded before any is tested; bit i of `found`: item i is a candidate.
template <typename scalar_t>
struct TileLoad {
  scalar_t x[kItems];
  uint32_t found;
};

template <typename scalar_t>
__device__ inline TileLoad<scalar_t> load_tile(const SelectArgs<scalar_t>& a, const scalar_t* __restrict__ row,
                                               int64_t begin, int64_t m) {
  TileLoad<scalar_t> t;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t e = begin + i * kThreads + threadIdx.x;
    t.x[i] = e < m ? row[e] : scalar_t(0.f);
  }
  t.found = 0;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    if (begin + i * kThreads + threadIdx.x < m && is_candidate(a, t.x[i])) {
      t.found |= 1u << i;
    }
  }
  return t;
}

struct AppendStorage {
  typename cub::BlockScan<int, kThreads>::TempStorage scan;
  int base;
};

// Appends the block's items of `take` to a segment's buffer with one atomic on its counter (which
// goes on past kCapacity; the keys past it are dropped). Every thread of the block calls it.
template <typename scalar_t>
__device__ inline void append_keys(const TileLoad<scalar_t>& t, uint32_t take, int64_t begin, int* counter,
                                   uint64_t* keys, AppendStorage& storage) {
  const int mine = __popc(take);
  if (!__syncthreads_or(mine != 0)) {  // nearly every tile of realistic data
    return;
  }
  int offset, total;
  cub::BlockScan<int, kThreads>(storage.scan).ExclusiveSum(mine, offset, total);
  if (threadIdx.x == 0) {
    storage.base = atomicAdd(counter, total);
  }
  __syncthreads();
  int pos = storage.base + offset;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    if ((take >> i) & 1u) {
      if (pos < kCapacity) {
        keys[pos] = select_key(static_cast<float>(t.x[i]), begin + i * kThreads + threadIdx.x);
      }
      ++pos;
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) compact_kernel(const SelectArgs<scalar_t> a) {
  __shared__ AppendStorage storage;
  const Tile t = locate(a, a.compact_tiles, kTile);
  const SelectLevel<scalar_t>& lv = a.level[t.level];
  const TileLoad<scalar_t> tile = load_tile(a, lv.logits + t.image * lv.m, t.begin, lv.m);
  append_keys(tile, tile.found, t.begin, a.count + t.segment, a.keys + t.segment * kCapacity, storage);
}

// Pass p's digit: key bits [lo, hi), from the top; the bits from hi up are resolved.
struct Digit {
  int hi, lo;
  uint32_t mask;
};

__device__ inline Digit pass_digit(int pass) {
  const int hi = 64 - pass * kDigitBits;
  const int lo = hi > kDigitBits ? hi - kDigitBits : 0;
  return {hi, lo, (1u << (hi - lo)) - 1u};
}

// The last histogram block of a segment: the digit of the needed-th largest key among those
// sharing the prefix (bins in descending digit order, kRadix / kThreads per thread).
template <typename scalar_t>
__device__ void choose_digit(const SelectArgs<scalar_t>& a, const Tile& t, int pass, Digit digit) {
  using Scan = cub::BlockScan<int, kThreads>;
  constexpr int kBins = kRadix / kThreads;
  __shared__ typename Scan::TempStorage scan;
  SelectState& st = a.state[t.segment];
  int* hist = a.hist + t.segment * kRadix;
  const int needed = pass == 0 ? int(std::min<int64_t>(a.level[t.level].k, a.count[t.segment])) : st.needed;
  int bins[kBins];
  int sum = 0;
#pragma unroll
  for (int j = 0; j < kBins; ++j) {
    bins[j] = __ldcg(hist + kRadix - 1 - (threadIdx.x * kBins + j));  // other blocks' atomics: from L2
    sum += bins[j];
  }
  int above;  // keys of the larger digits
  Scan(scan).ExclusiveSum(sum, above);
  __syncthreads();  // every thread has read st.needed before it changes
#pragma unroll
  for (int j = 0; j < kBins; ++j) {
    const int d = kRadix - 1 - (threadIdx.x * kBins + j);
    if (above < needed && needed <= above + bins[j]) {
      st.prefix |= uint64_t(d) << digit.lo;
      st.shift = digit.lo;
      st.needed = needed - above;
      st.done = bins[j] == needed - above;
    }
    above += bins[j];
    hist[d] = 0;  // for the next pass
  }
  if (threadIdx.x == 0) {
    st.blocks_done = 0;
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) histogram_kernel(const SelectArgs<scalar_t> a, int pass) {
  __shared__ int hist[kRadix];
  __shared__ bool last;
  const Tile t = locate(a, a.hist_tiles, kHistTile);
  const SelectState& st = a.state[t.segment];
  if (a.count[t.segment] <= kCapacity || st.done) {  // the same for every block of the segment
    return;
  }
  for (int d = threadIdx.x; d < kRadix; d += kThreads) {
    hist[d] = 0;
  }
  __syncthreads();
  const Digit digit = pass_digit(pass);
  const uint64_t prefix = st.prefix;
  const SelectLevel<scalar_t>& lv = a.level[t.level];
  const scalar_t* row = lv.logits + t.image * lv.m;
  for (int64_t begin = t.begin; begin < std::min(t.begin + kHistTile, lv.m); begin += kTile) {
    const TileLoad<scalar_t> tile = load_tile(a, row, begin, lv.m);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const uint64_t key = select_key(static_cast<float>(tile.x[i]), begin + i * kThreads + threadIdx.x);
      if (((tile.found >> i) & 1u) && (pass == 0 || key >> digit.hi == prefix >> digit.hi)) {
        atomicAdd(&hist[(key >> digit.lo) & digit.mask], 1);
      }
    }
  }
  __syncthreads();
  int* global = a.hist + t.segment * kRadix;
  for (int d = threadIdx.x; d < kRadix; d += kThreads) {
    if (hist[d] != 0) {
      atomicAdd(global + d, hist[d]);
    }
  }
  // The segment's last block to finish sees the whole histogram (threadFenceReduction's pattern).
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const int64_t blocks = a.hist_tiles.first[t.level + 1] - a.hist_tiles.first[t.level];
    last = atomicAdd(&a.state[t.segment].blocks_done, 1) == blocks - 1;
  }
  __syncthreads();
  if (last) {
    __threadfence();
    choose_digit(a, t, pass, digit);
  }
}

// The keys >= the resolved prefix of an overflowing segment: exactly its top min(k, count).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) gather_kernel(const SelectArgs<scalar_t> a) {
  __shared__ AppendStorage storage;
  const Tile t = locate(a, a.hist_tiles, kHistTile);
  if (a.count[t.segment] <= kCapacity) {
    return;
  }
  SelectState& st = a.state[t.segment];
  const int shift = st.shift;
  const uint64_t floor = st.prefix >> shift;
  const SelectLevel<scalar_t>& lv = a.level[t.level];
  const scalar_t* row = lv.logits + t.image * lv.m;
  for (int64_t begin = t.begin; begin < std::min(t.begin + kHistTile, lv.m); begin += kTile) {
    const TileLoad<scalar_t> tile = load_tile(a, row, begin, lv.m);
    uint32_t take = 0;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const uint64_t key = select_key(static_cast<float>(tile.x[i]), begin + i * kThreads + threadIdx.x);
      if (((tile.found >> i) & 1u) && key >> shift >= floor) {
        take |= 1u << i;
      }
    }
    append_keys(tile, take, begin, &st.gathered, a.keys + t.segment * kCapacity, storage);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kSortThreads) sort_kernel(const SelectArgs<scalar_t> a) {
  using Sort = cub::BlockRadixSort<uint64_t, kSortThreads, kSortItems>;
  __shared__ typename Sort::TempStorage storage;
  const int64_t s = blockIdx.x;
  const int64_t image = s / a.levels;
  const SelectLevel<scalar_t>& lv = a.level[s % a.levels];
  const int count = a.count[s];
  const int n = count <= kCapacity ? count : min(a.state[s].gathered, kCapacity);
  const uint64_t* keys = a.keys + s * kCapacity;
  uint64_t key[kSortItems];
#pragma unroll
  for (int i = 0; i < kSortItems; ++i) {  // any order will do: striped, coalesced
    const int r = i * kSortThreads + threadIdx.x;
    key[i] = r < n ? keys[r] : 0;  // 0 is below every key (its float bits would be a NaN's)
  }
  Sort(storage).SortDescendingBlockedToStriped(key);
#pragma unroll
  for (int i = 0; i < kSortItems; ++i) {
    const int r = i * kSortThreads + threadIdx.x;  // rank
    if (r < lv.k) {
      const int64_t out = image * lv.k + r;
      const int64_t e = r < n ? key_element(key[i]) : 0;
      lv.values[out] = r < n ? lv.logits[image * lv.m + e] : a.pad_value;
      lv.index[out] = e;
    }
  }
}

TileMap tile_map(at::TensorList flat_logits, int64_t tile_size) {
  TileMap map{};
  for (size_t l = 0; l < flat_logits.size(); ++l) {
    map.first[l + 1] = map.first[l] + ceil_div(flat_logits[l].size(1), tile_size);
  }
  return map;
}

// No logit at or below the returned bound scores above `thresh` (the threshold in the dtype): the
// sigmoid computed in float is within a few ulp of the exact one, a shift of well under 1 in
// logit even next to 1 (the CPU's scan uses the same margin); rounded down to float.
float logit_bound(float thresh) {
  if (thresh >= 1.f) {
    return std::numeric_limits<float>::infinity();
  }
  const double bound = std::log(double(thresh)) - std::log1p(-double(thresh)) - 1.0;  // -inf at 0
  const float rounded = static_cast<float>(bound);
  return double(rounded) > bound ? std::nextafter(rounded, -std::numeric_limits<float>::infinity()) : rounded;
}

template <typename scalar_t>
RetinaTopk select(at::TensorList flat_logits, int64_t K, double score_thresh) {
  const int levels = static_cast<int>(flat_logits.size());
  const int64_t batch = flat_logits[0].size(0);
  const int64_t segments = batch * levels;
  const auto options = flat_logits[0].options();
  SelectArgs<scalar_t> a{};
  RetinaTopk top;
  for (int l = 0; l < levels; ++l) {
    const int64_t m = flat_logits[l].size(1);
    const int64_t k = std::min(K, m);
    top.values.push_back(at::empty({batch, k}, options));
    top.index.push_back(at::empty({batch, k}, options.dtype(at::kLong)));
    a.level[l] = {flat_logits[l].const_data_ptr<scalar_t>(), top.values[l].mutable_data_ptr<scalar_t>(),
                  top.index[l].mutable_data_ptr<int64_t>(), m, k};
  }
  a.levels = levels;
  a.compact_tiles = tile_map(flat_logits, kTile);
  a.hist_tiles = tile_map(flat_logits, kHistTile);
  a.thresh = static_cast<float>(static_cast<scalar_t>(score_thresh));
  a.bound = logit_bound(a.thresh);
  a.pad_value = -std::numeric_limits<scalar_t>::infinity();
  // One zeroed workspace: states, counts, histograms.
  const at::Tensor workspace =
      at::zeros({segments * int64_t(sizeof(SelectState) + sizeof(int) * (1 + kRadix))}, options.dtype(at::kByte));
  const at::Tensor keys = at::empty({segments, kCapacity}, options.dtype(at::kLong));
  a.state = reinterpret_cast<SelectState*>(workspace.mutable_data_ptr());
  a.count = reinterpret_cast<int*>(a.state + segments);
  a.hist = a.count + segments;
  a.keys = reinterpret_cast<uint64_t*>(keys.mutable_data_ptr<int64_t>());

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int compact_blocks = int(batch * a.compact_tiles.first[levels]);
  const int hist_blocks = int(batch * a.hist_tiles.first[levels]);
  compact_kernel<scalar_t><<<compact_blocks, kThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int pass = 0; pass < kPasses; ++pass) {
    histogram_kernel<scalar_t><<<hist_blocks, kThreads, 0, stream>>>(a, pass);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  gather_kernel<scalar_t><<<hist_blocks, kThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sort_kernel<scalar_t><<<int(segments), kSortThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return top;
}

}  // namespace

RetinaTopk retinanet_topk_above_cuda(at::TensorList flat_logits, int64_t K, double score_thresh) {
  const at::Tensor& first = flat_logits[0];
  const int64_t batch = first.size(0);
  int64_t tiles = 0;
  bool fits = true;  // keys hold a 32-bit float and a 32-bit index; grids fit an int
  for (const at::Tensor& flat : flat_logits) {
    fits = fits && flat.size(1) <= std::numeric_limits<int32_t>::max();
    tiles += ceil_div(flat.size(1), kTile);
  }
  fits = fits && tiles > 0 && tiles * batch <= std::numeric_limits<int32_t>::max();
  if (!fits || K == 0 || K > kCapacity || first.scalar_type() == at::kDouble) {
    return retinanet_topk_sorted(flat_logits, K);
  }
  const c10::cuda::CUDAGuard guard(first.device());
  RetinaTopk top;
  AT_DISPATCH_SWITCH(first.scalar_type(), "detbench.retinanet_postprocess",
                     AT_DISPATCH_CASE(at::kFloat, [&] { top = select<scalar_t>(flat_logits, K, score_thresh); })
                         AT_DISPATCH_CASE(at::kHalf, [&] { top = select<scalar_t>(flat_logits, K, score_thresh); })
                             AT_DISPATCH_CASE(at::kBFloat16,
                                              [&] { top = select<scalar_t>(flat_logits, K, score_thresh); }));
  return top;
}

}  // namespace detbench
