// CPU kernels of detbench.match_proposals and match_boxes. Two passes per image, as torchvision's
// Matcher: (1) each gt's highest quality over the predictions (only with allow_low_quality_matches),
// (2) for a chunk of predictions at a time, a walk over the gts keeping each prediction's best gt
// and whether it reaches some gt's highest quality. match_boxes computes the IoUs in both passes
// (the same formula, the same bits) instead of reading a G x P matrix.
#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/box_iou/iou.h"
#include "ops/matcher/matcher.h"

namespace detbench {

namespace {

constexpr int64_t kChunk = 512;  // predictions per task of pass 2

// Per-image gt counts, checked: [B] values in [0, G]; all G without gt_counts.
std::vector<int64_t> image_gt_counts(const char* op, const std::optional<at::Tensor>& gt_counts, int64_t B, int64_t G) {
  std::vector<int64_t> counts(B, G);
  if (gt_counts.has_value()) {
    const at::Tensor c = gt_counts->to(at::kLong).contiguous();
    const int64_t* p = c.const_data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      if (p[b] < 0 || p[b] > G) {
        match_bad_count_error(op, b, p[b], G);
      }
      counts[b] = p[b];
    }
  }
  return counts;
}

// Pass 2 over one chunk [p0, p0 + n) of image b's predictions. value(g, p) is the quality;
// highest: the gts' highest qualities (nullptr without the low-quality rule).
template <typename T, typename Value>
void match_chunk(int64_t G, int64_t p0, int64_t n, const T* highest, T high, T low, int64_t* out, Value value) {
  T best[kChunk];
  int64_t arg[kChunk];
  bool rescued[kChunk];
  std::fill(rescued, rescued + n, false);
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t j = 0; j < n; ++j) {
      const T v = value(g, p0 + j);
      if (g == 0 || match_better(v, best[j])) {
        best[j] = v;
        arg[j] = g;
      }
      if (highest != nullptr && v == highest[g]) {
        rescued[j] = true;
      }
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    out[p0 + j] = G == 0 ? kBelowLowThreshold : match_decision(best[j], arg[j], rescued[j], high, low);
  }
}

template <typename S>
void match_proposals_impl(const at::Tensor& iou, const std::vector<int64_t>& counts, int64_t B, int64_t G, int64_t P,
                          double high, double low, bool allow_low, at::Tensor& out) {
  using T = at::opmath_type<S>;
  const S* q = iou.const_data_ptr<S>();
  int64_t* o = out.mutable_data_ptr<int64_t>();
  // torchvision compares the S-typed quality with the thresholds converted to S
  const T high_t = T(S(high));
  const T low_t = T(S(low));
  std::vector<T> highest(allow_low ? B * G : 0);
  if (allow_low) {
    at::parallel_for(0, B * G, ceil_div<int64_t>(at::internal::GRAIN_SIZE, P), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (r % G >= counts[r / G]) {
          continue;
        }
        const S* row = q + r * P;
        T m = T(row[0]);
        for (int64_t p = 1; p < P; ++p) {
          m = match_max(m, T(row[p]));
        }
        highest[r] = m;
      }
    });
  }
  const int64_t chunks = ceil_div(P, kChunk);
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / chunks;
      const int64_t p0 = (t % chunks) * kChunk;
      const S* image = q + b * G * P;
      match_chunk<T>(counts[b], p0, std::min(kChunk, P - p0), allow_low ? highest.data() + b * G : nullptr, high_t,
                     low_t, o + b * P, [&](int64_t g, int64_t p) { return T(image[g * P + p]); });
    }
  });
}

at::Tensor match_proposals_cpu(const at::Tensor& iou_in, const std::optional<at::Tensor>& gt_counts, double high,
                               double low, bool allow_low_quality_matches) {
  at::Tensor out = match_proposals_allocate(iou_in, gt_counts, high, low);
  const at::Tensor iou = iou_in.dim() == 3 ? iou_in.contiguous() : iou_in.unsqueeze(0).contiguous();
  const int64_t B = iou.size(0), G = iou.size(1), P = iou.size(2);
  const std::vector<int64_t> counts = image_gt_counts("match_proposals", gt_counts, B, G);
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, iou.scalar_type(), "detbench.match_proposals", [&] {
    match_proposals_impl<scalar_t>(iou, counts, B, G, P, high, low, allow_low_quality_matches, out);
  });
  return out;
}

// Boxes in compute precision as structure-of-arrays (x1, y1, x2, y2, area), so the IoU loops vectorize.
template <typename T>
struct BoxesSoA {
  std::vector<T> x1, y1, x2, y2, area;
};

