// CUDA kernels of detbench.retinanet_postprocess: the per-level top-k of only the elements above
// score_thresh (topk_above.cu), and one thread per candidate slot (images x levels x top-k)
// computing its score, label and clipped box in one launch for all images and levels; the rest of
// the pipeline is retinanet_postprocess_pipeline (ATen ops and detbench's segmented NMS, all on
// the device, no host sync).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/retinanet_postprocess/cuda/topk_above.h"
#include "ops/retinanet_postprocess/decode_args.h"
#include "ops/retinanet_postprocess/retinanet_postprocess.h"

namespace detbench {

namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    retinanet_decode_kernel(const RetinaDecodeArgs<scalar_t> args, int64_t slots, int* __restrict__ nan_box) {
  const int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s < slots && retinanet_decode_slot(args, s) && nan_box != nullptr) {
    atomicMin(nan_box, int(s));
  }
}

RetinaCandidates decode_cuda(const RetinaDecodeInputs& in) {
  RetinaCandidates out = retinanet_allocate_candidates(in);
  const int64_t slots = out.segment.numel();
  if (slots == 0) {
    return out;
  }
  const c10::cuda::CUDAGuard guard(out.boxes.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // Validation mode: the first slot with a NaN box, found with a sync (else no check: NMS drops it).
  at::Tensor nan_box;
  if (validation_enabled()) {
    nan_box = at::full({1}, std::numeric_limits<int>::max(), out.segment.options().dtype(at::kInt));
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.boxes.scalar_type(), "detbench.retinanet_postprocess",
                                  [&] {
                                    const auto args = retinanet_decode_args<scalar_t>(in, out);
                                    const int blocks = int(ceil_div<int64_t>(slots, kThreads));
                                    retinanet_decode_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
                                        args, slots, nan_box.defined() ? nan_box.mutable_data_ptr<int>() : nullptr);
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                    if (nan_box.defined()) {
                                      const int first = nan_box.item<int>();
                                      if (first != std::numeric_limits<int>::max()) {
                                        retinanet_raise_nan_slot(in, args, first);
                                      }
                                    }
                                  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> retinanet_postprocess_cuda(
    at::TensorList cls_logits, at::TensorList box_deltas, at::TensorList anchors, const at::Tensor& image_sizes,
    double score_thresh, int64_t topk_candidates, double nms_thresh, int64_t detections_per_img) {
  c10::cuda::OptionalCUDAGuard guard;
  if (!cls_logits.empty()) {  // an empty list raises in the pipeline's checks
    guard.set_device(cls_logits[0].device());
  }
  return retinanet_postprocess_pipeline(cls_logits, box_deltas, anchors, image_sizes, score_thresh, topk_candidates,
                                        nms_thresh, detections_per_img, &decode_cuda, &topk_above_cuda);
}

std::tuple<at::Tensor, at::Tensor> topk_above_op_cuda(const at::Tensor& logits, int64_t k, double score_thresh) {
  retinanet_topk_check(logits, k);
  const c10::cuda::CUDAGuard guard(logits.device());
  return topk_above_cuda(logits, k, score_thresh);
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CUDA, m) {
  m.impl("retinanet_postprocess", &retinanet_postprocess_cuda);
  m.impl("_retinanet_topk_above", &topk_above_op_cuda);
}

}  // namespace detbench
