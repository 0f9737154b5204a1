// CPU kernel of detbench.generate_proposals: top-k per (image, level) by a selection, the
// candidates decoded and filtered in parallel, detbench.segmented_nms_padded on the CPU, and a
// merge per image.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/proposals/proposal_math.h"
#include "ops/proposals/proposals.h"

namespace detbench {

namespace {

// Descending objectness, NaN first (torch.topk's order), equal values by ascending index.
template <typename T>
struct ObjectnessOrder {
  const T* values;
  bool operator()(int32_t a, int32_t b) const {
    const T va = values[a], vb = values[b];
    const bool na = va != va, nb = vb != vb;
    if (na != nb) {
      return na;
    }
    if (!na && va != vb) {
      return va > vb;
    }
    return a < b;
  }
};

template <typename S, typename A>
void generate_cpu_impl(const at::Tensor& objectness, const at::Tensor& deltas, const at::Tensor& anchors,
                       const at::Tensor& image_sizes, const ProposalLevels& lv, int64_t post, double nms_thresh,
                       const CandidateParams& params, at::Tensor& out_boxes, at::Tensor& out_scores,
                       at::Tensor& out_counts) {
  using T = at::opmath_type<S>;
  const int64_t B = objectness.size(0), AN = objectness.size(1), L = lv.levels;
  const int64_t K = lv.cand_start[L];
  const S* obj = objectness.const_data_ptr<S>();
  const S* del = deltas.const_data_ptr<S>();
  const A* anc = anchors.const_data_ptr<A>();
  const int64_t anchor_batch_stride = anchors.dim() == 3 ? AN * 4 : 0;
  const int64_t* sizes = image_sizes.const_data_ptr<int64_t>();

  at::Tensor cand_boxes = at::empty({B * K, 4}, objectness.options());
  at::Tensor cand_scores = at::empty({B * K}, objectness.options());
  S* cb = cand_boxes.mutable_data_ptr<S>();
  S* cs = cand_scores.mutable_data_ptr<S>();
  // One task per (image, level): its top-k, in descending objectness, then decoded.
  at::parallel_for(0, B * L, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> values;
    std::vector<int32_t> order;
    for (int64_t s = begin; s < end; ++s) {
      const int64_t b = s / L, l = s % L;
      const int64_t first = lv.anchor_start[l], n = lv.anchor_start[l + 1] - first, k = lv.top[l];
      if (k == 0) {
        continue;
      }
      values.resize(n);
      order.resize(n);
      for (int64_t i = 0; i < n; ++i) {
        values[i] = T(obj[b * AN + first + i]);
      }
      std::iota(order.begin(), order.end(), 0);
      // selection in O(n), then the k selected in order
      const ObjectnessOrder<T> less{values.data()};
      if (k < n) {
        std::nth_element(order.begin(), order.begin() + k, order.end(), less);
      }
      std::sort(order.begin(), order.begin() + k, less);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t a = first + order[j];
        const int64_t c = b * K + lv.cand_start[l] + j;
        candidate_box<S, A>(anc + b * anchor_batch_stride + 4 * a, del + (b * AN + a) * 4, obj[b * AN + a],
                            sizes[2 * b], sizes[2 * b + 1], params, cb + 4 * c, cs + c);
      }
    }
  });

  std::vector<int64_t> offsets(B * L + 1);
  for (int64_t s = 0; s <= B * L; ++s) {
    offsets[s] = (s / L) * K + lv.cand_start[s % L];
  }
  const at::Tensor offsets_t = at::tensor(offsets, objectness.options().dtype(at::kLong));
  const auto [kept, kept_counts] = proposals_nms(cand_boxes, cand_scores, offsets_t, nms_thresh, post);
  const int64_t* kp = kept.const_data_ptr<int64_t>();
  const int64_t* kc = kept_counts.const_data_ptr<int64_t>();

  S* ob = out_boxes.mutable_data_ptr<S>();
  S* os = out_scores.mutable_data_ptr<S>();
  int64_t* oc = out_counts.mutable_data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> merged;
    for (int64_t b = begin; b < end; ++b) {
      merged.clear();
      for (int64_t l = 0; l < L; ++l) {
        const int64_t s = b * L + l;
        merged.insert(merged.end(), kp + s * post, kp + s * post + kc[s]);
      }
      // descending score, then ascending candidate position (level, then rank within the level)
      const int64_t count = std::min<int64_t>(post, int64_t(merged.size()));
      std::partial_sort(merged.begin(), merged.begin() + count, merged.end(), [&](int64_t x, int64_t y) {
        const T sx = T(cs[x]), sy = T(cs[y]);
        return sx != sy ? sx > sy : x < y;
      });
      for (int64_t r = 0; r < post; ++r) {
        const bool real = r < count;
        for (int k = 0; k < 4; ++k) {
          ob[(b * post + r) * 4 + k] = real ? cb[4 * merged[r] + k] : S(0);
        }
        os[b * post + r] = real ? cs[merged[r]] : S(0);
      }
      oc[b] = count;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> generate_proposals_cpu(
    const at::Tensor& objectness_in, const at::Tensor& deltas_in, const at::Tensor& anchors_in,
    const at::Tensor& image_sizes_in, at::IntArrayRef num_anchors_per_level, int64_t pre_nms_top_n,
    int64_t post_nms_top_n, double nms_thresh, double min_size, double score_thresh) {
  auto [boxes, scores, counts] =
      generate_proposals_allocate(objectness_in, deltas_in, anchors_in, image_sizes_in, num_anchors_per_level,
                                  pre_nms_top_n, post_nms_top_n, nms_thresh, min_size, score_thresh);
  if (boxes.size(0) == 0) {
    return {boxes, scores, counts};
  }
  const ProposalLevels lv = proposal_levels(num_anchors_per_level, pre_nms_top_n);
  if (lv.cand_start[lv.levels] == 0 || post_nms_top_n == 0) {
    boxes.zero_();
    scores.zero_();
    counts.zero_();
    return {boxes, scores, counts};
  }
  const at::Tensor objectness = objectness_in.contiguous();
  const at::Tensor deltas = deltas_in.contiguous();
  const at::Tensor anchors = anchors_in.contiguous();
  const at::Tensor image_sizes = image_sizes_in.to(at::kLong).contiguous();
  const CandidateParams params{min_size, score_thresh};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, objectness.scalar_type(), "detbench.generate_proposals", [&] {
    using S = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchors.scalar_type(), "detbench.generate_proposals", [&] {
      generate_cpu_impl<S, scalar_t>(objectness, deltas, anchors, image_sizes, lv, post_nms_top_n, nms_thresh, params,
                                     boxes, scores, counts);
    });
  });
  return {boxes, scores, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("generate_proposals", &generate_proposals_cpu);
}

}  // namespace detbench
