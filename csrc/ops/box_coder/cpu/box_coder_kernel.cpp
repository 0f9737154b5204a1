// CPU kernel of detbench.decode_boxes. The (box, class) pairs of one row of boxes (or of a run of
// rows, one class each) are decoded by one loop: on x86 with AVX2 + F16C (float16, float32), an
// explicit 8-pairs-at-a-time loop whose float16 roundings are F16C conversions (one instruction per
// 8 values); elsewhere (and for bfloat16) a loop that gcc vectorizes: decode_box's steps with
// vectorizable float16/bfloat16 rounding after each and a vectorizable exp (csrc/cpu/vectorizable.h),
// where c10's conversions and std::exp would each keep it scalar. Both compute the same values.
#include <algorithm>
#include <cstring>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/avx2.h"
#include "cpu/vectorizable.h"
#include "detbench.h"
#include "ops/box_coder/box_coder.h"

namespace detbench {

namespace {

template <typename S>
struct VectorizableDecodeMath {
  using T = at::opmath_type<S>;
  static T round(T x) {
    return vectorizable::Float<S>::round(x);
  }
  static T exp(T x) {
    return vectorizable::exp(x);
  }
};

// Decodes n (box, class) pairs: deltas and out [n, 4]; boxes [n, 4], or with kOneBox one box for all.
template <typename S, bool kOneBox>
DETBENCH_VECTOR_CLONES void decode_run(const S* __restrict__ deltas, const S* __restrict__ boxes, int64_t n,
                const DecodeParams<at::opmath_type<S>>& params, S* __restrict__ out) {
  using T = at::opmath_type<S>;
  using F = vectorizable::Float<S>;
  for (int64_t i = 0; i < n; ++i) {  // vectorized (not float64: std::exp)
    const S* b = kOneBox ? boxes : boxes + 4 * i;
    const T box[4] = {F::load(b[0]), F::load(b[1]), F::load(b[2]), F::load(b[3])};
    const T delta[4] = {F::load(deltas[4 * i]), F::load(deltas[4 * i + 1]), F::load(deltas[4 * i + 2]),
                        F::load(deltas[4 * i + 3])};
    T res[4];
    decode_box<S, VectorizableDecodeMath<S>>(box, delta, params, res);
    for (int k = 0; k < 4; ++k) {
      out[4 * i + k] = F::store(res[k]);
    }
  }
}

#ifdef DETBENCH_HAVE_AVX2_F16C
// Loads and stores of 8 records of 4 values of S as 4 float vectors, one per field (lanes in
// avx2::deinterleave4's order), and rounding to S. store rounds too: F16C's conversion is the
// rounding, so the last step's explicit one is skipped.
template <typename S>
struct Avx2Storage {
  static constexpr bool kSupported = false;
};
template <>
struct Avx2Storage<float> {
  static constexpr bool kSupported = true;
  DETBENCH_AVX2_F16C static void load(const float* p, __m256 field[4]) {
    avx2::deinterleave4(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8), _mm256_loadu_ps(p + 16), _mm256_loadu_ps(p + 24),
                        field);
  }
  DETBENCH_AVX2_F16C static __m256 round(__m256 x) {
    return x;
  }
  DETBENCH_AVX2_F16C static void store(const __m256 field[4], float* p) {
    __m256 v[4];
    avx2::interleave4(field, v);
    for (int k = 0; k < 4; ++k) {
      _mm256_storeu_ps(p + 8 * k, v[k]);
    }
  }
};
template <>
struct Avx2Storage<c10::Half> {
  static constexpr bool kSupported = true;
  DETBENCH_AVX2_F16C static __m256 load8(const c10::Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  DETBENCH_AVX2_F16C static void load(const c10::Half* p, __m256 field[4]) {
    avx2::deinterleave4(load8(p), load8(p + 8), load8(p + 16), load8(p + 24), field);
  }
  DETBENCH_AVX2_F16C static __m256 round(__m256 x) {
    return avx2::round_to_half(x);
  }
  DETBENCH_AVX2_F16C static void store(const __m256 field[4], c10::Half* p) {
    __m256 v[4];
    avx2::interleave4(field, v);
    for (int k = 0; k < 4; ++k) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 8 * k),
                       _mm256_cvtps_ph(v[k], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
  }
};

// decode_box on 8 pairs: the same steps in the same order, each rounded to S (the last by store).
// The box terms (width, height, ctr_x, ctr_y) come from box_terms; weights and the rounded clip
// are broadcast.
template <typename S>
struct Avx2Decoder {
  using St = Avx2Storage<S>;
  __m256 wx, wy, ww, wh, clip;

