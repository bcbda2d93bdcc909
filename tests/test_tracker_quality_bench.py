"""``benches/tracker_quality.py`` without a trained model: its held-out clips and its every-object baseline."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
tracker_quality = importlib.import_module("tracker_quality")


def test_held_out_clips_prompt_visible_objects_and_their_union_holds_every_object() -> None:
    clips = tracker_quality.held_out_clips("configs/synth/tiny.yaml", seed=500, videos=2, frames=4, start=2,
                                           min_area=20)
    assert len(clips) >= 2
    for clip, union in clips:
        assert clip.prompt == "mask" and clip.masks.shape == union.shape and clip.masks.shape[0] == 4
        assert clip.masks[0].sum() > 20
        assert not (clip.masks.astype(bool) & ~union).any()  # every object lies inside the union
    # objects of one video share its frames and its union; some object is smaller than the union
    assert any(np.array_equal(a[1], b[1]) and a[0].frames is b[0].frames for a, b in zip(clips, clips[1:], strict=False))
    assert any(clip.masks.sum() < union.sum() for clip, union in clips)
    with pytest.raises(ValueError, match=r"no object over 1000000 px on frame 2 of 2 videos of configs/synth/tiny"):
        tracker_quality.held_out_clips("configs/synth/tiny.yaml", seed=500, videos=2, frames=4, start=2,
                                       min_area=1_000_000)
