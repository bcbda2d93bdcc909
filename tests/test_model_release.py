"""The model card's scores section, from ``benches/evidence.py``'s RESULT."""

from __future__ import annotations

from pipelines.model_release import scores_section

EVALUATION = {
    "ratio": 1.25,
    "split": {"seed": 1000, "videos": 32, "frames": 64, "expressions": 279},
    "main": {"setting": ["mcs", "one_token_seg_all"],
             "refvos": {"J&F": 0.5, "J": 0.45, "F": 0.55, "kinds": {"static": {"J&F": 0.7}, "motion": {"J&F": 0.3}}},
             "tsg": {"R@0.3": 0.6, "R@0.5": 0.4, "R@0.7": 0.2, "mIoU": 0.35, "num_queries": 94}},
    "baseline": ["uniform", "anchor_updating"],
    "baseline J&F": 0.4,
    "samplers": {"mcs": 0.5, "firstk": 0.25, "topk": None},
    "modes": [{"row": "forward (mcs)", "J&F": 0.2}, {"row": "bap (mcs)", "J&F": 0.3}],
}


def test_scores_name_the_headline_figures() -> None:
    card = scores_section(EVALUATION)
    assert "seed 1000, 32 videos of 64 frames, 279 expressions; setting mcs + one_token_seg_all" in card
    assert "RefVOS J&F 0.500 (J 0.450, F 0.550); per kind: motion 0.300, static 0.700" in card
    assert "R@0.5 0.400" in card and "mIoU 0.350 over 94 queries" in card
    assert "(J&F): mcs 0.500, firstk 0.250\n" in card  # a sampler without expressions is left out
    assert "forward (mcs) 0.200, bap (mcs) 0.300" in card
    assert "uniform + anchor_updating, J&F 0.400): ratio 1.25" in card
    assert "does not ground" not in card


def test_scores_warn_when_find_does_not_ground() -> None:
    evaluation = {**EVALUATION, "main": {**EVALUATION["main"], "tsg": {**EVALUATION["main"]["tsg"], "R@0.5": 0.0}}}
    assert "`[FIND]` does not ground queries yet (R@0.5 0.000)" in scores_section(evaluation)


def test_scores_before_the_evaluation_say_so() -> None:
    assert scores_section(None).startswith("not measured yet")
