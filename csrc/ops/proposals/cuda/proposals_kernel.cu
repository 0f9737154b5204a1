// CUDA kernels of detbench.generate_proposals. No host sync, no data-dependent size: CUDA-graph
// capturable. Launches: one stable segmented sort per level (at::sort over [B, anchors of the
// level]: descending objectness, ties by ascending index, NaN first, as the CPU's partial sort),
// candidates_kernel (top-k gather + decode + clip + filters, and the NMS segment offsets),
// detbench.segmented_nms_padded (one segment per image x level), merge_kernel (per image, the
// levels' kept lists merged by rank: each kept box's output slot is its rank in its own list
// plus, by binary search, how many boxes of the other levels' lists come before it).
#include <algorithm>
#include <cstdint>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/proposals/proposal_math.h"
#include "ops/proposals/proposals.h"

namespace detbench {

namespace {

constexpr int kThreads = 256;
constexpr int kMergeThreads = 512;

// The sorted anchor order of each level: row b of level l is order[l] + b * row[l].
struct LevelOrders {
  const int64_t* order[kMaxProposalLevels];
  int64_t row[kMaxProposalLevels];
};

template <typename S, typename A>
__global__ void __launch_bounds__(kThreads)
    candidates_kernel(const S* __restrict__ objectness, const S* __restrict__ deltas, const A* __restrict__ anchors,
                      int64_t anchor_batch_stride, const int64_t* __restrict__ image_sizes, ProposalLevels lv,
                      LevelOrders orders, int64_t B, int64_t AN, CandidateParams params, S* __restrict__ cand_boxes,
                      S* __restrict__ cand_scores, int64_t* __restrict__ offsets) {
  const int64_t K = lv.cand_start[lv.levels];
  const int64_t L = lv.levels;
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i <= B * L) {
    offsets[i] = (i / L) * K + lv.cand_start[i % L];
  }
  if (i >= B * K) {
    return;
  }
  const int64_t b = i / K;
  const int64_t r = i - b * K;
  int l = 0;
  while (l + 1 < lv.levels && r >= lv.cand_start[l + 1]) {
    ++l;
  }
  const int64_t a = lv.anchor_start[l] + orders.order[l][b * orders.row[l] + (r - lv.cand_start[l])];
  candidate_box<S, A>(anchors + b * anchor_batch_stride + 4 * a, deltas + (b * AN + a) * 4, objectness[b * AN + a],
                      image_sizes[2 * b], image_sizes[2 * b + 1], params, cand_boxes + 4 * i, cand_scores + i);
}

// Whether candidate (score sx, position x) comes before (sy, y): descending score, then ascending position.
template <typename T>
__device__ __forceinline__ bool before(T sx, int64_t x, T sy, int64_t y) {
  return sx > sy || (sx == sy && x < y);
}

template <typename S>
__global__ void __launch_bounds__(kMergeThreads)
    merge_kernel(const S* __restrict__ cand_boxes, const S* __restrict__ cand_scores, const int64_t* __restrict__ kept,
                 const int64_t* __restrict__ kept_counts, int64_t L, int64_t post, S* __restrict__ out_boxes,
                 S* __restrict__ out_scores, int64_t* __restrict__ out_counts) {
  using T = at::opmath_type<S>;
  __shared__ int64_t count[kMaxProposalLevels];
  __shared__ int64_t total;
  const int64_t b = blockIdx.x;
  if (threadIdx.x == 0) {
    int64_t t = 0;
    for (int64_t l = 0; l < L; ++l) {
      count[l] = min(max(kept_counts[b * L + l], int64_t(0)), post);
      t += count[l];
    }
    total = min(t, post);
    out_counts[b] = total;
  }
  __syncthreads();
  for (int64_t slot = threadIdx.x; slot < L * post; slot += blockDim.x) {
    const int64_t l = slot / post, j = slot - l * post;
    if (j >= count[l]) {
      continue;
    }
    const int64_t c = kept[(b * L + l) * post + j];
    const T s = T(cand_scores[c]);
    int64_t rank = j;
    for (int64_t m = 0; m < L && rank < post; ++m) {
      if (m == l) {
        continue;
      }
      // how many of list m come before (s, c): its first element not before it
      const int64_t* list = kept + (b * L + m) * post;
      int64_t lo = 0, hi = count[m];
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        const int64_t cm = list[mid];
        if (before(T(cand_scores[cm]), cm, s, c)) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
      rank += lo;
    }
    if (rank < post) {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        out_boxes[(b * post + rank) * 4 + k] = cand_boxes[4 * c + k];
      }
      out_scores[b * post + rank] = S(s);
    }
  }
  for (int64_t r = total + threadIdx.x; r < post; r += blockDim.x) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      out_boxes[(b * post + r) * 4 + k] = S(0);
    }
    out_scores[b * post + r] = S(0);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> generate_proposals_cuda(
    const at::Tensor& objectness_in, const at::Tensor& deltas_in, const at::Tensor& anchors_in,
    const at::Tensor& image_sizes_in, at::IntArrayRef num_anchors_per_level, int64_t pre_nms_top_n,
    int64_t post_nms_top_n, double nms_thresh, double min_size, double score_thresh) {
  auto [boxes, scores, counts] =
      generate_proposals_allocate(objectness_in, deltas_in, anchors_in, image_sizes_in, num_anchors_per_level,
                                  pre_nms_top_n, post_nms_top_n, nms_thresh, min_size, score_thresh);
  const int64_t B = objectness_in.size(0), AN = objectness_in.size(1);
  if (B == 0) {
    return {boxes, scores, counts};
  }
  const ProposalLevels lv = proposal_levels(num_anchors_per_level, pre_nms_top_n);
  const int64_t L = lv.levels, K = lv.cand_start[L];
  if (K == 0 || post_nms_top_n == 0) {
    boxes.zero_();
    scores.zero_();
    counts.zero_();
    return {boxes, scores, counts};
  }
  const c10::cuda::CUDAGuard guard(objectness_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor objectness = objectness_in.contiguous();
  const at::Tensor deltas = deltas_in.contiguous();
  const at::Tensor anchors = anchors_in.contiguous();
  const at::Tensor image_sizes = image_sizes_in.to(at::kLong).contiguous();

  std::vector<at::Tensor> sorted(L);
  LevelOrders orders{};
  for (int64_t l = 0; l < L; ++l) {
    if (lv.top[l] == 0) {
      continue;
    }
    const at::Tensor level = objectness.narrow(1, lv.anchor_start[l], lv.anchor_start[l + 1] - lv.anchor_start[l]);
    sorted[l] = std::get<1>(level.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true)).contiguous();
    orders.order[l] = sorted[l].const_data_ptr<int64_t>();
    orders.row[l] = sorted[l].size(1);
  }

  at::Tensor cand_boxes = at::empty({B * K, 4}, objectness.options());
  at::Tensor cand_scores = at::empty({B * K}, objectness.options());
  at::Tensor offsets = at::empty({B * L + 1}, objectness.options().dtype(at::kLong));
  const CandidateParams params{min_size, score_thresh};
  const int64_t work = std::max(B * K, B * L + 1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, objectness.scalar_type(), "detbench.generate_proposals", [&] {
    using S = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchors.scalar_type(), "detbench.generate_proposals", [&] {
      candidates_kernel<S, scalar_t><<<unsigned(ceil_div<int64_t>(work, kThreads)), kThreads, 0, stream>>>(
          objectness.const_data_ptr<S>(), deltas.const_data_ptr<S>(), anchors.const_data_ptr<scalar_t>(),
          anchors.dim() == 3 ? AN * 4 : 0, image_sizes.const_data_ptr<int64_t>(), lv, orders, B, AN, params,
          cand_boxes.mutable_data_ptr<S>(), cand_scores.mutable_data_ptr<S>(), offsets.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });

  const auto [kept, kept_counts] = proposals_nms(cand_boxes, cand_scores, offsets, nms_thresh, post_nms_top_n);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, objectness.scalar_type(), "detbench.generate_proposals", [&] {
    merge_kernel<scalar_t><<<unsigned(B), kMergeThreads, 0, stream>>>(
        cand_boxes.const_data_ptr<scalar_t>(), cand_scores.const_data_ptr<scalar_t>(), kept.const_data_ptr<int64_t>(),
        kept_counts.const_data_ptr<int64_t>(), L, post_nms_top_n, boxes.mutable_data_ptr<scalar_t>(),
        scores.mutable_data_ptr<scalar_t>(), counts.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {boxes, scores, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CUDA, m) {
  m.impl("generate_proposals", &generate_proposals_cuda);
}

}  // namespace detbench
