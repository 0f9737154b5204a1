"""RetinaNet post-processing (torchvision's RetinaNet.postprocess_detections): 5 FPN levels of an
800x1344 image (strides 8-128, 9 anchors per position: 201,600 anchors) x 80 classes, batch 1, 2, 8.

Contents: `realistic` — background logits ~ N(-7, 1) (a few hundred of 16 M elements per image
above score_thresh 0.05) plus ~20 objects per image, each a 3x3-position x 9-anchor cluster of
one class's logits ~ N(1, 1.5) on one level, box deltas ~ N(0, 0.1); adversarial: `none_above`
(no score above the threshold), `all_above` (every score above it: top-k over 16 M candidates
per image, 5,000 into NMS), `ties` (logits from 4 values: scores tie everywhere).

Reference of record: torchvision's own postprocess_detections with its class-aware NMS run per
class on float32 boxes (reference.retinanet.postprocess_tv_f32_nms; torchvision's coordinate
trick overflows in float16). Baseline: the unmodified method, on the same device.

Comparator, per image: the candidate's detections must satisfy the output's invariants (scores
non-increasing and above the threshold, labels in range, boxes in the image, no two kept boxes
of a class with IoU > nms_thresh, padding after counts[b]) and match the reference's one to one
(same label, score and box within the dtype's tolerance, in any order among equal scores). A
mismatch is `ambiguous` rather than `fail` only where ties decide by construction (contents
`ties` and `all_above`, and float16/bfloat16 scores, which quantize to a few thousand values):
there torchvision's own choice among equal scores is unspecified.
"""
from __future__ import annotations

import torch

import ops
from harness import Comparison, Impl, Suite
from reference import pure
from reference import retinanet as ref

IMAGE_HW = (800, 1344)
STRIDES = (8, 16, 32, 64, 128)
CLASSES = 80
ANCHORS_PER_POSITION = 9
OBJECTS_PER_IMAGE = 20
SCORE_THRESH, TOPK, NMS_THRESH, DETECTIONS = 0.05, 1000, 0.5, 300

BOX_TOL = {torch.float64: (1e-9, 1e-12), torch.float32: (1e-3, 1e-5), torch.float16: (0.5, 2e-3), torch.bfloat16: (0.5, 1.6e-2)}
SCORE_TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-6, 1e-6), torch.float16: (1e-4, 1e-3), torch.bfloat16: (1e-3, 8e-3)}
EPS = 1e-6


