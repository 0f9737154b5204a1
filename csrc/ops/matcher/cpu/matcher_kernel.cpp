// CPU kernels of detbench.match_proposals and match_boxes: torchvision's Matcher, on tiles of
// kTile predictions of one image, as tasks shared dynamically by the threads:
//   (1) scan: for each gt in turn, the row of its qualities over the tile (read from the matrix,
//       or for match_boxes computed: each IoU once); each prediction keeps its first best gt, and
//       with allow_low_quality_matches each gt's maximum over the tile is kept;
//   (2) only with allow_low_quality_matches: once each gt's highest quality is known (the maximum
//       of its tile maxima), a tile re-reads (recomputes) the rows of only the gts whose highest
//       quality it holds, marking the predictions that reach it (the rescue, ties included), and
//       decides. That is usually one tile per gt; a gt that overlaps no proposal (highest IoU 0)
//       rescans every tile, as the old second pass did.
// Rows are padded to a multiple of kLanes with values that change no maximum, and the loops over
// a row are branch-free so that gcc vectorizes them (also the float16 conversions).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/vectorizable.h"
#include "detbench.h"
#include "ops/box_iou/iou.h"
#include "ops/matcher/matcher.h"

namespace detbench {

namespace {

constexpr int64_t kTile = 512;  // predictions per task
constexpr int64_t kLanes = 16;  // rows are padded to a multiple of this

int64_t padded(int64_t n) {
  return ceil_div(n, kLanes) * kLanes;
}

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

// Runs task(t) for t in [0, count), each task once, the threads taking the next one as they
// finish: tiles of images with many gts cost more than others.
template <typename Task>
void run_tasks(int64_t count, const Task& task) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(count, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t t = next++; t < count; t = next++) {
      task(t);
    }
  });
}

// The matcher's state for B images x P predictions, tiled: tiles per image, and per tile its
// predictions' best value and gt, and (with the low-quality rule) each gt's maximum over it.
template <typename T>
struct MatchTiles {
  int64_t B, G, P, tiles;
  bool allow_low;
  std::vector<T> best;        // [B, tiles * kTile]
  std::vector<int32_t> arg;   // [B, tiles * kTile]
  std::vector<T> tile_max;    // [B, tiles, G], with allow_low
  std::vector<T> highest;     // [B, G], with allow_low

  MatchTiles(int64_t B_, int64_t G_, int64_t P_, bool allow_low_)
      : B(B_), G(G_), P(P_), tiles(ceil_div(P_, kTile)), allow_low(allow_low_),
        best(B_ * tiles * kTile), arg(B_ * tiles * kTile), tile_max(allow_low_ ? B_ * tiles * G_ : 0),
        highest(allow_low_ ? B_ * G_ : 0) {
    TORCH_CHECK(G < std::numeric_limits<int32_t>::max(), "detbench: at most 2^31 - 1 gts per image, got ", G);
  }
};

// Step (1) for tile t of image b with G_b gts; row(g, p0, n_pad, v) writes the qualities of gt g
// for predictions [p0, p0 + n_pad) to v, padding beyond P with values that raise no maximum.
template <typename T, typename Row>
DETBENCH_VECTOR_CLONES void scan_tile(MatchTiles<T>& m, int64_t b, int64_t t, int64_t G_b, const Row& row) {
  const int64_t p0 = t * kTile;
  const int64_t n_pad = padded(std::min(kTile, m.P - p0));
  T* __restrict__ best = m.best.data() + (b * m.tiles + t) * kTile;
  int32_t* __restrict__ arg = m.arg.data() + (b * m.tiles + t) * kTile;
  T* gt_max = m.allow_low ? m.tile_max.data() + (b * m.tiles + t) * m.G : nullptr;
  alignas(64) T v[kTile];
  for (int64_t g = 0; g < G_b; ++g) {
    row(g, p0, n_pad, v);
    if (g == 0) {
      std::copy(v, v + n_pad, best);
      std::fill(arg, arg + n_pad, 0);
    } else {
      const int32_t gi = static_cast<int32_t>(g);
      for (int64_t j = 0; j < n_pad; ++j) {  // vectorized
        const bool better = match_better(v[j], best[j]);
        best[j] = better ? v[j] : best[j];
        arg[j] = better ? gi : arg[j];
      }
    }
    if (gt_max != nullptr) {
      // match_max over the row, NaN apart (a NaN-aware select per element does not vectorize):
      // the largest number, or NaN if there is one. Only compared for equality: the sign of a
      // zero maximum does not matter.
      T lanes[kLanes];
      int32_t nan[kLanes] = {};
      std::fill(lanes, lanes + kLanes, -std::numeric_limits<T>::infinity());
      for (int64_t j = 0; j < n_pad; j += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) {  // vectorized
          const T x = v[j + l];
          lanes[l] = x > lanes[l] ? x : lanes[l];
          nan[l] |= static_cast<int32_t>(x != x);
        }
      }
      T mx = lanes[0];
      int32_t any_nan = nan[0];
      for (int64_t l = 1; l < kLanes; ++l) {
        mx = std::max(mx, lanes[l]);
        any_nan |= nan[l];
      }
      gt_max[g] = any_nan ? std::numeric_limits<T>::quiet_NaN() : mx;
    }
  }
}

