// CPU kernel of detbench.retinanet_postprocess: the decode of every candidate slot in parallel;
// the rest of the pipeline is retinanet_postprocess_pipeline (ATen ops and detbench's segmented
// NMS, on the CPU).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/retinanet_postprocess/decode_args.h"
#include "ops/retinanet_postprocess/retinanet_postprocess.h"

namespace detbench {

namespace {

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
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> retinanet_postprocess_cpu(
    at::TensorList cls_logits, at::TensorList box_deltas, at::TensorList anchors, const at::Tensor& image_sizes,
    double score_thresh, int64_t topk_candidates, double nms_thresh, int64_t detections_per_img) {
  return retinanet_postprocess_pipeline(cls_logits, box_deltas, anchors, image_sizes, score_thresh, topk_candidates,
                                        nms_thresh, detections_per_img, &decode_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("retinanet_postprocess", &retinanet_postprocess_cpu);
}

}  // namespace detbench
