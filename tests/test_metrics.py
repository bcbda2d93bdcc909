"""Metrics against hand-computed cases: J, boundary maps, F and its edge cases, and every protocol summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from pipelines import metrics
from pipelines.metrics import ExpressionResult


def square4() -> np.ndarray:
    """4x4 with a 2x2 square at rows 1-2, cols 1-2."""
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    return mask


def pixel(shape: tuple[int, int], row: int, col: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[row, col] = True
    return mask


# The hand-computed boundary map of square4(): a pixel is boundary when it differs from E, S or SE.
SQUARE4_BOUNDARY = np.array(
    [
        [1, 1, 1, 0],
        [1, 0, 1, 0],
        [1, 1, 1, 0],
        [0, 0, 0, 0],
    ],
    dtype=bool,
)


# --------------------------------------------------------------------------- J


def test_jaccard_hand_cases():
    empty, full = np.zeros((4, 4), dtype=bool), np.ones((4, 4), dtype=bool)
    assert metrics.jaccard(empty, empty) == 1.0
    assert metrics.jaccard(full, full) == 1.0
    assert metrics.jaccard(empty, square4()) == 0.0
    assert metrics.jaccard(full, square4()) == 4 / 16
    assert metrics.jaccard(pixel((4, 4), 1, 1), square4()) == 1 / 4
    assert metrics.jaccard(pixel((4, 4), 0, 0), square4()) == 0.0


def test_jaccard_binarises_any_nonzero_value():
    pred = np.zeros((4, 4), dtype=np.uint8)
    pred[1, 1], pred[1, 2] = 255, 7
    assert metrics.jaccard(pred, square4().astype(np.float32)) == 2 / 4


def test_jaccard_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="differs from ground truth shape"):
        metrics.jaccard(np.zeros((4, 4)), np.zeros((4, 5)))


# --------------------------------------------------------------------------- boundary maps and radius


def test_boundary_map_square():
    np.testing.assert_array_equal(metrics.boundary_map(square4()), SQUARE4_BOUNDARY)


def test_boundary_map_object_touching_bottom_right_border():
    mask = np.zeros((5, 6), dtype=bool)
    mask[2:, 3:] = True
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(metrics.boundary_map(mask), expected)


@pytest.mark.parametrize(
    ("row", "col", "boundary"),
    [
        (1, 1, [(0, 0), (0, 1), (1, 0), (1, 1)]),
        (3, 3, [(2, 2), (2, 3), (3, 2)]),  # bottom-right pixel itself is never boundary
        (0, 3, [(0, 2), (0, 3)]),  # last column: compared with the south neighbour only
        (3, 0, [(2, 0), (3, 0)]),  # last row: compared with the east neighbour only
    ],
)
def test_boundary_map_one_pixel(row, col, boundary):
    expected = np.zeros((4, 4), dtype=bool)
    for r, c in boundary:
        expected[r, c] = True
    np.testing.assert_array_equal(metrics.boundary_map(pixel((4, 4), row, col)), expected)


def test_boundary_map_full_and_empty_masks_have_no_boundary():
    assert not metrics.boundary_map(np.ones((4, 4))).any()
    assert not metrics.boundary_map(np.zeros((4, 4))).any()


def test_boundary_map_works_on_stacks():
    stack = np.stack([square4(), pixel((4, 4), 3, 3)])
    np.testing.assert_array_equal(metrics.boundary_map(stack)[0], SQUARE4_BOUNDARY)
    assert metrics.boundary_map(stack)[1].sum() == 3


@pytest.mark.parametrize(
    ("height", "width", "radius"),
    [(4, 4, 1), (1, 1, 1), (100, 100, 2), (600, 800, 8), (480, 854, 8), (720, 1280, 12), (1080, 1920, 18)],
)
def test_boundary_radius(height, width, radius):
    assert metrics.boundary_radius(height, width) == radius
    assert radius == math.ceil(0.008 * math.sqrt(height**2 + width**2))


# --------------------------------------------------------------------------- F


def test_f_one_pixel_against_square_uses_euclidean_disk():
    # radius 1 on 4x4. Pred boundary {(0,0),(0,1),(1,0),(1,1)} all lie within 1 of the square's boundary: P = 1.
    # Square boundary pixels within 1 of the pred boundary: all but (2,2), which is sqrt(2) away: R = 7/8.
    precision, recall = metrics.boundary_precision_recall_per_frame(
        pixel((4, 4), 1, 1)[None], square4()[None]
    )
    assert (precision[0], recall[0]) == (1.0, 7 / 8)
    assert metrics.boundary_f(pixel((4, 4), 1, 1), square4()) == pytest.approx(14 / 15)


def test_f_radius_two_matches_distance_two_but_not_sqrt5():
    # 100x100 -> radius 2. Pred pixel (10,10): boundary {(9,9),(9,10),(10,9),(10,10)}.
    # Truth pixel (11,12): boundary {(10,11),(10,12),(11,11),(11,12)}; (9,9)<->(10,11) is sqrt(5) apart.
    pred, gt = pixel((100, 100), 10, 10), pixel((100, 100), 11, 12)
    precision, recall = metrics.boundary_precision_recall_per_frame(pred[None], gt[None])
    assert (precision[0], recall[0]) == (3 / 4, 3 / 4)
    assert metrics.boundary_f(pred, gt) == pytest.approx(3 / 4)
    # Truth pixel (10,13): only the pairs at distance exactly 2 ((9,10)-(9,12), (10,10)-(10,12)) match.
    assert metrics.boundary_f(pred, pixel((100, 100), 10, 13)) == pytest.approx(1 / 2)


def test_f_empty_and_full_edge_cases():
    empty, full = np.zeros((4, 4), dtype=bool), np.ones((4, 4), dtype=bool)
    cases = {
        "both empty": (empty, empty, (1.0, 1.0), 1.0),
        "empty prediction, non-empty truth": (empty, square4(), (1.0, 0.0), 0.0),
        "non-empty prediction, empty truth": (square4(), empty, (0.0, 1.0), 0.0),
        # A full-frame mask has no boundary pixel, so full vs empty compares two empty maps.
        "full vs empty": (full, empty, (1.0, 1.0), 1.0),
        "full vs square": (full, square4(), (1.0, 0.0), 0.0),
    }
    for name, (pred, gt, pr, f) in cases.items():
        precision, recall = metrics.boundary_precision_recall_per_frame(pred[None], gt[None])
        assert (precision[0], recall[0]) == pr, name
        assert metrics.boundary_f(pred, gt) == f, name


def test_f_zero_when_precision_and_recall_are_zero():
    # 30x30 -> radius 1; the two boundaries are far apart.
    pred, gt = pixel((30, 30), 1, 1), pixel((30, 30), 20, 20)
    precision, recall = metrics.boundary_precision_recall_per_frame(pred[None], gt[None])
    assert (precision[0], recall[0]) == (0.0, 0.0)
    assert metrics.boundary_f(pred, gt) == 0.0


def test_f_per_frame_stack_keeps_frames_apart():
    # The same pixel positions in other frames must not count as matches.
    pred = np.stack([pixel((30, 30), 1, 1), pixel((30, 30), 20, 20)])
    gt = np.stack([pixel((30, 30), 20, 20), pixel((30, 30), 1, 1)])
    np.testing.assert_array_equal(metrics.boundary_f_per_frame(pred, gt), [0.0, 0.0])
    np.testing.assert_array_equal(metrics.boundary_f_per_frame(pred, pred), [1.0, 1.0])


def test_expression_scores_average_over_frames():
    pred = np.stack([pixel((4, 4), 1, 1), np.zeros((4, 4), bool), np.zeros((4, 4), bool)])
    gt = np.stack([square4(), np.zeros((4, 4), bool), square4()])
    j, f = metrics.expression_scores(pred, gt)
    assert j == pytest.approx((1 / 4 + 1 + 0) / 3)
    assert f == pytest.approx((14 / 15 + 1 + 0) / 3)


def dense_reference_f(pred: np.ndarray, gt: np.ndarray) -> float:
    """Independent F: dense dilation of the boundary maps by a Euclidean disk, as the DAVIS toolkit does."""
    radius = metrics.boundary_radius(*pred.shape)
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = yy**2 + xx**2 <= radius**2
    pred_b, gt_b = metrics.boundary_map(pred), metrics.boundary_map(gt)
    n_pred, n_gt = pred_b.sum(), gt_b.sum()
    if n_pred == 0 or n_gt == 0:
        precision, recall = (1.0 if n_pred == 0 else 0.0), (1.0 if n_gt == 0 else 0.0)
        if n_pred == 0 and n_gt == 0:
            precision = recall = 1.0
    else:
        precision = (pred_b & ndimage.binary_dilation(gt_b, disk)).sum() / n_pred
        recall = (gt_b & ndimage.binary_dilation(pred_b, disk)).sum() / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_f_matches_dense_dilation_on_blobs_with_radius_above_one():
    rng = np.random.default_rng(0)
    height, width = 130, 170  # radius 2
    yy, xx = np.mgrid[:height, :width]
    for _ in range(10):
        cy, cx, ry, rx = rng.uniform(10, 120), rng.uniform(10, 160), rng.uniform(3, 40), rng.uniform(3, 40)
        gt = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        pred = ((yy - cy - rng.uniform(-4, 4)) / ry) ** 2 + ((xx - cx - rng.uniform(-4, 4)) / rx) ** 2 < 1
        pred ^= rng.random((height, width)) < 0.002
        assert metrics.boundary_f(pred, gt) == pytest.approx(dense_reference_f(pred, gt), abs=1e-12)


# --------------------------------------------------------------------------- properties

small_masks = st.tuples(st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda shape: st.tuples(arrays(bool, shape), arrays(bool, shape))
)


@settings(max_examples=150, deadline=None)
@given(small_masks)
def test_properties_of_j_and_f(pair):
    a, b = pair
    j = metrics.jaccard(a, b)
    assert 0.0 <= j <= 1.0
    assert j == metrics.jaccard(b, a)
    assert metrics.jaccard(a, a) == 1.0
    assert metrics.boundary_f(a, a) == 1.0
    f = metrics.boundary_f(a, b)
    assert 0.0 <= f <= 1.0
    assert f == pytest.approx(metrics.boundary_f(b, a))
    assert f == pytest.approx(dense_reference_f(a, b), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4).flatmap(lambda t: st.tuples(arrays(bool, (t, 6, 7)), arrays(bool, (t, 6, 7)))))
def test_stacked_scores_equal_frame_by_frame_scores(pair):
    pred, gt = pair
    per_frame = metrics.boundary_f_per_frame(pred, gt)
    assert per_frame.tolist() == [metrics.boundary_f(p, g) for p, g in zip(pred, gt, strict=True)]
    assert metrics.jaccard_per_frame(pred, gt).tolist() == [
        metrics.jaccard(p, g) for p, g in zip(pred, gt, strict=True)
    ]


# --------------------------------------------------------------------------- per-expression rows


def test_score_expression_missing_prediction_scores_zero_and_is_flagged():
    gt = np.stack([square4(), square4()])
    row = metrics.score_expression("v", "3", None, gt, kind="static")
    assert (row.J, row.F, row.missing, row.num_frames, row.kind) == (0.0, 0.0, True, 2, "static")
    assert row.to_dict()["J&F"] == 0.0


def test_score_expression_reasonvos_scores_only_the_given_frames():
    pred = np.stack([square4(), np.zeros((4, 4), bool), square4()])
    gt = np.stack([square4(), square4(), square4()])
    all_frames = metrics.score_expression("v", "0", pred, gt)
    annotated = metrics.score_expression("v", "0", pred, gt, frames=[0, 2])
    assert (all_frames.J, all_frames.num_frames) == (pytest.approx(2 / 3), 3)
    assert (annotated.J, annotated.F, annotated.num_frames) == (1.0, 1.0, 2)


def test_score_expression_errors_name_video_and_expression():
    gt = np.stack([square4()])
    with pytest.raises(ValueError, match=r"video 'cat', expression '7': prediction shape"):
        metrics.score_expression("cat", "7", np.zeros((1, 4, 5)), gt)
    with pytest.raises(ValueError, match=r"video 'cat', expression '7': frames to score"):
        metrics.score_expression("cat", "7", gt, gt, frames=[1])


def test_score_expression_no_target_records_empty_fraction():
    empty = np.zeros((4, 4), bool)
    pred = np.stack([empty, square4(), empty, empty])
    gt = np.stack([empty] * 4)
    row = metrics.score_expression("v", "9", pred, gt, type_id=0, no_target=True)
    assert (row.empty_fraction, row.J) == (0.75, 0.75)
    assert metrics.score_expression("v", "9", None, gt, no_target=True).empty_fraction == 0.0
    assert metrics.score_expression("v", "1", pred, np.stack([square4()] * 4)).empty_fraction is None


# --------------------------------------------------------------------------- MeViS / RefVOS summary


def test_mevis_averages_frames_then_expressions_and_keeps_missing():
    empty = np.zeros((4, 4), bool)
    rows = [
        metrics.score_expression("a", "0", pixel((4, 4), 1, 1)[None], square4()[None], kind="static"),
        metrics.score_expression(
            "b", "0", np.stack([empty, empty]), np.stack([empty, square4()]), kind="motion"
        ),
        metrics.score_expression("b", "1", None, np.stack([empty, square4()]), kind="motion"),
    ]
    summary = metrics.refvos_summary(rows)
    # Expression means: J = (1/4, 1/2, 0), F = (14/15, 1/2, 0); a frame-pooled mean would give J = 1/4 + ... / 5.
    j, f = (1 / 4 + 1 / 2 + 0) / 3, (14 / 15 + 1 / 2 + 0) / 3
    assert summary.scores == {"J": pytest.approx(j), "F": pytest.approx(f), "J&F": pytest.approx((j + f) / 2)}
    assert summary.num_expressions == 3
    assert summary.missing == [{"video": "b", "expr_id": "1"}]
    assert summary.subsets["kind:static"]["J"] == pytest.approx(1 / 4)
    assert summary.subsets["kind:motion"] == {"J": 0.25, "F": 0.25, "J&F": 0.25, "num_expressions": 2}
    report = summary.to_dict()
    assert report["J&F"] == pytest.approx((j + f) / 2) and report["missing"] == summary.missing


def test_summaries_reject_empty_input():
    with pytest.raises(ValueError, match="no results"):
        metrics.refvos_summary([])


# --------------------------------------------------------------------------- ReVOS


def test_revos_groups_by_type_and_separates_no_target():
    gt_empty = np.zeros((4, 4, 4), bool)
    pred = gt_empty.copy()
    pred[1] = square4()
    rows = [
        ExpressionResult("v1", "0", 0.2, 0.4, 10, type_id=0),
        ExpressionResult("v1", "1", 0.4, 0.6, 10, type_id=0),
        ExpressionResult("v2", "0", 0.9, 0.7, 10, type_id=1),
        metrics.score_expression("v2", "1", pred, gt_empty, type_id=1, no_target=True),
        metrics.score_expression("v3", "0", None, gt_empty, type_id=0, no_target=True),
    ]
    summary = metrics.revos_summary(rows)
    # Overall = mean of the group means (0.3 and 0.9), not the mean over the three expressions (0.5).
    assert summary.scores == {"J": pytest.approx(0.6), "F": pytest.approx(0.6), "J&F": pytest.approx(0.6)}
    assert summary.subsets["referring"] == {
        "J": pytest.approx(0.3),
        "F": pytest.approx(0.5),
        "J&F": pytest.approx(0.4),
        "num_expressions": 2,
    }
    assert summary.subsets["reasoning"]["J&F"] == pytest.approx(0.8)
    assert summary.subsets["no_target"] == {
        "empty_fraction": pytest.approx((0.75 + 0.0) / 2),
        "num_expressions": 2,
    }
    assert summary.num_expressions == 5
    assert summary.missing == [{"video": "v3", "expr_id": "0"}]


def test_revos_rejects_unknown_type_id():
    with pytest.raises(ValueError, match=r"video 'v', expression '4' has type_id 2"):
        metrics.revos_summary([ExpressionResult("v", "4", 1.0, 1.0, 1, type_id=2)])


# --------------------------------------------------------------------------- Ref-DAVIS17 four-run protocol


def two_objects() -> np.ndarray:
    """(2 objects, 2 frames, 4, 8): A = 2x2 square at cols 1-2, B = 2x2 square at cols 5-6 (radius 1)."""
    gt = np.zeros((2, 2, 4, 8), dtype=bool)
    gt[0, :, 1:3, 1:3] = True
    gt[1, :, 1:3, 5:7] = True
    return gt


def test_davis_label_map_threshold_background_and_argmax():
    p1 = np.array([[[0.6, 0.4, 0.5, 0.0, 0.9]]], dtype=np.float32)
    p2 = np.array([[[0.7, 0.3, 0.5, 0.2, 0.55]]], dtype=np.float32)
    labels = metrics.davis_label_map([p1, p2])
    # 0.7 beats 0.6; 0.4 and 0.3 are zeroed so background (0.1) wins; a 0.5 tie goes to the first object.
    np.testing.assert_array_equal(labels, [[[2, 0, 1, 0, 1]]])
    np.testing.assert_array_equal(metrics.davis_label_map([None, p2]), [[[2, 0, 2, 0, 2]]])


def test_davis_unsupervised_hungarian_swaps_objects():
    gt = two_objects()
    labels = np.zeros(gt.shape[1:], dtype=np.int32)
    labels[gt[1]] = 1  # predicted object 1 is true object B
    labels[gt[0]] = 2  # predicted object 2 is true object A
    j, f = metrics.davis_unsupervised_scores(labels, gt)
    np.testing.assert_array_equal(j, [1.0, 1.0])
    np.testing.assert_array_equal(f, [1.0, 1.0])
    # Read per expression (protocol a) the same prediction scores 0 on both objects.
    assert metrics.expression_scores(labels == 1, gt[0]) == (0.0, 0.0)


def test_davis_unsupervised_more_or_fewer_predicted_objects():
    gt = two_objects()
    labels = np.zeros(gt.shape[1:], dtype=np.int32)
    labels[:, 0, 0] = 1  # a spurious extra object
    labels[gt[0]], labels[gt[1]] = 2, 3
    j, _ = metrics.davis_unsupervised_scores(labels, gt)
    np.testing.assert_array_equal(j, [1.0, 1.0])
    only_b = np.where(gt[1], 1, 0)  # one predicted object for two true ones: padded with an empty one
    j, f = metrics.davis_unsupervised_scores(only_b, gt)
    np.testing.assert_array_equal(j, [0.0, 1.0])
    np.testing.assert_array_equal(f, [0.0, 1.0])


def test_refdavis_four_run_protocol():
    gt = two_objects()
    a, b = gt[0].astype(np.float32), gt[1].astype(np.float32)
    one_pixel_a = np.zeros_like(a)
    one_pixel_a[:, 1, 1] = 0.8
    objs, rows = ["1", "2"], []
    slot_probs = {
        0: [a * 0.9, b * 0.9],  # both right
        1: [b * 0.9, a * 0.9],  # expressions swapped: Hungarian matching recovers both
        2: [a * 0.9, None],  # object 2's expression is missing
        3: [one_pixel_a, b * 0.7],  # object 1: one pixel of its square (J 1/4, F 14/15 per frame)
    }
    for slot, probs in slot_probs.items():
        expr_ids = [str(obj * 4 + slot) for obj in range(2)]
        rows += metrics.score_davis_slot("bear", slot, objs, expr_ids, probs, gt)
    summary = metrics.refdavis_four_run_summary(rows)
    run_j = [1.0, 1.0, 0.5, (1 / 4 + 1) / 2]
    run_f = [1.0, 1.0, 0.5, (14 / 15 + 1) / 2]
    j, f = float(np.mean(run_j)), float(np.mean(run_f))
    assert summary.scores == {"J": pytest.approx(j), "F": pytest.approx(f), "J&F": pytest.approx((j + f) / 2)}
    assert summary.missing == [{"video": "bear", "expr_id": "6"}]
    assert summary.num_expressions == 8
    assert summary.subsets["run:annotator2-first-frame"] == {"J": 0.5, "F": 0.5, "J&F": 0.5, "num_objects": 2}
    assert summary.subsets["run:annotator2-full-video"]["F"] == pytest.approx(run_f[3])


def test_void_pixels_are_left_out_of_j_and_background_in_f():
    """davis2017-evaluation's db_eval_iou / f_measure: void pixels leave the union and are cleared from
    both masks before the boundary maps (6 x 12 frames: boundary radius 1)."""
    gt = np.zeros((1, 6, 12), dtype=bool)
    gt[0, 1:3, 1:3] = True  # 4 px
    pred = np.zeros_like(gt)
    pred[0, 1:3, 1:6] = True  # the square and 6 px to its right
    void = np.zeros_like(gt)
    void[0, 1:3, 3:6] = True  # exactly those 6 px
    assert metrics.jaccard_per_frame(pred, gt)[0] == pytest.approx(4 / 10)
    assert metrics.jaccard_per_frame(pred, gt, void)[0] == 1.0  # I 4, U 10 - 6
    assert metrics.boundary_f_per_frame(pred, gt)[0] < 1.0
    assert metrics.boundary_f_per_frame(pred, gt, void)[0] == 1.0  # pred minus void is the square
    assert metrics.expression_scores(pred, gt, void) == (1.0, 1.0)
    result = metrics.score_expression("v", "0", pred, gt, void=void)
    assert (result.J, result.F) == (1.0, 1.0)
    # A prediction on void pixels only, nothing to find: union empty (J 1), no boundary left (F 1).
    assert metrics.expression_scores(void, np.zeros_like(gt), void) == (1.0, 1.0)
    labels = np.where(pred, 1, 0)
    j, f = metrics.davis_unsupervised_scores(labels, gt[None], void)
    assert (j[0], f[0]) == (1.0, 1.0)


def _three_objects() -> np.ndarray:
    """2 frames of 4 x 16 (boundary radius 1): object 1 at columns 1-2 and object 2 at columns 12-13 in
    both frames; object 3 (columns 6-7) only in frame 1, so frame 0's highest id is 2."""
    annotation = np.zeros((2, 4, 16), dtype=np.uint8)
    annotation[:, 1:3, 1:3] = 1
    annotation[:, 1:3, 12:14] = 2
    annotation[1, 1:3, 6:8] = 3
    return annotation


