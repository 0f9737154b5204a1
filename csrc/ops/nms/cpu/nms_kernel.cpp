// CPU kernels of detbench.nms, batched_nms, segmented_nms and segmented_nms_padded.
//
// Every op reduces to greedy NMS over segments (nms: one segment; batched_nms: one per class),
// each segment's boxes ranked by descending score, equal scores by ascending index. A segment is
// walked in chunks of kChunk ranked boxes:
//   (a) each box of the chunk is tested against the boxes kept from earlier chunks, stopping at
//       the first that suppresses it (most boxes of clustered data die here, early); in parallel
//       over the chunk's boxes when there is enough work;
//   (b) the chunk's survivors, in rank order, are tested against the boxes kept so far in this
//       chunk and kept if none suppresses them.
// A kept box therefore is one that no earlier kept box suppresses: exactly the greedy result.
// The kept boxes are stored as structure-of-arrays, and a box is tested against kBlock of them at
// a time in a loop that gcc vectorizes. Several segments run in parallel, one per task. Ranking is
// a radix sort of the scores' bit patterns, without the comparison sort's data-dependent branches
// (which, same code and input, took twice as long in some processes as in others).
#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/vectorizable.h"
#include "detbench.h"
#include "ops/box_iou/iou.h"
#include "ops/nms/nms.h"

namespace detbench {

namespace {

constexpr int64_t kChunk = 256;
constexpr int kBlock = 16;
// Stage (a) of a chunk runs in parallel from this many box pairs to test (at most).
constexpr int64_t kParallelPairs = 1 << 15;
// Segments of at most this many boxes are ranked by insertion sort (see rank).
constexpr size_t kInsertionSortMax = 32;

// The kept boxes of one segment, as structure-of-arrays.
template <typename T>
struct KeptBoxes {
  std::vector<T> x1, y1, x2, y2, area;
  explicit KeptBoxes(int64_t capacity) {
    for (auto* v : {&x1, &y1, &x2, &y2, &area}) {
      v->resize(capacity);
    }
  }
};

// Whether box b (b[0..3], area ab) is suppressed by (IoU > thr with) one of the kept boxes
// [begin, end).
template <typename T>
DETBENCH_VECTOR_CLONES bool suppressed(const T* b, T ab, const KeptBoxes<T>& kept, int64_t begin, int64_t end, T thr) {
  const T bx1 = b[0], by1 = b[1], bx2 = b[2], by2 = b[3];
  const T* __restrict__ x1 = kept.x1.data();
  const T* __restrict__ y1 = kept.y1.data();
  const T* __restrict__ x2 = kept.x2.data();
  const T* __restrict__ y2 = kept.y2.data();
  const T* __restrict__ area = kept.area.data();
  int64_t k = begin;
  for (; k + kBlock <= end; k += kBlock) {
    int hit = 0;
    for (int j = 0; j < kBlock; ++j) {  // vectorized: no branch inside
      const T inter = box_intersection(x1[k + j], y1[k + j], x2[k + j], y2[k + j], bx1, by1, bx2, by2);
      hit |= iou_from_intersection_vectorizable(inter, area[k + j], ab) > thr;
    }
    if (hit) {
      return true;
    }
  }
  for (; k < end; ++k) {
    const T inter = box_intersection(x1[k], y1[k], x2[k], y2[k], bx1, by1, bx2, by2);
    if (iou_above(inter, area[k], ab, thr)) {
      return true;
    }
  }
  return false;
}

// Greedy NMS of one segment: `ranked` holds its boxes' indices in rank order. Appends the kept
// indices, in rank order, at most max_out of them, to `out`.
template <typename scalar_t>
void nms_segment(const scalar_t* boxes, const std::vector<int64_t>& ranked, double iou_threshold, int64_t max_out,
                 std::vector<int64_t>& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = static_cast<int64_t>(ranked.size());
  if (n == 0 || max_out <= 0) {
    return;
  }
  const T thr = nms_threshold<T>(iou_threshold);
  // The ranked boxes, converted, with their areas: [n][5].
  std::vector<T> box(5 * n);
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* b = boxes + 4 * ranked[i];
    T* d = box.data() + 5 * i;
    d[0] = static_cast<T>(b[0]);
    d[1] = static_cast<T>(b[1]);
    d[2] = static_cast<T>(b[2]);
    d[3] = static_cast<T>(b[3]);
    d[4] = box_area(d[0], d[1], d[2], d[3]);
  }
  KeptBoxes<T> kept(std::min(n, max_out));
  int64_t count = 0;
  std::vector<uint8_t> alive(kChunk);
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t cn = std::min(kChunk, n - c0);
    const int64_t before = count;
    // (a) against the boxes kept from earlier chunks.
    auto test = [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const T* b = box.data() + 5 * (c0 + i);
        alive[i] = !suppressed(b, b[4], kept, 0, before, thr);
      }
    };
    if (before * cn >= kParallelPairs) {
      at::parallel_for(0, cn, 16, test);
    } else {
      test(0, cn);
    }
    // (b) in rank order, against the boxes kept from this chunk.
    for (int64_t i = 0; i < cn; ++i) {
      const T* b = box.data() + 5 * (c0 + i);
      if (!alive[i] || suppressed(b, b[4], kept, before, count, thr)) {
        continue;
      }
      kept.x1[count] = b[0];
      kept.y1[count] = b[1];
      kept.x2[count] = b[2];
      kept.y2[count] = b[3];
      kept.area[count] = b[4];
      out.push_back(ranked[c0 + i]);
      if (++count == max_out) {
        return;
      }
    }
  }
}

