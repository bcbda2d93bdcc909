"""The number a benchmark's own scorer would print, beside vrseg's, wherever the two count differently.

vrseg's rules stay (``pipelines.metrics``); where the official script, run on the same inputs, would
print another number, the report carries that number (``official_convention``: the scores,
``differs``, and ``because``: one sentence per reason that applies):

* Ref-DAVIS17, four-run protocol (davis2017-evaluation's unsupervised task over ReferFormer's merged
  runs): the true objects are ids 1..K of frame 0's annotation, so an object that first appears later
  with a higher id is not scored and an object without an expression is; a missing expression's
  object can be matched to another expression's label instead of scoring 0.
* ReasonVOS (VideoLISA's ``eval_reason_vos.py``): an expression without a prediction folder is left
  out of the mean ("not take into metric computation") instead of scoring 0.

The other formats' scorers agree with vrseg wherever they produce a number (README, "Checked against
the official scorers").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipelines import metrics

_TOLERANCE = 1e-12
_EXAMPLES = 3


def _block(official: metrics.Summary, vrseg: Mapping[str, float], because: list[str], count_key: str) -> dict[str, Any]:
    differs = any(abs(official.scores[k] - vrseg[k]) > _TOLERANCE for k in ("J", "F"))
    return {**official.scores, count_key: official.num_expressions, "differs": differs, "because": because}


def _named(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_EXAMPLES])
    return shown + (", ..." if len(items) > _EXAMPLES else "")


def four_run(official_rows: Sequence[metrics.DavisObjectResult], vrseg: Mapping[str, float],
             dropped: Sequence[str], unexpressed: Sequence[str], missing: int) -> dict[str, Any] | None:
    """The four-run protocol as davis2017-evaluation scores it; None when no video has an object in frame 0.

    ``dropped`` / ``unexpressed`` name objects as ``video:id``; ``missing`` counts expressions
    without a prediction.
    """
    if not official_rows:
        return None
    because = []
    if dropped:
        because.append(f"{len(dropped)} object(s) first appear after frame 0 with an id above frame 0's highest "
                       f"({_named(dropped)}): davis2017-evaluation does not score them, vrseg does")
    if unexpressed:
        because.append(f"{len(unexpressed)} object(s) of frame 0 have no expression ({_named(unexpressed)}): "
                       "davis2017-evaluation scores them, vrseg leaves them out")
    if missing:
        because.append(f"{missing} expression(s) have no prediction: vrseg scores their objects 0, "
                       "davis2017-evaluation's matching may credit another expression's mask to them")
    return _block(metrics.refdavis_four_run_summary(official_rows), vrseg, because, "num_objects")


def reasonvos(results: Sequence[metrics.ExpressionResult], vrseg: Mapping[str, float]) -> dict[str, Any] | None:
    """ReasonVOS as VideoLISA's script scores it (missing expressions left out); None when none is missing."""
    present = [r for r in results if not r.missing]
    if len(present) == len(results) or not present:
        return None
    because = [f"{len(results) - len(present)} expression(s) have no prediction: VideoLISA's eval_reason_vos.py "
               "leaves them out of its mean, vrseg scores them 0"]
    return _block(metrics.refvos_summary(present), vrseg, because, "num_expressions")