def test_davis_official_convention_objects_of_frame_0_not_of_the_expressions():
    annotation = _three_objects()
    truth = np.stack([annotation == 1, annotation == 3])  # the expressions describe objects 1 and 3
    probabilities = [t.astype(np.float32) for t in truth]  # both exact
    ours = metrics.score_davis_slot("v", 0, ["1", "3"], ["0", "4"], probabilities, truth)
    assert [(r.obj_id, r.J, r.F) for r in ours] == [("1", 1.0, 1.0), ("3", 1.0, 1.0)]
    official = metrics.score_davis_slot_official("v", 0, ["1", "3"], ["0", "4"], probabilities, annotation)
    # Objects 1..2: object 3 (id above frame 0's highest) is dropped; object 2, which no expression
    # describes, is matched to label 2 (object 3's mask): frame 0 empty prediction (J 0, P 1 R 0: F 0),
    # frame 1 disjoint and far (J 0, F 0).
    assert [(r.obj_id, r.expr_id, r.J, r.F) for r in official] == [("1", "0", 1.0, 1.0), ("2", "", 0.0, 0.0)]


def test_davis_official_convention_credits_a_missing_expressions_object_through_another_label():
    annotation = _three_objects()[:1]  # frame 0 only: objects 1 and 2
    truth = np.stack([annotation == 1, annotation == 2])
    probabilities = [truth[1].astype(np.float32), None]  # object 1's expression finds object 2; 2's is missing
    ours = metrics.score_davis_slot("v", 0, ["1", "2"], ["0", "4"], probabilities, truth)
    assert [(r.obj_id, r.J, r.missing) for r in ours] == [("1", 0.0, False), ("2", 0.0, True)]
    official = metrics.score_davis_slot_official("v", 0, ["1", "2"], ["0", "4"], probabilities, annotation)
    assert [(r.obj_id, r.J, r.F) for r in official] == [("1", 0.0, 0.0), ("2", 1.0, 1.0)]


