"""Per-kernel CUDA times of one detbench NMS call (torch.profiler), for NOTES.md.

    python scripts/profile_nms.py rpn rpn1 nms20k
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import ops
from suites._boxes import make_boxes

CASES = {  # name: (segments, boxes per segment, iou)
    "rpn": (40, 1000, 0.7),
    "rpn1": (5, 1000, 0.7),
    "boxhead": (160, 100, 0.5),
    "nms20k": (1, 20000, 0.5),
}


def call(name):
    segments, size, iou = CASES[name]
    g = torch.Generator().manual_seed(0)
    boxes = torch.cat([make_boxes("clustered", size, torch.float32, g) for _ in range(segments)]).cuda()
    scores = torch.rand(len(boxes), generator=g).cuda()
    if segments == 1:
        return lambda: ops.nms(boxes, scores, iou)
    offsets = torch.arange(0, len(boxes) + 1, size, device="cuda")
    return lambda: ops.segmented_nms_padded(boxes, scores, offsets, iou, 1000)


for name in sys.argv[1:]:
    fn = call(name)
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    print(f"== {name}: per call (10 calls)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