  DETBENCH_AVX2_F16C static void box_terms(const __m256 box[4], __m256 terms[4]) {
    const __m256 half = _mm256_set1_ps(0.5f);
    terms[0] = St::round(_mm256_sub_ps(box[2], box[0]));
    terms[1] = St::round(_mm256_sub_ps(box[3], box[1]));
    terms[2] = St::round(_mm256_add_ps(box[0], St::round(_mm256_mul_ps(half, terms[0]))));
    terms[3] = St::round(_mm256_add_ps(box[1], St::round(_mm256_mul_ps(half, terms[1]))));
  }

  DETBENCH_AVX2_F16C void decode(const __m256 terms[4], const S* deltas, S* out) const {
    __m256 d[4];
    St::load(deltas, d);
    const __m256 dx = St::round(_mm256_div_ps(d[0], wx));
    const __m256 dy = St::round(_mm256_div_ps(d[1], wy));
    // min(clip, x) returns x where either is NaN: dw > clip ? clip : dw, as decode_box
    const __m256 dw = _mm256_min_ps(clip, St::round(_mm256_div_ps(d[2], ww)));
    const __m256 dh = _mm256_min_ps(clip, St::round(_mm256_div_ps(d[3], wh)));
    const __m256 pred_ctr_x = St::round(_mm256_add_ps(St::round(_mm256_mul_ps(dx, terms[0])), terms[2]));
    const __m256 pred_ctr_y = St::round(_mm256_add_ps(St::round(_mm256_mul_ps(dy, terms[1])), terms[3]));
    const __m256 pred_w = St::round(_mm256_mul_ps(St::round(avx2::exp(dw)), terms[0]));
    const __m256 pred_h = St::round(_mm256_mul_ps(St::round(avx2::exp(dh)), terms[1]));
    const __m256 half_w = St::round(_mm256_mul_ps(_mm256_set1_ps(0.5f), pred_w));
    const __m256 half_h = St::round(_mm256_mul_ps(_mm256_set1_ps(0.5f), pred_h));
    const __m256 res[4] = {_mm256_sub_ps(pred_ctr_x, half_w), _mm256_sub_ps(pred_ctr_y, half_h),
                           _mm256_add_ps(pred_ctr_x, half_w), _mm256_add_ps(pred_ctr_y, half_h)};
    St::store(res, out);
  }
};

// decode_run on AVX2 + F16C: 8 pairs per step; the last n % 8 through a zero-padded copy.
template <typename S, bool kOneBox>
DETBENCH_AVX2_F16C void decode_run_avx2(const S* __restrict__ deltas, const S* __restrict__ boxes, int64_t n,
                                        const DecodeParams<float>& params, S* __restrict__ out) {
  using F = vectorizable::Float<S>;
  const Avx2Decoder<S> decoder{_mm256_set1_ps(params.wx), _mm256_set1_ps(params.wy), _mm256_set1_ps(params.ww),
                               _mm256_set1_ps(params.wh), _mm256_set1_ps(F::round(params.clip))};
  __m256 terms[4];
  if (kOneBox) {
    const __m256 box[4] = {_mm256_set1_ps(F::load(boxes[0])), _mm256_set1_ps(F::load(boxes[1])),
                           _mm256_set1_ps(F::load(boxes[2])), _mm256_set1_ps(F::load(boxes[3]))};
    Avx2Decoder<S>::box_terms(box, terms);
  }
  const int64_t full = n - n % 8;
  for (int64_t i = 0; i < full; i += 8) {
    if (!kOneBox) {
      __m256 box[4];
      Avx2Storage<S>::load(boxes + 4 * i, box);
      Avx2Decoder<S>::box_terms(box, terms);
    }
    decoder.decode(terms, deltas + 4 * i, out + 4 * i);
  }
  const int64_t rest = n - full;
  if (rest == 0) {
    return;
  }
  S tail_deltas[32] = {}, tail_boxes[32] = {}, tail_out[32];
  std::memcpy(tail_deltas, deltas + 4 * full, 4 * rest * sizeof(S));
  if (!kOneBox) {
    std::memcpy(tail_boxes, boxes + 4 * full, 4 * rest * sizeof(S));
    __m256 box[4];
    Avx2Storage<S>::load(tail_boxes, box);
    Avx2Decoder<S>::box_terms(box, terms);
  }
  decoder.decode(terms, tail_deltas, tail_out);
  std::memcpy(out + 4 * full, tail_out, 4 * rest * sizeof(S));
}
#endif

// decode_run, or where the CPU has AVX2 + F16C and S is float16 or float32, decode_run_avx2.
template <typename S, bool kOneBox>
void decode_pairs(const S* deltas, const S* boxes, int64_t n, const DecodeParams<at::opmath_type<S>>& params, S* out) {
#ifdef DETBENCH_HAVE_AVX2_F16C
  if constexpr (Avx2Storage<S>::kSupported) {
    if (avx2::cpu_has_avx2_f16c()) {
      decode_run_avx2<S, kOneBox>(deltas, boxes, n, params, out);
      return;
    }
  }
#endif
  decode_run<S, kOneBox>(deltas, boxes, n, params, out);
}

template <typename S>
void decode_cpu_impl(const at::Tensor& deltas, const at::Tensor& boxes, const DecodeShape& shape,
                     const DecodeParams<at::opmath_type<S>>& params, at::Tensor& out) {
  const S* d = deltas.const_data_ptr<S>();
  const S* b = boxes.const_data_ptr<S>();
  S* o = out.mutable_data_ptr<S>();
  const int64_t C = shape.classes;
  at::parallel_for(0, shape.rows, ceil_div<int64_t>(at::internal::GRAIN_SIZE, 4 * C), [&](int64_t begin, int64_t end) {
    if (C > 1) {  // a row's classes share its box
      for (int64_t r = begin; r < end; ++r) {
        decode_pairs<S, true>(d + 4 * C * r, b + 4 * (r % shape.box_period), C, params, o + 4 * C * r);
      }
      return;
    }
    for (int64_t r = begin; r < end;) {  // runs of rows whose boxes are consecutive
      const int64_t box_row = r % shape.box_period;
      const int64_t n = std::min(end - r, shape.box_period - box_row);
      decode_pairs<S, false>(d + 4 * r, b + 4 * box_row, n, params, o + 4 * r);
      r += n;
    }
  });
}

at::Tensor decode_boxes_cpu(const at::Tensor& deltas_in, const at::Tensor& boxes_in, at::ArrayRef<double> weights,
                            double clip) {
  at::Tensor out = decode_boxes_allocate_output(deltas_in, boxes_in, weights, clip);
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor deltas = deltas_in.contiguous();
  const at::Tensor boxes = boxes_in.to(deltas.scalar_type()).contiguous();  // as torchvision converts them first
  const DecodeShape shape = decode_shape(deltas, boxes);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, deltas.scalar_type(), "detbench.decode_boxes", [&] {
    using T = at::opmath_type<scalar_t>;
    const DecodeParams<T> params{T(weights[0]), T(weights[1]), T(weights[2]), T(weights[3]), T(clip)};
    decode_cpu_impl<scalar_t>(deltas, boxes, shape, params, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("decode_boxes", &decode_boxes_cpu);
}

}  // namespace detbench