def test_davis_official_convention_void_label_and_empty_first_frame():
    annotation = _three_objects()
    annotation[:, 1:3, 3] = 255  # void right of object 1, never an object
    probability = np.where(annotation == 1, 1.0, 0.0).astype(np.float32)
    probability[:, 1:3, 3] = 1.0  # the prediction also covers the void column
    official = metrics.score_davis_slot_official("v", 0, ["1"], ["0"], [probability], annotation)
    assert [(r.obj_id, r.J, r.F) for r in official][0] == ("1", 1.0, 1.0)
    assert metrics.score_davis_slot_official("v", 0, ["1"], ["0"], [probability], np.zeros_like(annotation)) == []


def test_refdavis_four_run_needs_every_run():
    row = metrics.DavisObjectResult("v", 0, "1", "0", 1.0, 1.0)
    with pytest.raises(ValueError, match="annotator1-full-video"):
        metrics.refdavis_four_run_summary([row])


# --------------------------------------------------------------------------- temporal grounding


@pytest.mark.parametrize(
    ("pred", "gt", "iou"),
    [
        ((0.0, 10.0), (5.0, 15.0), 1 / 3),
        ((0.0, 10.0), (0.0, 10.0), 1.0),
        ((2.0, 4.0), (0.0, 10.0), 0.2),
        ((0.0, 2.0), (2.0, 4.0), 0.0),
        ((0.0, 2.0), (3.0, 5.0), 0.0),
    ],
)
def test_temporal_iou(pred, gt, iou):
    assert metrics.temporal_iou(pred, gt) == pytest.approx(iou)
    assert metrics.temporal_iou(gt, pred) == pytest.approx(iou)


