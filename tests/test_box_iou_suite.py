"""The box IoU suite's own pieces: data generators, shapes, bytes, declared deviation."""
import torch

from suites import box_iou
from suites._boxes import clustered_boxes, degenerate_boxes, make_boxes


def test_clustered_boxes_are_valid_image_boxes():
    boxes = clustered_boxes(5000, torch.Generator().manual_seed(0))
    assert boxes.shape == (5000, 4)
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert boxes[:, 0::2].min() >= 0 and boxes[:, 0::2].max() <= 1344
    # clustered: many boxes overlap their neighbours, unlike uniform noise
    iou = box_iou.pure.box_iou(boxes[:500], boxes[:500])
    assert (iou > 0.5).float().mean() > 0.01


def test_degenerate_boxes_contain_every_broken_kind():
    boxes = degenerate_boxes(4000, torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert ((w == 0) & (h > 0)).any() and ((h == 0) & (w > 0)).any() and ((w == 0) & (h == 0)).any()
    assert (w < 0).any() and (h < 0).any()
    assert len(torch.unique(boxes, dim=0)) < len(boxes)  # duplicates


def test_huge_content_stays_finite_in_every_dtype():
    for dtype in box_iou.SUITE.dtypes:
        boxes = make_boxes("huge", 1000, dtype, torch.Generator().manual_seed(0))
        assert torch.isfinite(boxes).all() and boxes.float().min() > 1e4


def test_shapes_and_bytes():
    assert box_iou.parse_shape("100x200000") == (None, 100, 200000)
    assert box_iou.parse_shape("8x100x20000") == (8, 100, 20000)
    case = next(c for c in box_iou.SUITE.cases(devices=["cpu"]) if c["shape"] == "100x200000" and c.dtype == torch.float32)
    assert box_iou.SUITE.bytes_moved(case) == (100 + 200000) * 16 + 100 * 200000 * 4


def test_sweep_covers_the_issue():
    cases = box_iou.SUITE.cases()
    shapes = {c["shape"] for c in cases}
    assert {"100x1000", "100x200000", "1000x1000", "8x100x20000", "0x1000", "1x1", "7x33"} <= shapes
    assert {c.dtype for c in cases} == {torch.float32, torch.float16, torch.bfloat16}
    assert {c.device for c in cases} == {"cpu", "cuda"}


def test_torchvision_nan_is_real_and_declared_only_where_it_happens():
    zero_area = torch.tensor([[5.0, 5.0, 5.0, 9.0]])
    normal = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    assert torch.isnan(box_iou.tv.box_iou(zero_area, zero_area)).all()
    assert box_iou.pure.box_iou(zero_area, zero_area).item() == 0.0
    case = box_iou.SUITE.cases()[0]
    assert box_iou.torchvision_nan(case, (zero_area, zero_area))
    assert box_iou.torchvision_nan(case, (zero_area, normal)) is None
    inverted = torch.tensor([[4.0, 0.0, 0.0, 4.0]])  # area -16 cancels the normal box's 16
    assert torch.isnan(box_iou.tv.box_iou(inverted, normal)).all()
    assert box_iou.torchvision_nan(case, (inverted[None], normal[None]))