// Sorts `idx` (indices of boxes, ascending) into rank order: descending score, equal scores by
// ascending index. A stable LSD radix sort, a byte per pass, on the scores' ordered bit patterns
// flipped (so descending); a byte that all keys share costs its count only. A few boxes (a class
// of a many-class batch) are insertion-sorted on the same keys instead: there the passes' counts
// and buffers would cost more than the sort. NaN scores are rejected before; -0.0 and +0.0 are
// equal scores.
template <typename scalar_t>
void rank(const scalar_t* scores, std::vector<int64_t>& idx) {
  using T = at::opmath_type<scalar_t>;
  using U = typename vectorizable::OrderedBits<T>::U;
  auto key_of = [scores](int64_t i) {
    const T s = static_cast<T>(scores[i]);
    return U(~vectorizable::OrderedBits<T>::key(s == T(0) ? T(0) : s));
  };
  const size_t n = idx.size();
  if (n <= kInsertionSortMax) {
    for (size_t i = 1; i < n; ++i) {
      const int64_t box = idx[i];
      const U key = key_of(box);
      size_t j = i;
      for (; j > 0 && key_of(idx[j - 1]) > key; --j) {
        idx[j] = idx[j - 1];
      }
      idx[j] = box;
    }
    return;
  }
  std::vector<U> key(n), key_out(n);
  std::vector<int64_t> idx_out(n);
  for (size_t i = 0; i < n; ++i) {
    key[i] = key_of(idx[i]);
  }
  for (int shift = 0; shift < int(8 * sizeof(U)); shift += 8) {
    std::array<size_t, 257> start{};  // start[d + 1]: how many keys have byte d, then its first slot
    for (size_t i = 0; i < n; ++i) {
      ++start[((key[i] >> shift) & 0xff) + 1];
    }
    if (start[((key[0] >> shift) & 0xff) + 1] == n) {
      continue;
    }
    std::partial_sum(start.begin(), start.end(), start.begin());
    for (size_t i = 0; i < n; ++i) {
      const size_t slot = start[(key[i] >> shift) & 0xff]++;
      key_out[slot] = key[i];
      idx_out[slot] = idx[i];
    }
    key.swap(key_out);
    idx.swap(idx_out);
  }
}

// The value checks of the CPU kernels: non-finite coordinates and NaN scores raise.
template <typename scalar_t>
void check_values(const char* op, const scalar_t* boxes, const scalar_t* scores, int64_t n) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* b = boxes + 4 * i;
    if (!(std::isfinite(T(b[0])) && std::isfinite(T(b[1])) && std::isfinite(T(b[2])) && std::isfinite(T(b[3])))) {
      nms_nonfinite_box_error(op, i);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(T(scores[i]))) {
      nms_nan_score_error(op, i);
    }
  }
}

// Runs NMS over segments given as lists of box indices (ascending), in parallel over segments;
// returns each segment's kept indices in rank order.
template <typename scalar_t>
std::vector<std::vector<int64_t>> nms_segments(const scalar_t* boxes, const scalar_t* scores,
                                               std::vector<std::vector<int64_t>>& segments, double iou_threshold,
                                               int64_t max_out) {
  std::vector<std::vector<int64_t>> kept(segments.size());
  at::parallel_for(0, static_cast<int64_t>(segments.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      rank(scores, segments[s]);
      nms_segment(boxes, segments[s], iou_threshold, max_out, kept[s]);
    }
  });
  return kept;
}

at::Tensor to_tensor(const std::vector<int64_t>& v) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
  std::copy(v.begin(), v.end(), t.mutable_data_ptr<int64_t>());
  return t;
}

