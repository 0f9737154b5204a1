// CPU kernels of detbench.retinanet_postprocess: a top-k that looks only at the elements above
// score_thresh (at::topk sorts through all N_l * C of them, ~16 M per image, single-threaded per
// row), and the decode of every candidate slot in parallel; the rest of the pipeline is retinanet_postprocess_pipeline (ATen ops and detbench's segmented
// NMS, on the CPU).
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/vectorizable.h"
#include "detbench.h"
#include "ops/retinanet_postprocess/decode_args.h"
#include "ops/retinanet_postprocess/retinanet_postprocess.h"

namespace detbench {

namespace {

constexpr int64_t kScanChunk = 1 << 16;
constexpr int64_t kScanBlock = 256;  // elements tested together (branch-free) before any is collected

using vectorizable::OrderedBits;

template <typename T>
struct Logit {
  T logit;
  int64_t index;
};

// Appends to out, in index order, the logits of [begin, end) whose ordered key lies in
// [first_key, first_key + span] (one unsigned compare; NaNs are outside). A block of kScanBlock
// is tested branch-free (it vectorizes: no float16 conversion, no score) before any is collected.
template <typename scalar_t, typename T>
DETBENCH_VECTOR_CLONES void collect_candidates(const scalar_t* __restrict__ logits, int64_t begin, int64_t end,
                                               typename OrderedBits<scalar_t>::U first_key,
                                               typename OrderedBits<scalar_t>::U span, std::vector<Logit<T>>& out) {
  using B = OrderedBits<scalar_t>;
  using U = typename B::U;
  const auto candidate = [&](int64_t i) { return U(B::key(logits[i]) - first_key) <= span; };
  for (int64_t b0 = begin; b0 < end; b0 += kScanBlock) {
    const int64_t b1 = std::min(end, b0 + kScanBlock);
    int any = 0;
    for (int64_t i = b0; i < b1; ++i) {
      any |= int(candidate(i));
    }
    for (int64_t i = b0; any && i < b1; ++i) {
      if (candidate(i)) {
        out.push_back({static_cast<T>(logits[i]), i});
      }
    }
  }
}

// The smallest x in [lo, hi] with ok(x), for ok false then true over the floats in order (ok(hi)
// holds): a bisection over the ordered bit patterns.
template <typename T, typename Ok>
T first_true(T lo, T hi, Ok ok) {
  using B = OrderedBits<T>;
  typename B::U a = B::key(lo), z = B::key(hi);
  while (a < z) {
    const typename B::U mid = a + (z - a) / 2;
    if (ok(B::value(mid))) {
      z = mid;
    } else {
      a = mid + 1;
    }
  }
  return B::value(a);
}

// Top-k of one image's flat logits of one level, among the elements scoring > score_thresh only,
// ranked by (score descending, index ascending) — equal scores by index, deterministically. The
// score is a monotone function of the logit, so the selection needs no score but at its edge:
//  1. the candidates: logits above the pre-filter's bound (score_threshold_logit_bound, shared
//     with CUDA) scoring > score_thresh, i.e. those >= the least such logit, found by bisection
//     with the very score function used below: no score in the scan, and an adversarial level
//     whose logits all sit just below the threshold (inside the bound's margin) passes nothing;
//  2. the k-th largest of them, L; its score s is the k-th largest score, and bisections over
//     the floats find the least logit scoring >= s and the least scoring > s;
//  3. a walk over those logits in index order takes every one above the second and, of those
//     between, the first by index until k (all logits above the threshold tie when every score
//     rounds to 1);
//  4. only those k get scores and are ranked.
template <typename scalar_t>
void topk_above_row(const scalar_t* logits, int64_t m, int64_t k, double score_thresh, scalar_t* values,
                    int64_t* index) {
  using T = at::opmath_type<scalar_t>;
  const T thr = static_cast<T>(static_cast<scalar_t>(score_thresh));
  const auto score = [](T x) { return sigmoid_score<scalar_t, T>(static_cast<scalar_t>(x)); };
  constexpr T kInf = std::numeric_limits<T>::infinity();
  const double bound = score_threshold_logit_bound(score_thresh);
  T lowest = static_cast<T>(bound);  // the least T above the bound
  if (!(static_cast<double>(lowest) > bound)) {
    lowest = std::nextafter(lowest, kInf);
  }
  const auto above_thr = [&](T x) { return score(x) > thr; };
  // no candidate: score_thresh >= 1, or < 0 (a NaN bound; the pipeline sends that to at::topk)
  if (!(static_cast<double>(lowest) > bound) || !above_thr(kInf)) {
    std::fill(values, values + k, -std::numeric_limits<scalar_t>::infinity());
    std::fill(index, index + k, int64_t(0));
    return;
  }
  const T first = first_true(lowest, kInf, above_thr);  // the least candidate logit
  // ... as the least scalar_t at or above it: candidates are the keys in [first_key, +inf's key]
  using B = OrderedBits<scalar_t>;
  using U = typename B::U;
  scalar_t first_s = static_cast<scalar_t>(first);
  if (static_cast<T>(first_s) < first) {
    first_s = B::value(U(B::key(first_s) + 1));
  }
  const U first_key = B::key(first_s), span = U(B::key(std::numeric_limits<scalar_t>::infinity()) - first_key);
  const int64_t chunks = ceil_div(m, kScanChunk);
  std::vector<std::vector<Logit<T>>> above(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      collect_candidates(logits, c * kScanChunk, std::min(m, (c + 1) * kScanChunk), first_key, span, above[c]);
    }
  });
  std::vector<Logit<T>> all;  // in index order
  for (auto& a : above) {
    all.insert(all.end(), a.begin(), a.end());
  }
  const int64_t n = static_cast<int64_t>(all.size());
  // every element >= take_eq is taken if room remains; every element >= take_gt always
  T take_eq = -std::numeric_limits<T>::infinity(), take_gt = take_eq;
  bool any_gt = false;
  if (n > k && k > 0) {
    std::vector<T> xs(n);
    std::transform(all.begin(), all.end(), xs.begin(), [](const Logit<T>& l) { return l.logit; });
    std::nth_element(xs.begin(), xs.begin() + (k - 1), xs.end(), std::greater<T>());
    const T kth = xs[k - 1];
    const T top = *std::max_element(xs.begin(), xs.begin() + k);
    const T s = score(kth);
    take_eq = first_true(first, kth, [&](T x) { return score(x) >= s; });
    any_gt = score(top) > s;
    take_gt = any_gt ? first_true(kth, top, [&](T x) { return score(x) > s; }) : top;
  }
  struct Candidate {
    T score;
    int64_t index;
  };
  std::vector<Candidate> chosen;
  std::vector<int64_t> tied;
  for (const Logit<T>& l : all) {
    if (any_gt && l.logit >= take_gt) {
      chosen.push_back({score(l.logit), l.index});
    } else if (l.logit >= take_eq && static_cast<int64_t>(tied.size()) < k) {
      tied.push_back(l.index);
    }
  }
  for (size_t j = 0; j < tied.size() && static_cast<int64_t>(chosen.size()) < k; ++j) {
    chosen.push_back({score(static_cast<T>(logits[tied[j]])), tied[j]});
  }
  const auto better = [](const Candidate& a, const Candidate& b) {
    return a.score > b.score || (a.score == b.score && a.index < b.index);
  };
  std::sort(chosen.begin(), chosen.end(), better);
  int64_t taken = 0;
  while (taken < std::min<int64_t>(k, static_cast<int64_t>(chosen.size())) && chosen[taken].score > thr) {
    ++taken;
  }
  for (int64_t j = 0; j < k; ++j) {
    values[j] = j < taken ? logits[chosen[j].index] : -std::numeric_limits<scalar_t>::infinity();
    index[j] = j < taken ? chosen[j].index : 0;
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

std::tuple<at::Tensor, at::Tensor> topk_above_op_cpu(const at::Tensor& logits, int64_t k, double score_thresh) {
  retinanet_topk_check(logits, k);
  return topk_above_cpu(logits, k, score_thresh);
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("retinanet_postprocess", &retinanet_postprocess_cpu);
  m.impl("_retinanet_topk_above", &topk_above_op_cpu);
}

}  // namespace detbench