// Step (2) for tile t of image b: the rescue (with allow_low) and the decisions.
template <typename T, typename Row>
DETBENCH_VECTOR_CLONES void decide_tile(const MatchTiles<T>& m, int64_t b, int64_t t, int64_t G_b, T high, T low,
                                        const Row& row, int64_t* out) {
  const int64_t p0 = t * kTile;
  const int64_t n = std::min(kTile, m.P - p0);
  if (G_b == 0) {
    std::fill(out + p0, out + p0 + n, kBelowLowThreshold);
    return;
  }
  const T* best = m.best.data() + (b * m.tiles + t) * kTile;
  const int32_t* arg = m.arg.data() + (b * m.tiles + t) * kTile;
  uint8_t rescued[kTile] = {};  // not bool: gcc vectorizes the byte ORs
  if (m.allow_low) {
    const int64_t n_pad = padded(n);
    const T* gt_max = m.tile_max.data() + (b * m.tiles + t) * m.G;
    const T* highest = m.highest.data() + b * m.G;
    alignas(64) T v[kTile];
    for (int64_t g = 0; g < G_b; ++g) {
      if (!(gt_max[g] == highest[g])) {  // no value of this tile reaches it (or it is NaN: none can)
        continue;
      }
      row(g, p0, n_pad, v);
      const T h = highest[g];
      for (int64_t j = 0; j < n_pad; ++j) {  // vectorized
        rescued[j] |= static_cast<uint8_t>(v[j] == h);
      }
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    out[p0 + j] = match_decision(best[j], int64_t(arg[j]), rescued[j] != 0, high, low);
  }
}

// The whole matcher: rows(b) gives image b's row function.
template <typename T, typename Rows>
void match_tiled(MatchTiles<T>& m, const std::vector<int64_t>& counts, T high, T low, const Rows& rows,
                 int64_t* out) {
  const int64_t tasks = m.B * m.tiles;
  if (!m.allow_low) {
    run_tasks(tasks, [&](int64_t task) {
      const int64_t b = task / m.tiles, t = task % m.tiles;
      scan_tile(m, b, t, counts[b], rows(b));
      decide_tile(m, b, t, counts[b], high, low, rows(b), out + b * m.P);
    });
    return;
  }
  run_tasks(tasks, [&](int64_t task) {
    const int64_t b = task / m.tiles;
    scan_tile(m, b, task % m.tiles, counts[b], rows(b));
  });
  for (int64_t b = 0; b < m.B; ++b) {
    for (int64_t g = 0; g < counts[b]; ++g) {
      T h = m.tile_max[b * m.tiles * m.G + g];
      for (int64_t t = 1; t < m.tiles; ++t) {
        h = match_max(h, m.tile_max[(b * m.tiles + t) * m.G + g]);
      }
      m.highest[b * m.G + g] = h;
    }
  }
  run_tasks(tasks, [&](int64_t task) {
    const int64_t b = task / m.tiles, t = task % m.tiles;
    decide_tile(m, b, t, counts[b], high, low, rows(b), out + b * m.P);
  });
}

template <typename S>
void match_proposals_impl(const at::Tensor& iou, const std::vector<int64_t>& counts, int64_t B, int64_t G, int64_t P,
                          double high, double low, bool allow_low, at::Tensor& out) {
  using T = at::opmath_type<S>;
  const S* q = iou.const_data_ptr<S>();
  // torchvision compares the S-typed quality with the thresholds converted to S
  const T high_t = T(S(high));
  const T low_t = T(S(low));
  MatchTiles<T> m(B, G, P, allow_low);
  auto rows = [&](int64_t b) {
    const S* image = q + b * G * P;
    return [image, P](int64_t g, int64_t p0, int64_t n_pad, T* v) {
      const S* row = image + g * P + p0;
      const int64_t n = std::min(n_pad, P - p0);
      for (int64_t j = 0; j < n; ++j) {  // vectorized
        v[j] = vectorizable::Float<S>::load(row[j]);
      }
      std::fill(v + n, v + n_pad, -std::numeric_limits<T>::infinity());
    };
  };
  match_tiled(m, counts, high_t, low_t, rows, out.mutable_data_ptr<int64_t>());
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

// Boxes in compute precision as structure-of-arrays (x1, y1, x2, y2, area), so the IoU loops
// vectorize; padded to a multiple of kLanes with zero boxes, whose IoU with any box is 0.
template <typename T>
struct BoxesSoA {
  std::vector<T> x1, y1, x2, y2, area;
};

template <typename S, typename T>
BoxesSoA<T> to_soa(const char* op, const char* arg, const S* boxes, int64_t n, int64_t image, bool batched) {
  BoxesSoA<T> s;
  for (auto* v : {&s.x1, &s.y1, &s.x2, &s.y2, &s.area}) {
    v->assign(padded(n), T(0));
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

template <typename S>
void match_boxes_impl(const at::Tensor& gt, const at::Tensor& props, const std::vector<int64_t>& counts, int64_t B,
                      int64_t G, int64_t P, bool shared_props, bool batched, double high, double low, bool allow_low,
                      at::Tensor& out) {
  using T = at::opmath_type<S>;
  constexpr const char* op = "match_boxes";
  const S* gp = gt.const_data_ptr<S>();
  const S* pp = props.const_data_ptr<S>();
  std::vector<BoxesSoA<T>> gts(B), prop(shared_props ? 1 : B);
  for (int64_t b = 0; b < B; ++b) {
    gts[b] = to_soa<S, T>(op, "gt_boxes", gp + b * G * 4, counts[b], b, batched);
    if (!shared_props || b == 0) {
      prop[b] = to_soa<S, T>(op, "proposals", pp + b * P * 4, P, b, batched && !shared_props);
    }
  }
  MatchTiles<T> m(B, G, P, allow_low);
  // The IoU row of gt g: iou.h's formula with the gt first (torchvision's box_iou(gt, proposals)),
  // so equal IoUs (the argmax ties, the rescue) are equal exactly where torchvision's are.
  auto rows = [&](int64_t b) {
    const BoxesSoA<T>& a = gts[b];
    const BoxesSoA<T>& pr = prop[shared_props ? 0 : b];
    return [&a, &pr](int64_t g, int64_t p0, int64_t n_pad, T* __restrict__ v) {
      const T gx1 = a.x1[g], gy1 = a.y1[g], gx2 = a.x2[g], gy2 = a.y2[g], garea = a.area[g];
      const T* __restrict__ x1 = pr.x1.data() + p0;
      const T* __restrict__ y1 = pr.y1.data() + p0;
      const T* __restrict__ x2 = pr.x2.data() + p0;
      const T* __restrict__ y2 = pr.y2.data() + p0;
      const T* __restrict__ area = pr.area.data() + p0;
      for (int64_t j = 0; j < n_pad; ++j) {  // vectorized
        const T inter = box_intersection(gx1, gy1, gx2, gy2, x1[j], y1[j], x2[j], y2[j]);
        v[j] = iou_from_intersection_vectorizable(inter, garea, area[j]);
      }
    };
  };
  // IoUs are T (float32 for half inputs, as torchvision's box_iou returns)
  match_tiled(m, counts, T(high), T(low), rows, out.mutable_data_ptr<int64_t>());
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
