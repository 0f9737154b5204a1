// CPU kernels of detbench.retinanet_postprocess: a top-k that looks only at the elements above
// score_thresh (at::topk sorts through all N_l * C of them, ~16 M per image, single-threaded per
// row), and the decode of every candidate slot in parallel; the rest of the pipeline is retinanet_postprocess_pipeline (ATen ops and detbench's segmented
// NMS, on the CPU).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/retinanet_postprocess/decode_args.h"
#include "ops/retinanet_postprocess/retinanet_postprocess.h"

namespace detbench {

namespace {

constexpr int64_t kScanChunk = 1 << 16;

// Top-k of one image's flat logits of one level, among the elements scoring > score_thresh only:
// a logit bound (score_thresh's logit minus a margin far above the dtype's rounding) skips the
// sigmoid for nearly every element of realistic data; the survivors' exact scores are then
// ranked by (score descending, index ascending) — equal scores by index, deterministically.
template <typename scalar_t>
void topk_above_row(const scalar_t* logits, int64_t m, int64_t k, double score_thresh, scalar_t* values,
                    int64_t* index) {
  using T = at::opmath_type<scalar_t>;
  const T thr = static_cast<T>(static_cast<scalar_t>(score_thresh));
  const double bound = std::log(score_thresh) - std::log1p(-score_thresh) - 1.0;  // -inf at 0, +inf at 1
  struct Candidate {
    T score;
    int64_t index;
  };
  const int64_t chunks = ceil_div(m, kScanChunk);
  std::vector<std::vector<Candidate>> found(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t i = c * kScanChunk, end = std::min(m, (c + 1) * kScanChunk); i < end; ++i) {
        if (static_cast<double>(logits[i]) > bound) {
          const T score = sigmoid_score<scalar_t, T>(logits[i]);
          if (score > thr) {
            found[c].push_back({score, i});
          }
        }
      }
    }
  });
  std::vector<Candidate> all;
  for (auto& f : found) {
    all.insert(all.end(), f.begin(), f.end());
  }
  const auto better = [](const Candidate& a, const Candidate& b) {
    return a.score > b.score || (a.score == b.score && a.index < b.index);
  };
  const int64_t taken = std::min<int64_t>(k, static_cast<int64_t>(all.size()));
  // better is a strict total order (indices are unique), so selecting the first k in O(n) and
  // sorting them gives partial_sort's result; partial_sort's O(n log k) heap dominated when every
  // element is above the threshold (~270k survivors on a level of the small ci image).
  if (taken < static_cast<int64_t>(all.size())) {
    std::nth_element(all.begin(), all.begin() + taken, all.end(), better);
  }
  std::sort(all.begin(), all.begin() + taken, better);
  for (int64_t j = 0; j < k; ++j) {
    values[j] = j < taken ? logits[all[j].index] : -std::numeric_limits<scalar_t>::infinity();
    index[j] = j < taken ? all[j].index : 0;
  }
}

std::tuple<at::Tensor, at::Tensor> topk_above_cpu(const at::Tensor& flat_logits, int64_t k, double score_thresh) {
  const at::Tensor logits = flat_logits.contiguous();
  const int64_t batch = logits.size(0), m = logits.size(1);
  at::Tensor values = at::empty({batch, k}, logits.options());
  at::Tensor index = at::empty({batch, k}, logits.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "detbench.retinanet_postprocess",
                                  [&] {
                                    for (int64_t b = 0; b < batch; ++b) {
                                      topk_above_row(logits.const_data_ptr<scalar_t>() + b * m, m, k, score_thresh,
                                                     values.mutable_data_ptr<scalar_t>() + b * k,
                                                     index.mutable_data_ptr<int64_t>() + b * k);
                                    }
                                  });
  return {values, index};
}

RetinaCandidates decode_cpu(const RetinaDecodeInputs& in) {
  RetinaCandidates out = retinanet_allocate_candidates(in);
  const int64_t slots = out.segment.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.boxes.scalar_type(), "detbench.retinanet_postprocess",
                                  [&] {
                                    const auto args = retinanet_decode_args<scalar_t>(in, out);
                                    std::vector<uint8_t> nan_box(slots, 0);
                                    at::parallel_for(0, slots, 2048, [&](int64_t begin, int64_t end) {
                                      for (int64_t s = begin; s < end; ++s) {
                                        nan_box[s] = retinanet_decode_slot(args, s);
                                      }
                                    });
                                    for (int64_t s = 0; s < slots; ++s) {
                                      if (nan_box[s]) {
                                        retinanet_raise_nan_slot(in, args, s);
                                      }
                                    }
                                  });
  const int64_t no_segment = in.batch * in.classes;  // the segment of a slot without a candidate
  const int64_t* segment = out.segment.const_data_ptr<int64_t>();
  out.valid_slots = std::count_if(segment, segment + slots, [&](int64_t s) { return s != no_segment; });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> retinanet_postprocess_cpu(
    at::TensorList cls_logits, at::TensorList box_deltas, at::TensorList anchors, const at::Tensor& image_sizes,
    double score_thresh, int64_t topk_candidates, double nms_thresh, int64_t detections_per_img) {
  return retinanet_postprocess_pipeline(cls_logits, box_deltas, anchors, image_sizes, score_thresh, topk_candidates,
                                        nms_thresh, detections_per_img, &decode_cpu, &topk_above_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("retinanet_postprocess", &retinanet_postprocess_cpu);
}

}  // namespace detbench