def make_inputs(case, g):
    images, content = case["images"], case["content"]
    hw = IMAGE_HW if case["size"] == "full" else (120, 200)
    anchors = ref.retinanet_anchors(hw, STRIDES)
    logits, deltas = [], []
    for a in anchors:
        n = a.shape[0]
        if content == "all_above":
            x = torch.rand(images, n, CLASSES, generator=g) * 8.5 - 2.5
        elif content == "ties":
            x = torch.randint(0, 4, (images, n, CLASSES), generator=g).float() - 1.5  # 4 scores, all above
        else:
            x = torch.randn(images, n, CLASSES, generator=g) - 7
            if content == "none_above":
                x = x.clamp(max=-3.5)
        logits.append(x)
        deltas.append(torch.randn(images, n, 4, generator=g) * 0.1)
    if content == "realistic":
        for b in range(images):
            for _ in range(OBJECTS_PER_IMAGE):
                level = int(torch.randint(0, len(STRIDES), (1,), generator=g))
                fh, fw = -(-hw[0] // STRIDES[level]), -(-hw[1] // STRIDES[level])
                cy, cx = int(torch.randint(0, fh, (1,), generator=g)), int(torch.randint(0, fw, (1,), generator=g))
                cls = int(torch.randint(0, CLASSES, (1,), generator=g))
                grid = logits[level][b].view(fh, fw, ANCHORS_PER_POSITION, CLASSES)
                ys, xs = slice(max(cy - 1, 0), cy + 2), slice(max(cx - 1, 0), cx + 2)
                patch = grid[ys, xs, :, cls]
                grid[ys, xs, :, cls] = torch.randn(patch.shape, generator=g) * 1.5 + 1
    dev, dt = case.device, case.dtype
    sizes = torch.tensor([list(hw)] * images, dtype=torch.int64)
    return ([x.to(dt).to(dev) for x in logits], [d.to(dt).to(dev) for d in deltas],
            [a.to(dt).to(dev) for a in anchors], sizes.to(dev), SCORE_THRESH, TOPK, NMS_THRESH, DETECTIONS)


def _per_image(out):
    """Either output format -> per image (boxes, scores, labels) on the CPU, float64 / int64."""
    if isinstance(out, list):
        return [(d["boxes"].double().cpu(), d["scores"].double().cpu(), d["labels"].cpu()) for d in out]
    boxes, scores, labels, counts = out
    return [(boxes[b, :n].double().cpu(), scores[b, :n].double().cpu(), labels[b, :n].cpu())
            for b, n in enumerate(counts.tolist())]


def _padding_error(out, case) -> str | None:
    if isinstance(out, list):
        return None
    boxes, scores, labels, counts = out
    b, d = labels.shape
    pad = torch.arange(d, device=labels.device)[None, :] >= counts[:, None]
    if (counts < 0).any() or (counts > d).any():
        return "counts out of [0, detections_per_img]"
    if (labels[pad] != -1).any() or (scores[pad] != 0).any() or (boxes[pad] != 0).any():
        return "padding after counts[b] is not (box 0, score 0, label -1)"
    return None


def _invariant_error(boxes, scores, labels, hw, dtype) -> str | None:
    if len(scores) > DETECTIONS:
        return f"{len(scores)} detections > {DETECTIONS}"
    if len(scores) > 1 and (scores[1:] > scores[:-1]).any():
        return "scores are not in non-increasing order"
    if (scores <= torch.tensor(SCORE_THRESH, dtype=dtype).double()).any():
        return "a detection scores <= score_thresh"
    if len(labels) and ((labels < 0) | (labels >= CLASSES)).any():
        return "a label out of [0, C)"
    h, w = hw
    if len(boxes) and ((boxes < 0).any() or (boxes[:, 0::2] > w).any() or (boxes[:, 1::2] > h).any()):
        return "a box outside the image"
    iou = pure.box_iou(boxes, boxes)
    same = labels[:, None] == labels[None, :]
    clash = (iou > NMS_THRESH + EPS) & same
    clash.fill_diagonal_(False)
    if clash.any():
        return "two kept boxes of one class overlap with IoU > nms_thresh"
    return None


def _match(got, exp, dtype) -> tuple[int, int]:
    """Greedy one-to-one matching (same label, close score and box); returns (unmatched in got,
    unmatched in expected)."""
    (gb, gs, gl), (eb, es, el) = got, exp
    if not len(gs) or not len(es):
        return len(gs), len(es)
    batol, brtol = BOX_TOL[dtype]
    satol, srtol = SCORE_TOL[dtype]
    close = ((el[:, None] == gl[None, :])
             & ((es[:, None] - gs[None, :]).abs() <= satol + srtol * es[:, None].abs())
             & ((eb[:, None, :] - gb[None, :, :]).abs() <= batol + brtol * eb[:, None, :].abs()).all(-1))
    used = torch.zeros(len(gs), dtype=torch.bool)
    unmatched = 0
    for i in range(len(es)):
        free = (close[i] & ~used).nonzero()
        if len(free):
            used[free[0, 0]] = True
        else:
            unmatched += 1
    return int((~used).sum()), unmatched


def compare(got, expected, case, inputs):
    hw = tuple(inputs[3][0].tolist())
    pad = _padding_error(got, case)
    if pad:
        return Comparison(False, pad)
    got_images, exp_images = _per_image(got), _per_image(expected)
    if len(got_images) != len(exp_images):
        return Comparison(False, f"{len(got_images)} images, expected {len(exp_images)}")
    tie_prone = case["content"] in ("ties", "all_above") or case.dtype in (torch.float16, torch.bfloat16)
    details = {"kept": 0, "expected": 0, "missing": 0, "extra": 0}
    for b, (g, e) in enumerate(zip(got_images, exp_images)):
        error = _invariant_error(*g, hw, case.dtype)
        if error:
            return Comparison(False, f"image {b}: {error}", details=details)
        extra, missing = _match(g, e, case.dtype)
        details["kept"] += len(g[1])
        details["expected"] += len(e[1])
        details["missing"] += missing
        details["extra"] += extra
    mismatches = details["missing"] + details["extra"]
    if mismatches == 0:
        return Comparison(True, details=details, mismatches=0)
    reason = f"{details['missing']} expected detections missing, {details['extra']} extra"
    if tie_prone:
        return Comparison(True, reason + " (tie-decided content; invariants hold)", ambiguous=True,
                          mismatches=mismatches, details=details)
    return Comparison(False, reason, mismatches=mismatches, details=details)


def torchvision_deviation(case, inputs):
    if case.dtype != torch.float32:
        return ("batched_nms's coordinate offsets (label x (max coordinate + 1)) overflow float16 / round in "
                "bfloat16, and its half-precision NMS computes areas in half")
    if case.device == "cuda":
        return ("on CUDA below 100k coordinates batched_nms offsets boxes by label x (max coordinate + 1) in "
                "float32, rounding them by up to ~4e-3 px: an IoU at the threshold can decide differently")
    return None


def torchvision_unsupported(case):
    if case.device == "cpu" and case.dtype in (torch.float16, torch.bfloat16):
        return "torchvision's CPU nms has no float16/bfloat16 kernel"
    if case.dtype == torch.bfloat16:
        return "torchvision's CUDA nms has no bfloat16 kernel"
    return None


def bytes_moved(case):
    hw = IMAGE_HW if case["size"] == "full" else (120, 200)
    anchors = sum(a.shape[0] for a in ref.retinanet_anchors(hw, STRIDES))
    item = case.dtype.itemsize
    # the logits are read once; the rest (top-k candidates, their deltas, the output) is small
    return case["images"] * (anchors * CLASSES * item + 5 * TOPK * 4 * item + DETECTIONS * (5 * item + 8))


def _run(fn):
    def run(logits, deltas, anchors, sizes, score_thresh, topk, nms_thresh, detections):
        return fn(logits, deltas, anchors, sizes, score_thresh, topk, nms_thresh, detections)

    return run


SUITE = Suite(
    name="retinanet_postprocess",
    description=__doc__,
    impls=[
        Impl("torchvision", _run(ref.postprocess_tv), known_deviation=torchvision_deviation,
             unsupported=torchvision_unsupported),
        Impl("detbench", _run(ops.retinanet_postprocess)),
        Impl("torchvision_f32nms", _run(ref.postprocess_tv_f32_nms), timed=False),
    ],
    reference="torchvision_f32nms",
    baseline="torchvision",
    axes={"images": (1, 2, 8), "size": ("full",), "content": ("realistic",)},
    extra_cases=(
        [{"images": 2, "size": "full", "content": c} for c in ("none_above", "all_above", "ties")]
        + [{"images": 2, "size": "small", "content": c} for c in ("realistic", "none_above", "all_above", "ties")]
    ),
    dtypes=(torch.float32, torch.float16, torch.bfloat16),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    ci=lambda case: case["size"] == "small",
    # Half-precision adversarial cases at full size add nothing the float32 ones do not show; the
    # 2-core CPU runs batch 1 and 2 only.
    include=lambda case: ((case["content"] == "realistic" or case.dtype == torch.float32 or case["size"] == "small")
                          and (case.device == "cuda" or case["images"] <= 2)),
)
