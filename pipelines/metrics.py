"""Official evaluation metrics: J, F and J&F (DAVIS), the RefVOS protocols, TSG recall/mIoU, cIoU/gIoU, and
the quality of a confidence score (AUROC, expected calibration error).

Pure numpy/scipy functions and small result records; no Ray, no I/O. ``pipelines/evaluate_scoring.py``
scores one expression at a time with ``score_expression`` / ``score_davis_slot`` (and
``score_davis_slot_official``) / ``score_image``, ``pipelines/evaluate.py`` queries with ``score_moment``,
and the rows go to one protocol summary, which returns a ``Summary`` (``Summary.to_dict()`` is the
``report.json`` head: scores as fractions in [0, 1], ``num_expressions``, ``missing``, ``subsets``).

Definitions (Perazzi et al., CVPR 2016; the davis2017-evaluation toolkit):

* J (region similarity): |P ∩ G| / |P ∪ G| of binarised masks (any non-zero pixel is foreground);
  a frame whose union is empty scores 1.
* Void pixels (DAVIS annotations mark uncertain pixels 255; ReasonSeg's "ignore" polygons): left out of
  J's intersection and union, and set to background in both masks before F's boundary maps, as
  davis2017-evaluation's ``db_eval_iou`` / ``f_measure`` and LISA's ``intersectionAndUnionGPU`` do.
* F (contour accuracy): F-measure 2PR / (P + R) of one-pixel boundary maps (``boundary_map``), a
  predicted boundary pixel counting as matched when a true boundary pixel lies within the Euclidean
  disk of radius ``ceil(0.008 * sqrt(H^2 + W^2))`` around it (and vice versa for recall). Empty
  prediction with non-empty truth: P=1, R=0; non-empty prediction with empty truth: P=0, R=1; both
  empty: P=R=1; F=0 when P+R=0. "Dilate one map by the disk and intersect with the other" is
  computed as a nearest-neighbour query within the radius (the same set, without dense dilation).
* Sequence scores: J and F are averaged over the scored frames of an expression, then over
  expressions; J&F = (J + F) / 2.

Protocol choices written down here because the anchors' scripts leave them implicit:

* A missing prediction never removes an expression: it scores J = F = 0 (IoU 0 for grounding and
  images) and is listed in ``Summary.missing``.
* ReVOS: no-target expressions are left out of J/F/J&F and reported in subset ``no_target`` as
  ``empty_fraction``, the fraction of frames whose prediction is empty (1 = correctly predicted
  nothing everywhere; a missing prediction scores 0). The overall J (and F) is the mean of the
  referring (type_id 0) and reasoning (type_id 1) group means; a group without expressions is left
  out of that mean.
* Ref-DAVIS17 four-run protocol: a missing expression contributes an all-zero probability plane (it
  never wins a pixel), and the true object it describes scores J = F = 0 after matching. The true
  objects are those the expressions describe. ``score_davis_slot_official`` scores the same label map
  the way davis2017-evaluation does instead: the true objects are ids 1..(highest id in frame 0),
  whether or not an expression describes them, and a missing expression's object may be matched to
  another expression's label.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from scipy.stats import rankdata

BOUNDARY_FRACTION = 0.008
GROUNDING_THRESHOLDS = (0.3, 0.5, 0.7)
DAVIS_SLOTS = (
    "annotator1-first-frame",
    "annotator1-full-video",
    "annotator2-first-frame",
    "annotator2-full-video",
)
DAVIS_FOREGROUND_THRESHOLD = 0.5
DAVIS_BACKGROUND_SCORE = 0.1
DAVIS_VOID_LABEL = 255
REVOS_TYPES = {0: "referring", 1: "reasoning"}


# --------------------------------------------------------------------------- frame level: J and F


def _mask_stack(masks: np.ndarray | Sequence[np.ndarray], name: str) -> np.ndarray:
    """Binarised (T, H, W) bool stack from an array or a sequence of (H, W) masks."""
    stack = np.asarray(masks)
    if stack.ndim != 3:
        raise ValueError(f"{name} must be (T, H, W) masks, got shape {stack.shape}")
    return stack if stack.dtype == bool else stack != 0


def _paired_stacks(
    pred: np.ndarray | Sequence[np.ndarray], gt: np.ndarray | Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    pred_stack, gt_stack = _mask_stack(pred, "prediction"), _mask_stack(gt, "ground truth")
    if pred_stack.shape != gt_stack.shape:
        raise ValueError(
            f"prediction shape {pred_stack.shape} differs from ground truth shape {gt_stack.shape}"
        )
    return pred_stack, gt_stack


def _valid_pixels(void: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The complement of a void stack of ``shape`` (None when there are no void pixels)."""
    if void is None:
        return None
    stack = np.asarray(void) != 0
    if stack.shape != shape:
        raise ValueError(f"void pixels shape {stack.shape} differs from the masks' shape {shape}")
    return ~stack