at::Tensor nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in, double iou_threshold) {
  nms_check("nms", boxes_in, scores_in, nullptr, nullptr, iou_threshold, std::nullopt, std::nullopt);
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const int64_t n = boxes.size(0);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "detbench.nms", [&] {
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    const scalar_t* s = scores.const_data_ptr<scalar_t>();
    check_values("nms", b, s, n);
    std::vector<std::vector<int64_t>> segments(1, std::vector<int64_t>(n));
    std::iota(segments[0].begin(), segments[0].end(), int64_t(0));
    out = to_tensor(nms_segments(b, s, segments, iou_threshold, n)[0]);
  });
  return out;
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor& idxs_in,
                           double iou_threshold) {
  nms_check("batched_nms", boxes_in, scores_in, &idxs_in, nullptr, iou_threshold, std::nullopt, std::nullopt);
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const at::Tensor idxs = idxs_in.to(at::kLong).contiguous();
  const int64_t n = boxes.size(0);
  const int64_t* cls = idxs.const_data_ptr<int64_t>();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "detbench.batched_nms", [&] {
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    const scalar_t* s = scores.const_data_ptr<scalar_t>();
    check_values("batched_nms", b, s, n);
    // One segment per class: group the indices by class, in index order.
    std::vector<int64_t> by_class(n);
    std::iota(by_class.begin(), by_class.end(), int64_t(0));
    std::stable_sort(by_class.begin(), by_class.end(), [cls](int64_t a, int64_t c) { return cls[a] < cls[c]; });
    std::vector<std::vector<int64_t>> segments;
    for (int64_t i = 0; i < n;) {
      int64_t j = i + 1;
      while (j < n && cls[by_class[j]] == cls[by_class[i]]) {
        ++j;
      }
      segments.emplace_back(by_class.begin() + i, by_class.begin() + j);
      i = j;
    }
    // All kept indices, in index order (as rank wants them), then in rank order.
    std::vector<uint8_t> is_kept(n, 0);
    for (const auto& k : nms_segments(b, s, segments, iou_threshold, n)) {
      for (int64_t i : k) {
        is_kept[i] = 1;
      }
    }
    std::vector<int64_t> all;
    for (int64_t i = 0; i < n; ++i) {
      if (is_kept[i]) {
        all.push_back(i);
      }
    }
    rank(s, all);
    out = to_tensor(all);
  });
  return out;
}

// The segments of a segmented op: the boxes of each with a score above score_threshold.
template <typename scalar_t>
std::vector<std::vector<int64_t>> segments_of(const scalar_t* scores, const at::Tensor& offsets_in,
                                              std::optional<double> score_threshold) {
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  const int64_t count = offsets.size(0) - 1;
  std::vector<std::vector<int64_t>> segments(count);
  for (int64_t s = 0; s < count; ++s) {
    for (int64_t i = off[s]; i < off[s + 1]; ++i) {
      if (!score_threshold.has_value() || static_cast<double>(scores[i]) > *score_threshold) {
        segments[s].push_back(i);
      }
    }
  }
  return segments;
}

// The common part of segmented_nms and segmented_nms_padded: each segment's kept indices.
std::vector<std::vector<int64_t>> segmented_kept(const char* op, const at::Tensor& boxes_in,
                                                 const at::Tensor& scores_in, const at::Tensor& offsets,
                                                 double iou_threshold, std::optional<int64_t> max_out,
                                                 std::optional<double> score_threshold) {
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const int64_t n = boxes.size(0);
  nms_check_offset_values(op, offsets.contiguous().const_data_ptr<int64_t>(), offsets.size(0), n);
  std::vector<std::vector<int64_t>> kept;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "detbench.segmented_nms", [&] {
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    const scalar_t* s = scores.const_data_ptr<scalar_t>();
    check_values(op, b, s, n);
    auto segments = segments_of(s, offsets, score_threshold);
    kept = nms_segments(b, s, segments, iou_threshold, max_out.value_or(n));
  });
  return kept;
}

at::Tensor segmented_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& segment_offsets,
                             double iou_threshold, std::optional<int64_t> max_output_per_segment,
                             std::optional<double> score_threshold) {
  constexpr const char* kOp = "segmented_nms";
  nms_check(kOp, boxes, scores, nullptr, &segment_offsets, iou_threshold, max_output_per_segment, score_threshold);
  at::Tensor mask = segmented_nms_allocate_mask(boxes);
  mask.zero_();
  bool* m = mask.mutable_data_ptr<bool>();
  for (const auto& k : segmented_kept(kOp, boxes, scores, segment_offsets, iou_threshold, max_output_per_segment,
                                      score_threshold)) {
    for (int64_t i : k) {
      m[i] = true;
    }
  }
  return mask;
}

std::tuple<at::Tensor, at::Tensor> segmented_nms_padded_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                            const at::Tensor& segment_offsets, double iou_threshold,
                                                            int64_t max_output_per_segment,
                                                            std::optional<double> score_threshold) {
  constexpr const char* kOp = "segmented_nms_padded";
  nms_check(kOp, boxes, scores, nullptr, &segment_offsets, iou_threshold, max_output_per_segment, score_threshold);
  auto [indices, counts] = segmented_nms_allocate_padded(boxes, segment_offsets, max_output_per_segment);
  indices.fill_(-1);
  const auto kept = segmented_kept(kOp, boxes, scores, segment_offsets, iou_threshold, max_output_per_segment,
                                   score_threshold);
  int64_t* ind = indices.mutable_data_ptr<int64_t>();
  int64_t* cnt = counts.mutable_data_ptr<int64_t>();
  for (size_t s = 0; s < kept.size(); ++s) {
    cnt[s] = static_cast<int64_t>(kept[s].size());
    std::copy(kept[s].begin(), kept[s].end(), ind + s * max_output_per_segment);
  }
  return {indices, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
  m.impl("segmented_nms", &segmented_nms_cpu);
  m.impl("segmented_nms_padded", &segmented_nms_padded_cpu);
}

}  // namespace detbench