def test_temporal_iou_rejects_reversed_interval():
    with pytest.raises(ValueError, match="start after end"):
        metrics.temporal_iou((5.0, 1.0), (0.0, 2.0))


def test_grounding_recall_and_miou_count_failures_as_zero():
    rows = [
        metrics.score_moment("v1", 0, (0.0, 10.0), (0.0, 10.0)),  # 1
        metrics.score_moment("v1", 1, (0.0, 5.0), (0.0, 10.0)),  # exactly 0.5: counts for R@0.5
        metrics.score_moment("v2", 2, (0.0, 10.0), (5.0, 15.0)),  # 1/3
        metrics.score_moment("v3", 3, None, (1.0, 2.0)),  # missing
    ]
    summary = metrics.grounding_summary(rows)
    assert summary.scores == {
        "R@0.3": 0.75,
        "R@0.5": 0.5,
        "R@0.7": 0.25,
        "mIoU": pytest.approx((1 + 0.5 + 1 / 3) / 4),
    }
    assert summary.missing == [{"video": "v3", "query": 3}]
    assert summary.num_expressions == 4


# --------------------------------------------------------------------------- image cIoU / gIoU


def test_ciou_and_giou():
    full = np.ones((10, 10), bool)
    gt90 = full.copy()
    gt90[0] = False
    gt6 = np.zeros((3, 3), bool)
    gt6[:2] = True
    rows = [
        metrics.score_image("i1", "0", pixel((4, 4), 1, 1), square4()),  # I 1, U 4
        metrics.score_image("i2", "0", full, gt90),  # I 90, U 100
        metrics.score_image("i3", "0", None, gt6),  # missing: I 0, U 6, IoU 0
        metrics.score_image(
            "i4", "0", np.zeros((2, 2)), np.zeros((2, 2))
        ),  # empty union: IoU 1, adds nothing to cIoU
    ]
    assert [(r.intersection, r.union) for r in rows] == [(1, 4), (90, 100), (0, 6), (0, 0)]
    summary = metrics.image_summary(rows)
    assert summary.scores == {
        "cIoU": pytest.approx(91 / 110),
        "gIoU": pytest.approx((0.25 + 0.9 + 0 + 1) / 4),
    }
    assert summary.missing == [{"image": "i3", "expr_id": "0"}]


def test_image_void_pixels_leave_intersection_and_union_and_kinds_are_subsets():
    """LISA's intersectionAndUnionGPU sets ReasonSeg's ignore pixels (255) aside from both counts."""
    gt = np.zeros((4, 4), dtype=bool)
    gt[:2, :2] = True  # 4 px
    void = np.zeros_like(gt)
    void[2:] = True  # 8 px
    pred = np.zeros_like(gt)
    pred[:, :2] = True  # the target and 4 void px
    row = metrics.score_image("i", "0", pred, gt, void=void, kind="short_query")
    assert (row.intersection, row.union, row.iou) == (4, 4, 1.0)
    assert metrics.score_image("i", "0", pred, gt).iou == 0.5
    missing = metrics.score_image("j", "0", None, gt | void, void=void, kind="long_query")
    assert (missing.intersection, missing.union, missing.iou) == (0, 4, 0.0)
    summary = metrics.image_summary([row, missing])
    assert summary.scores == {"cIoU": 0.5, "gIoU": 0.5}
    assert summary.subsets == {"kind:long_query": {"cIoU": 0.0, "gIoU": 0.0, "num_expressions": 1},
                               "kind:short_query": {"cIoU": 1.0, "gIoU": 1.0, "num_expressions": 1}}