def jaccard_per_frame(
    pred: np.ndarray | Sequence[np.ndarray], gt: np.ndarray | Sequence[np.ndarray], void: np.ndarray | None = None
) -> np.ndarray:
    """Per-frame J of (T, H, W) masks -> (T,) float, void pixels left out; frames with an empty union score 1."""
    pred_stack, gt_stack = _paired_stacks(pred, gt)
    intersection, union = pred_stack & gt_stack, pred_stack | gt_stack
    valid = _valid_pixels(void, gt_stack.shape)
    if valid is not None:
        intersection, union = intersection & valid, union & valid
    inter_count = np.count_nonzero(intersection, axis=(1, 2))
    union_count = np.count_nonzero(union, axis=(1, 2))
    return np.where(union_count == 0, 1.0, inter_count / np.maximum(union_count, 1))


def jaccard(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """J of two (H, W) masks: |P ∩ G| / |P ∪ G| after binarising, void pixels left out; 1 when both are empty."""
    return float(jaccard_per_frame(np.asarray(pred)[None], np.asarray(gt)[None],
                                   None if void is None else np.asarray(void)[None])[0])


def boundary_radius(height: int, width: int) -> int:
    """Matching radius in pixels: ceil(0.008 * image diagonal), computed as the DAVIS toolkit does."""
    return math.ceil(BOUNDARY_FRACTION * math.sqrt(height * height + width * width))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary map of a binarised mask (``seg2bmap`` of the DAVIS toolkit), over the last two axes.

    A pixel is boundary when it differs from its east, south or south-east neighbour; pixels of the
    last row are compared with their east neighbour only, pixels of the last column with their south
    neighbour only, and the bottom-right pixel is never boundary.
    """
    seg = np.asarray(mask) != 0
    bmap = np.zeros_like(seg)
    inner = seg[..., :-1, :-1]
    bmap[..., :-1, :-1] = (
        (inner != seg[..., :-1, 1:]) | (inner != seg[..., 1:, :-1]) | (inner != seg[..., 1:, 1:])
    )
    bmap[..., -1, :-1] = seg[..., -1, :-1] != seg[..., -1, 1:]
    bmap[..., :-1, -1] = seg[..., :-1, -1] != seg[..., 1:, -1]
    return bmap


def _boundary_points(stack: np.ndarray) -> np.ndarray:
    """(N, 3) integer (frame, row, col) coordinates of the boundary pixels of every frame of a (T, H, W) stack.

    Boundary pixels lie within one pixel above/left of the foreground's bounding box, so each frame's
    map is computed on that box grown by one pixel on every side; the grown box's last row and column
    are background (or the image's own last row/column), so the crop gives the full-image map exactly.
    """
    height, width = stack.shape[1:]
    rows_any, cols_any = stack.any(axis=2), stack.any(axis=1)
    points = []
    for t in np.flatnonzero(rows_any.any(axis=1)):
        rows, cols = np.flatnonzero(rows_any[t]), np.flatnonzero(cols_any[t])
        y0, y1 = max(rows[0] - 1, 0), min(rows[-1] + 2, height)
        x0, x1 = max(cols[0] - 1, 0), min(cols[-1] + 2, width)
        local = np.argwhere(boundary_map(stack[t, y0:y1, x0:x1]))
        points.append(np.column_stack([np.full(len(local), t), local[:, 0] + y0, local[:, 1] + x0]))
    return np.concatenate(points) if points else np.zeros((0, 3), dtype=np.int64)


def _matched_per_frame(
    source: np.ndarray, target: np.ndarray, radius: int, frame_gap: int, num_frames: int
) -> np.ndarray:
    """Per frame, how many ``source`` boundary pixels have a ``target`` boundary pixel of the same frame within ``radius``.

    Frames are laid ``frame_gap`` (> any in-frame distance + radius) apart along a third axis, so one
    KD-tree query answers all frames. Lattice distances are sqrt of integers, so the next distance
    above ``radius`` exceeds it by more than 1 / (2 * radius + 1); half of that is a safe tolerance.
    """
    if len(source) == 0 or len(target) == 0:
        return np.zeros(num_frames, dtype=np.int64)
    scale = np.array([frame_gap, 1, 1])
    distances, _ = cKDTree(target * scale, balanced_tree=False, compact_nodes=False).query(
        source * scale, distance_upper_bound=radius + 0.5 / (2 * radius + 1)
    )
    return np.bincount(source[np.isfinite(distances), 0], minlength=num_frames)


def _precision_recall(
    pred_points: np.ndarray, gt_points: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame boundary precision and recall from ``_boundary_points`` of a (T, H, W) pair, DAVIS empty-map rules."""
    num_frames, height, width = shape
    radius = boundary_radius(height, width)
    n_pred = np.bincount(pred_points[:, 0], minlength=num_frames)
    n_gt = np.bincount(gt_points[:, 0], minlength=num_frames)
    frame_gap = height + width + 2 * radius
    pred_matched = _matched_per_frame(pred_points, gt_points, radius, frame_gap, num_frames)
    gt_matched = _matched_per_frame(gt_points, pred_points, radius, frame_gap, num_frames)
    precision = np.where(n_pred == 0, 1.0, pred_matched / np.maximum(n_pred, 1))
    recall = np.where(n_gt == 0, 1.0, gt_matched / np.maximum(n_gt, 1))
    precision = np.where((n_pred > 0) & (n_gt == 0), 0.0, precision)
    recall = np.where((n_pred == 0) & (n_gt > 0), 0.0, recall)
    return precision, recall


def _f_measure(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """2PR / (P + R) elementwise, 0 where P + R = 0."""
    total = precision + recall
    return np.where(total == 0, 0.0, 2 * precision * recall / np.where(total == 0, 1.0, total))


def boundary_precision_recall_per_frame(
    pred: np.ndarray | Sequence[np.ndarray], gt: np.ndarray | Sequence[np.ndarray], void: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame boundary precision and recall of (T, H, W) masks, with the DAVIS empty-map conventions;
    void pixels are background in both masks before the boundary maps are drawn."""
    pred_stack, gt_stack = _paired_stacks(pred, gt)
    valid = _valid_pixels(void, gt_stack.shape)
    if valid is not None:
        pred_stack, gt_stack = pred_stack & valid, gt_stack & valid
    return _precision_recall(_boundary_points(pred_stack), _boundary_points(gt_stack), pred_stack.shape)


def boundary_f_per_frame(
    pred: np.ndarray | Sequence[np.ndarray], gt: np.ndarray | Sequence[np.ndarray], void: np.ndarray | None = None
) -> np.ndarray:
    """Per-frame F of (T, H, W) masks -> (T,) float: 2PR / (P + R), 0 when P + R = 0."""
    return _f_measure(*boundary_precision_recall_per_frame(pred, gt, void))


def boundary_f(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """DAVIS boundary F-measure of two (H, W) masks."""
    return float(boundary_f_per_frame(np.asarray(pred)[None], np.asarray(gt)[None],
                                      None if void is None else np.asarray(void)[None])[0])


def expression_scores(
    pred_masks: np.ndarray | Sequence[np.ndarray], gt_masks: np.ndarray | Sequence[np.ndarray],
    void: np.ndarray | None = None,
) -> tuple[float, float]:
    """(J, F) of one expression: per-frame J and F of (T, H, W) masks, each averaged over the T frames."""
    pred_stack, gt_stack = _paired_stacks(pred_masks, gt_masks)
    if pred_stack.shape[0] == 0:
        raise ValueError("cannot score an expression over zero frames")
    return float(jaccard_per_frame(pred_stack, gt_stack, void).mean()), float(
        boundary_f_per_frame(pred_stack, gt_stack, void).mean()
    )


# --------------------------------------------------------------------------- per-expression rows


@dataclass(frozen=True)
class ExpressionResult:
    """One RefVOS expression's sequence scores and the tags the protocols group by.

    ``J``/``F`` are frame means over ``num_frames`` scored frames; ``no_target`` marks an expression
    that refers to nothing in the video; ``empty_fraction`` (no-target expressions only) is the
    fraction of scored frames whose prediction is empty; ``missing`` means no prediction existed.
    """

    video: str
    expr_id: str
    J: float
    F: float
    num_frames: int
    kind: str | None = None
    type_id: int | None = None
    no_target: bool = False
    empty_fraction: float | None = None
    missing: bool = False

    def to_dict(self) -> dict[str, object]:
        """Report row: the fields plus ``J&F``."""
        return {**asdict(self), "J&F": (self.J + self.F) / 2}


def score_expression(
    video: str,
    expr_id: str,
    pred_masks: np.ndarray | Sequence[np.ndarray] | None,
    gt_masks: np.ndarray | Sequence[np.ndarray],
    *,
    frames: Sequence[int] | None = None,
    kind: str | None = None,
    type_id: int | None = None,
    no_target: bool = False,
    void: np.ndarray | None = None,
) -> ExpressionResult:
    """Score one expression over all its frames, or over ``frames`` only (ReasonVOS: the annotated frames).

    ``pred_masks`` is None when the prediction is missing: the row scores J = F = 0 and is flagged.
    ``void`` is the (T, H, W) stack of void pixels beside ``gt_masks`` (Ref-DAVIS17), or None.
    """
    gt_stack = _mask_stack(gt_masks, f"video {video!r}, expression {expr_id!r}: ground truth")
    selected = np.arange(gt_stack.shape[0]) if frames is None else np.asarray(frames, dtype=np.int64)
    if selected.size == 0 or selected.min() < 0 or selected.max() >= gt_stack.shape[0]:
        raise ValueError(
            f"video {video!r}, expression {expr_id!r}: frames to score must be a non-empty subset of "
            f"[0, {gt_stack.shape[0]}), got {selected.tolist()}"
        )
    tags = {"kind": kind, "type_id": type_id, "no_target": no_target, "num_frames": int(selected.size)}
    if pred_masks is None:
        return ExpressionResult(
            video, expr_id, 0.0, 0.0, empty_fraction=0.0 if no_target else None, missing=True, **tags
        )
    pred_stack = _mask_stack(pred_masks, f"video {video!r}, expression {expr_id!r}: prediction")
    if pred_stack.shape != gt_stack.shape:
        raise ValueError(
            f"video {video!r}, expression {expr_id!r}: prediction shape {pred_stack.shape} differs from "
            f"ground truth shape {gt_stack.shape}"
        )
    void_stack = None if void is None else np.asarray(void) != 0
    if frames is not None:
        pred_stack, gt_stack = pred_stack[selected], gt_stack[selected]
        void_stack = None if void_stack is None else void_stack[selected]
    j, f = expression_scores(pred_stack, gt_stack, void_stack)
    empty_fraction = float((~pred_stack.any(axis=(1, 2))).mean()) if no_target else None
    return ExpressionResult(video, expr_id, j, f, empty_fraction=empty_fraction, **tags)


# --------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Summary:
    """Dataset-level result of one protocol.

    ``scores`` holds the headline numbers as fractions in [0, 1] (``J``/``F``/``J&F``, or
    ``R@0.3``/``R@0.5``/``R@0.7``/``mIoU``, or ``cIoU``/``gIoU``); ``missing`` lists the expressions
    (or queries) without a prediction; ``subsets`` maps a subset name to its own numbers.
    """

    scores: dict[str, float]
    num_expressions: int
    missing: list[dict[str, str | int]]
    subsets: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """The ``report.json`` head: scores at top level, then ``num_expressions``, ``missing``, ``subsets``."""
        return {
            **self.scores,
            "num_expressions": self.num_expressions,
            "missing": self.missing,
            "subsets": self.subsets,
        }


def _require_rows(rows: Sequence[object], protocol: str) -> None:
    if not rows:
        raise ValueError(f"{protocol}: no results to summarise")


def _jf(j_values: Iterable[float], f_values: Iterable[float]) -> dict[str, float]:
    j, f = float(np.mean(list(j_values))), float(np.mean(list(f_values)))
    return {"J": j, "F": f, "J&F": (j + f) / 2}


def _expression_jf(rows: Sequence[ExpressionResult]) -> dict[str, float]:
    return _jf((r.J for r in rows), (r.F for r in rows))


def _kind_subsets(rows: Sequence[ExpressionResult]) -> dict[str, dict[str, float]]:
    by_kind: dict[str, list[ExpressionResult]] = defaultdict(list)
    for row in rows:
        if row.kind is not None:
            by_kind[row.kind].append(row)
    return {
        f"kind:{kind}": {**_expression_jf(group), "num_expressions": len(group)}
        for kind, group in sorted(by_kind.items())
    }


def _missing_expressions(rows: Sequence[ExpressionResult]) -> list[dict[str, str | int]]:
    return [{"video": r.video, "expr_id": r.expr_id} for r in rows if r.missing]


def refvos_summary(rows: Sequence[ExpressionResult]) -> Summary:
    """MeViS, Ref-YouTube-VOS, ReasonVOS and Ref-DAVIS17 protocol (a): J, F over expressions, J&F = (J + F) / 2.

    Every expression counts, no-target ones included (their truth is empty, so an empty prediction
    scores 1). The protocols differ only in the frames each expression is scored on (all frames, or
    the annotated ones for ReasonVOS), which ``score_expression(frames=...)`` decides. Subsets: one per
    expression ``kind``.
    """
    _require_rows(rows, "RefVOS summary")
    return Summary(_expression_jf(rows), len(rows), _missing_expressions(rows), _kind_subsets(rows))


def revos_summary(rows: Sequence[ExpressionResult]) -> Summary:
    """ReVOS: referring (type_id 0) and reasoning (type_id 1) group means; overall = mean of the group means.

    No-target expressions are excluded from J/F/J&F and reported as subset ``no_target`` with the mean
    ``empty_fraction`` (see the module docstring). Kind subsets cover the target expressions.
    """
    _require_rows(rows, "ReVOS summary")
    targets = [r for r in rows if not r.no_target]
    groups: dict[str, list[ExpressionResult]] = defaultdict(list)
    for row in targets:
        if row.type_id not in REVOS_TYPES:
            raise ValueError(
                f"ReVOS: video {row.video!r}, expression {row.expr_id!r} has type_id {row.type_id!r}, expected 0 or 1"
            )
        groups[REVOS_TYPES[row.type_id]].append(row)
    subsets = {
        name: {**_expression_jf(group), "num_expressions": len(group)}
        for name, group in sorted(groups.items())
    }
    no_target = [r for r in rows if r.no_target]
    if no_target:
        subsets["no_target"] = {"empty_fraction": no_target_accuracy(no_target), "num_expressions": len(no_target)}
    subsets.update(_kind_subsets(targets))
    if not groups:
        raise ValueError("ReVOS summary: no expression with a target to score")
    scores = _jf((subsets[name]["J"] for name in groups), (subsets[name]["F"] for name in groups))
    return Summary(scores, len(rows), _missing_expressions(rows), subsets)


def no_target_accuracy(rows: Sequence[ExpressionResult]) -> float | None:
    """ReVOS' no-target score: the mean ``empty_fraction`` of the no-target rows (the fraction of frames each
    predicts empty; a missing prediction counts 0), the ``no_target`` subset of ``revos_summary``; None when
    no row is a no-target expression."""
    no_target = [r for r in rows if r.no_target]
    return float(np.mean([r.empty_fraction or 0.0 for r in no_target])) if no_target else None


# --------------------------------------------------------------------------- confidence scores


def _binary_pairs(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                  name: str) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if s.ndim != 1 or s.shape != y.shape or s.size == 0:
        raise ValueError(f"{name} needs equal non-empty (N,) scores and labels, got {s.shape} and {y.shape}")
    if not np.all(np.isfinite(s)) or not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{name} needs finite scores and labels in {{0, 1}}")
    return s, y.astype(bool)


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels``: the probability that a positive scores
    above a negative, ties counted half (the Mann-Whitney U statistic over n_pos x n_neg). Raises
    ``ValueError`` unless both classes are present."""
    s, y = _binary_pairs(scores, labels, "auroc")
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"auroc needs positives and negatives, got {positives} and {negatives}")
    ranks = rankdata(s)  # 1-based, ties share their average rank
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def expected_calibration_error(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                               bins: int = 10) -> float:
    """ECE of predicted ``probabilities`` (in [0, 1]) for binary ``labels``: over ``bins`` equal-width bins
    [i / bins, (i + 1) / bins) (the last one closed at 1), the sum of |fraction of positives - mean
    probability| weighted by each bin's share of the samples; empty bins add nothing (Guo et al., 2017)."""
    p, y = _binary_pairs(probabilities, labels, "expected_calibration_error")
    if bins < 1 or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"expected_calibration_error needs bins >= 1 and probabilities in [0, 1], got {bins} bins "
                         f"and range [{p.min()}, {p.max()}]")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in np.unique(index):
        members = index == b
        total += members.sum() / p.size * abs(float(y[members].mean()) - float(p[members].mean()))
    return float(total)


# --------------------------------------------------------------------------- Ref-DAVIS17 four-run protocol


def davis_label_map(probabilities: Sequence[np.ndarray | None]) -> np.ndarray:
    """One multi-object label map per frame from per-object (T, H, W) foreground probabilities.

    Probabilities below 0.5 are set to 0, a constant 0.1 background plane is put in front, and the
    argmax over [background, object 1, ..., object K] is taken (ties go to the lower index, as argmax
    does). Returns (T, H, W) int32 labels, 0 = background, k = object k. A None entry (missing
    prediction) is an all-zero plane and never wins a pixel.
    """
    shapes = {np.shape(p) for p in probabilities if p is not None}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(
            f"need at least one (T, H, W) probability map and all of one shape, got shapes {sorted(shapes)}"
        )
    shape = shapes.pop()
    best = np.full(shape, DAVIS_BACKGROUND_SCORE, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.int32)
    for label, prob in enumerate(probabilities, start=1):
        if prob is None:
            continue
        prob = np.asarray(prob, dtype=np.float32)
        wins = (prob >= DAVIS_FOREGROUND_THRESHOLD) & (prob > best)
        np.putmask(labels, wins, label)
        np.putmask(best, wins, prob)
    return labels


def davis_unsupervised_scores(
    labels: np.ndarray, gt_objects: np.ndarray | Sequence[np.ndarray], void: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """DAVIS unsupervised scoring of one video: per true object (J, F) over all frames.

    ``labels`` is a (T, H, W) label map (object k = label k); ``gt_objects`` is (N, T, H, W); ``void``
    the (T, H, W) void pixels or None. The predicted objects are labels 1..max(max label, N) (absent
    ones empty, as the toolkit pads), each scored against each true object; predicted objects are
    matched to true ones by the Hungarian method on mean (J + F) / 2. Returns two (N,) arrays ordered
    like ``gt_objects``.
    """
    gt_stack = np.asarray(gt_objects) != 0
    labels = np.asarray(labels)
    if gt_stack.ndim != 4 or labels.shape != gt_stack.shape[1:]:
        raise ValueError(
            f"labels {labels.shape} must be (T, H, W) and truth (N, T, H, W) of the same frames, got {gt_stack.shape}"
        )
    if labels.shape[0] == 0:
        raise ValueError("cannot score a video of zero frames")
    valid = _valid_pixels(void, labels.shape)
    num_pred = max(int(labels.max(initial=0)), gt_stack.shape[0])
    gt_points = [_boundary_points(gt if valid is None else gt & valid) for gt in gt_stack]
    j_matrix = np.zeros((num_pred, gt_stack.shape[0]))
    f_matrix = np.zeros_like(j_matrix)
    for k in range(num_pred):
        pred_stack = labels == k + 1
        pred_points = _boundary_points(pred_stack if valid is None else pred_stack & valid)
        for n, gt in enumerate(gt_stack):
            j_matrix[k, n] = jaccard_per_frame(pred_stack, gt, void).mean()
            f_matrix[k, n] = _f_measure(*_precision_recall(pred_points, gt_points[n], labels.shape)).mean()
    pred_idx, gt_idx = linear_sum_assignment(-(j_matrix + f_matrix) / 2)
    j_scores, f_scores = np.zeros(gt_stack.shape[0]), np.zeros(gt_stack.shape[0])
    j_scores[gt_idx], f_scores[gt_idx] = j_matrix[pred_idx, gt_idx], f_matrix[pred_idx, gt_idx]
    return j_scores, f_scores


@dataclass(frozen=True)
class DavisObjectResult:
    """One true object's scores in one run (``slot`` indexes ``DAVIS_SLOTS``); ``expr_id`` is the slot's expression."""

    video: str
    slot: int
    obj_id: str
    expr_id: str
    J: float
    F: float
    missing: bool = False

    def to_dict(self) -> dict[str, object]:
        """Report row: the fields plus ``J&F``."""
        return {**asdict(self), "J&F": (self.J + self.F) / 2}


def score_davis_slot(
    video: str,
    slot: int,
    obj_ids: Sequence[str],
    expr_ids: Sequence[str],
    probabilities: Sequence[np.ndarray | None],
    gt_objects: np.ndarray | Sequence[np.ndarray],
    void: np.ndarray | None = None,
) -> list[DavisObjectResult]:
    """Score one video in one run of the four-run protocol: label map from the slot's expressions, then DAVIS unsupervised.

    The i-th of ``obj_ids``/``expr_ids``/``probabilities``/``gt_objects`` describe the same object;
    ``probabilities[i]`` is the (T, H, W) foreground probability of the slot's expression for object
    i, or None when missing (that object then scores 0). ``void``: the (T, H, W) void pixels or None.
    """
    counts = {len(obj_ids), len(expr_ids), len(probabilities), len(gt_objects)}
    if len(counts) != 1:
        raise ValueError(
            f"video {video!r}, slot {slot}: objects, expressions, probabilities and truth differ in number"
        )
    if not 0 <= slot < len(DAVIS_SLOTS):
        raise ValueError(f"video {video!r}: slot {slot} outside [0, {len(DAVIS_SLOTS)})")
    if all(p is None for p in probabilities):
        j_scores = f_scores = np.zeros(len(obj_ids))
    else:
        j_scores, f_scores = davis_unsupervised_scores(davis_label_map(probabilities), gt_objects, void)
    return [
        DavisObjectResult(
            video,
            slot,
            obj_id,
            expr_id,
            0.0 if prob is None else float(j),
            0.0 if prob is None else float(f),
            prob is None,
        )
        for obj_id, expr_id, prob, j, f in zip(
            obj_ids, expr_ids, probabilities, j_scores, f_scores, strict=True
        )
    ]


def score_davis_slot_official(
    video: str,
    slot: int,
    obj_ids: Sequence[str],
    expr_ids: Sequence[str],
    probabilities: Sequence[np.ndarray | None],
    annotation: np.ndarray,
) -> list[DavisObjectResult]:
    """One video in one run, scored as davis2017-evaluation's unsupervised task scores ReferFormer's output.

    ``annotation`` is the (T, H, W) palette annotation (object ids, 0 background, 255 void). The true
    objects are ids 1..K, K the highest id of frame 0 (``DAVIS.get_all_masks``): an object that first
    appears later with a higher id is not scored, an object that no expression describes is. The
    label map is the one ``score_davis_slot`` builds from the same ``obj_ids``/``expr_ids``/
    ``probabilities`` (expression i of the slot is label i + 1, as ReferFormer's inference writes it;
    a missing one never wins a pixel), and the Hungarian matching may credit any label to any object.
    Rows carry the object id and the slot's expression for it ("" where none).
    """
    annotation = np.asarray(annotation)
    void = annotation == DAVIS_VOID_LABEL
    first = np.where(void[0], 0, annotation[0])
    objects = list(range(1, int(first.max(initial=0)) + 1))
    if not objects:
        return []
    present = [p for p in probabilities if p is not None]
    labels = davis_label_map(probabilities) if present else np.zeros(annotation.shape, dtype=np.int32)
    truth = np.stack([annotation == k for k in objects])
    j_scores, f_scores = davis_unsupervised_scores(labels, truth, void)
    by_object = dict(zip(obj_ids, expr_ids, strict=True))
    return [
        DavisObjectResult(video, slot, str(k), by_object.get(str(k), ""), float(j), float(f))
        for k, j, f in zip(objects, j_scores, f_scores, strict=True)
    ]


def refdavis_four_run_summary(rows: Sequence[DavisObjectResult]) -> Summary:
    """Ref-DAVIS17 protocol (b): per run, J and F are means over all objects of all videos; report the mean of the four runs.

    Subsets ``run:<slot name>`` hold each run's numbers. Every run must have rows.
    """
    _require_rows(rows, "Ref-DAVIS17 four-run summary")
    runs: dict[int, list[DavisObjectResult]] = defaultdict(list)
    for row in rows:
        runs[row.slot].append(row)
    absent = [DAVIS_SLOTS[s] for s in range(len(DAVIS_SLOTS)) if s not in runs]
    if absent:
        raise ValueError(f"Ref-DAVIS17 four-run summary: no results for runs {absent}")
    subsets = {
        f"run:{DAVIS_SLOTS[slot]}": {
            **_jf((r.J for r in group), (r.F for r in group)),
            "num_objects": len(group),
        }
        for slot, group in sorted(runs.items())
    }
    scores = _jf((s["J"] for s in subsets.values()), (s["F"] for s in subsets.values()))
    missing = [{"video": r.video, "expr_id": r.expr_id} for r in rows if r.missing]
    return Summary(scores, len(rows), missing, subsets)


# --------------------------------------------------------------------------- temporal grounding


def temporal_iou(pred: tuple[float, float], gt: tuple[float, float]) -> float:
    """IoU of two [start, end] intervals (seconds); two identical zero-length intervals score 1."""
    (ps, pe), (gs, ge) = pred, gt
    if ps > pe or gs > ge:
        raise ValueError(f"interval start after end: prediction {pred}, truth {gt}")
    intersection = max(0.0, min(pe, ge) - max(ps, gs))
    union = max(pe, ge) - min(ps, gs)
    if union == 0:
        return 1.0
    return intersection / union


@dataclass(frozen=True)
class GroundingResult:
    """One grounding query's IoU; ``query`` is its line index in the annotation file."""

    video: str
    query: int
    iou: float
    missing: bool = False

    def to_dict(self) -> dict[str, object]:
        """Report row."""
        return asdict(self)


def score_moment(
    video: str, query: int, pred: tuple[float, float] | None, gt: tuple[float, float]
) -> GroundingResult:
    """Score one grounding query; a missing prediction (None) is a failure with IoU 0."""
    if pred is None:
        return GroundingResult(video, query, 0.0, missing=True)
    return GroundingResult(video, query, temporal_iou(pred, gt))


def grounding_summary(rows: Sequence[GroundingResult]) -> Summary:
    """R@1 at IoU >= 0.3 / 0.5 / 0.7 (fraction of queries whose top-1 prediction reaches the threshold) and mIoU."""
    _require_rows(rows, "grounding summary")
    ious = np.array([r.iou for r in rows])
    scores = {f"R@{t}": float(np.mean(ious >= t)) for t in GROUNDING_THRESHOLDS}
    scores["mIoU"] = float(ious.mean())
    missing = [{"video": r.video, "query": r.query} for r in rows if r.missing]
    return Summary(scores, len(rows), missing)


# --------------------------------------------------------------------------- image referring segmentation


@dataclass(frozen=True)
class ImageResult:
    """One image expression: pixel intersection and union with the truth, and its IoU (empty union: 1).

    ``kind`` is a free tag for subsets (ReasonSeg's short and long queries).
    """

    image: str
    expr_id: str
    intersection: int
    union: int
    iou: float
    missing: bool = False
    kind: str | None = None

    def to_dict(self) -> dict[str, object]:
        """Report row."""
        return asdict(self)


def score_image(image: str, expr_id: str, pred: np.ndarray | None, gt: np.ndarray, *,
                void: np.ndarray | None = None, kind: str | None = None) -> ImageResult:
    """Score one image expression: intersection and union of the binarised masks, void pixels left out
    (ReasonSeg's "ignore" regions, as LISA's ``intersectionAndUnionGPU`` drops label 255).

    A missing prediction has intersection 0, union |truth| and IoU 0; an empty union scores IoU 1
    (LISA: ``acc_iou[union == 0] += 1.0``, "no-object target").
    """
    gt_mask = np.asarray(gt) != 0
    if gt_mask.ndim != 2:
        raise ValueError(f"image {image!r}, expression {expr_id!r}: truth must be (H, W), got {gt_mask.shape}")
    valid = _valid_pixels(void, gt_mask.shape)
    if valid is not None:
        gt_mask = gt_mask & valid
    if pred is None:
        return ImageResult(image, expr_id, 0, int(np.count_nonzero(gt_mask)), 0.0, missing=True, kind=kind)
    pred_mask = np.asarray(pred) != 0
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(
            f"image {image!r}, expression {expr_id!r}: prediction {pred_mask.shape} and truth {gt_mask.shape} must be one (H, W)"
        )
    if valid is not None:
        pred_mask = pred_mask & valid
    intersection = int(np.count_nonzero(pred_mask & gt_mask))
    union = int(np.count_nonzero(pred_mask | gt_mask))
    return ImageResult(image, expr_id, intersection, union, 1.0 if union == 0 else intersection / union, kind=kind)


def _image_scores(rows: Sequence[ImageResult]) -> dict[str, float]:
    total_union = sum(r.union for r in rows)
    ciou = 1.0 if total_union == 0 else sum(r.intersection for r in rows) / total_union
    return {"cIoU": ciou, "gIoU": float(np.mean([r.iou for r in rows]))}


def image_summary(rows: Sequence[ImageResult]) -> Summary:
    """cIoU and gIoU over all expressions, and per ``kind`` as subsets ``kind:<kind>``.

    cIoU (cumulative IoU, RefCOCO's "overall IoU") = summed intersection / summed union (1 if every
    union is empty); gIoU = mean of the per-expression IoUs (LISA, CVPR 2024, Sec. 4.1).
    """
    _require_rows(rows, "image summary")
    by_kind: dict[str, list[ImageResult]] = defaultdict(list)
    for row in rows:
        if row.kind is not None:
            by_kind[row.kind].append(row)
    subsets = {f"kind:{kind}": {**_image_scores(group), "num_expressions": len(group)}
               for kind, group in sorted(by_kind.items())}
    missing = [{"image": r.image, "expr_id": r.expr_id} for r in rows if r.missing]
    return Summary(_image_scores(rows), len(rows), missing, subsets)
