"""AUROC, expected calibration error and ReVOS' no-target score (``pipelines.metrics``) on hand-computed examples."""

from __future__ import annotations

import pytest

from pipelines import metrics
from pipelines.metrics import ExpressionResult, auroc, expected_calibration_error, no_target_accuracy


def test_auroc_counts_ordered_pairs_and_half_the_ties() -> None:
    # positives {0.35, 0.8}, negatives {0.1, 0.4}: 0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4; 0.35 < 0.4 -> 3 of 4 pairs
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # positives {0.5, 0.9}, negatives {0.5, 0.2}: one tie (half), three wins -> 3.5 / 4
    assert auroc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == 0.875
    assert auroc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert auroc([0.9, 0.8, 0.1], [0, 0, 1]) == 0.0
    assert auroc([0.3, 0.3, 0.3, 0.3], [1, 0, 1, 0]) == 0.5  # a constant score tells nothing
    with pytest.raises(ValueError, match="auroc needs positives and negatives, got 2 and 0"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="equal non-empty"):
        auroc([0.1, 0.2], [1])


def test_ece_weights_each_bins_gap_by_its_share() -> None:
    # bins of width 0.1: 0.1 -> bin 1 (label 0): |0 - 0.1| / 5; 0.35 -> bin 3 (label 1): |1 - 0.35| / 5;
    # 0.4 -> bin 4 (label 0): |0 - 0.4| / 5; 0.8 -> bin 8 (label 1): |1 - 0.8| / 5; 1.0 -> the last bin: 0
    assert expected_calibration_error([0.1, 0.4, 0.35, 0.8, 1.0], [0, 0, 1, 1, 1]) == pytest.approx(
        (0.1 + 0.65 + 0.4 + 0.2 + 0.0) / 5)
    # two samples sharing bin 7 (0.72, 0.78: mean 0.75, one positive of two: |0.5 - 0.75|) and one in bin 2
    assert expected_calibration_error([0.72, 0.78, 0.25], [1, 0, 0]) == pytest.approx(2 / 3 * 0.25 + 1 / 3 * 0.25)
    # perfectly calibrated: half the 0.5s are right
    assert expected_calibration_error([0.5] * 4, [1, 0, 1, 0]) == 0.0
    assert expected_calibration_error([0.25, 0.75], [0, 1], bins=1) == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        expected_calibration_error([1.2], [1])


def test_no_target_accuracy_is_revos_no_target_subset() -> None:
    rows = [ExpressionResult("v", "a", 0.5, 0.5, 4, no_target=True, empty_fraction=1.0, type_id=0),
            ExpressionResult("v", "b", 0.5, 0.5, 4, no_target=True, empty_fraction=0.25, type_id=0),
            ExpressionResult("v", "c", 0.0, 0.0, 4, no_target=True, empty_fraction=0.0, missing=True, type_id=0),
            ExpressionResult("v", "d", 0.8, 0.6, 4, type_id=0)]
    assert no_target_accuracy(rows) == pytest.approx((1.0 + 0.25 + 0.0) / 3)
    assert metrics.revos_summary(rows).subsets["no_target"]["empty_fraction"] == no_target_accuracy(rows)
    assert no_target_accuracy(rows[3:]) is None