template <typename S, typename T>
BoxesSoA<T> to_soa(const char* op, const char* arg, const S* boxes, int64_t n, int64_t image, bool batched) {
  BoxesSoA<T> s;
  for (auto* v : {&s.x1, &s.y1, &s.x2, &s.y2, &s.area}) {
    v->resize(n);
  }
  for (int64_t i = 0; i < n; ++i) {
    const T c[4] = {T(boxes[4 * i]), T(boxes[4 * i + 1]), T(boxes[4 * i + 2]), T(boxes[4 * i + 3])};
    if (!(std::isfinite(c[0]) && std::isfinite(c[1]) && std::isfinite(c[2]) && std::isfinite(c[3]))) {
      if (batched) {
        TORCH_CHECK(false, "detbench.", op, ": ", arg, " has a non-finite coordinate (NaN or inf) at box ", i,
                    " of image ", image);
      }
      TORCH_CHECK(false, "detbench.", op, ": ", arg, " has a non-finite coordinate (NaN or inf) at box ", i);
    }
    s.x1[i] = c[0];
    s.y1[i] = c[1];
    s.x2[i] = c[2];
    s.y2[i] = c[3];
    s.area[i] = box_area(c[0], c[1], c[2], c[3]);
  }
  return s;
}

template <typename T>
inline T pair_iou(const BoxesSoA<T>& a, int64_t i, const BoxesSoA<T>& b, int64_t j) {
  const T inter = box_intersection(a.x1[i], a.y1[i], a.x2[i], a.y2[i], b.x1[j], b.y1[j], b.x2[j], b.y2[j]);
  return iou_from_intersection_vectorizable(inter, a.area[i], b.area[j]);
}

template <typename S>
void match_boxes_impl(const at::Tensor& gt, const at::Tensor& props, const std::vector<int64_t>& counts, int64_t B,
                      int64_t G, int64_t P, bool shared_props, bool batched, double high, double low, bool allow_low,
                      at::Tensor& out) {
  using T = at::opmath_type<S>;
  constexpr const char* op = "match_boxes";
  const S* gp = gt.const_data_ptr<S>();
  const S* pp = props.const_data_ptr<S>();
  int64_t* o = out.mutable_data_ptr<int64_t>();
  const T high_t = T(high);  // IoUs are T (float32 for half inputs, as torchvision's box_iou returns)
  const T low_t = T(low);
  std::vector<BoxesSoA<T>> gts(B), prop(shared_props ? 1 : B);
  for (int64_t b = 0; b < B; ++b) {
    gts[b] = to_soa<S, T>(op, "gt_boxes", gp + b * G * 4, counts[b], b, batched);
    if (!shared_props || b == 0) {
      prop[b] = to_soa<S, T>(op, "proposals", pp + b * P * 4, P, b, batched && !shared_props);
    }
  }
  std::vector<T> highest(allow_low ? B * G : 0);
  if (allow_low) {
    at::parallel_for(0, B * G, ceil_div<int64_t>(at::internal::GRAIN_SIZE, 16 * P), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / G, g = r % G;
        if (g >= counts[b]) {
          continue;
        }
        const BoxesSoA<T>& a = gts[b];
        const BoxesSoA<T>& pr = prop[shared_props ? 0 : b];
        T m = T(0);  // IoUs are >= 0 (inputs are finite)
        for (int64_t p = 0; p < P; ++p) {
          m = std::max(m, pair_iou(a, g, pr, p));
        }
        highest[r] = m;
      }
    });
  }
  const int64_t chunks = ceil_div(P, kChunk);
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / chunks;
      const int64_t p0 = (t % chunks) * kChunk;
      const BoxesSoA<T>& a = gts[b];
      const BoxesSoA<T>& pr = prop[shared_props ? 0 : b];
      match_chunk<T>(counts[b], p0, std::min(kChunk, P - p0), allow_low ? highest.data() + b * G : nullptr, high_t,
                     low_t, o + b * P, [&](int64_t g, int64_t p) { return pair_iou(a, g, pr, p); });
    }
  });
}

at::Tensor match_boxes_cpu(const at::Tensor& gt_in, const std::optional<at::Tensor>& gt_counts,
                           const at::Tensor& props_in, double high, double low, bool allow_low_quality_matches) {
  at::Tensor out = match_boxes_allocate(gt_in, gt_counts, props_in, high, low);
  const bool batched = gt_in.dim() == 3;
  const at::Tensor gt = batched ? gt_in.contiguous() : gt_in.unsqueeze(0).contiguous();
  const at::Tensor props = props_in.contiguous();
  const int64_t B = gt.size(0), G = gt.size(1), P = props.size(-2);
  const std::vector<int64_t> counts = image_gt_counts("match_boxes", gt_counts, B, G);
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt.scalar_type(), "detbench.match_boxes", [&] {
    match_boxes_impl<scalar_t>(gt, props, counts, B, G, P, props.dim() == 2, batched, high, low,
                               allow_low_quality_matches, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("match_proposals", &match_proposals_cpu);
  m.impl("match_boxes", &match_boxes_cpu);
}

}  // namespace detbench
