"""The training-sample pipeline: planning functions, the catalog's checks, and real samples decoded from a
procedural corpus (real mp4s through decord, real MeViS / Charades-STA files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from train_corpus import tiny_config, write_train_corpus

from actors import rle as rle_codec
from actors.config import ConfigError
from pipelines.formats import Expression, RLETrack, VideoRecord
from pipelines.synthetic import COLOURS
from pipelines.train_config import SampleConfig
from pipelines.train_data import (
    SampleBuilder,
    clip_window_around,
    fitted_size,
    keyframe_window,
    lowres_indices,
    moment_labels,
    present_frames,
    read_catalog,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_train_corpus(tmp_path_factory.mktemp("corpus"))



def test_lowres_indices_are_segment_centres_and_repeat_on_short_videos() -> None:
    assert lowres_indices(16, 4).tolist() == [2, 6, 10, 14]
    assert lowres_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]


def test_keyframe_window_is_consecutive_and_holds_a_present_frame() -> None:
    present = np.zeros(20, dtype=bool)
    present[[3, 4, 17]] = True
    rng = np.random.default_rng(0)
    for _ in range(50):
        window = keyframe_window(present, 4, rng)
        assert np.array_equal(np.diff(window), np.ones(3))
        assert 0 <= window[0] and window[-1] <= 19
        assert present[window].any()
    assert keyframe_window(present[:3] | np.array([True, False, False]), 5, rng).tolist() == [0, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="never present"):
        keyframe_window(np.zeros(5, dtype=bool), 2, rng)


def test_moment_labels_use_frame_centre_times() -> None:
    # fps 2: centres at 0.25, 0.75, 1.25, 1.75, 2.25 s; moment [0.5, 1.5] holds frames 1 and 2
    assert moment_labels(np.arange(5), 2.0, 0.5, 1.5).tolist() == [0, 1, 1, 0, 0]


def test_present_frames_reads_rle_areas_of_every_target_object() -> None:
    empty = rle_codec.encode(np.zeros((4, 4), dtype=bool))
    dot = np.zeros((4, 4), dtype=bool)
    dot[1, 1] = True
    record = VideoRecord("v", ["0", "1", "2", "3"], 4, 4, tracks={
        "a": RLETrack([None, dict(rle_codec.encode(dot)), dict(empty), None], 4, 4),
        "b": RLETrack([None, None, None, dict(rle_codec.encode(dot))], 4, 4),
    })
    assert present_frames(record, Expression("e", "x", ("a", "b"))).tolist() == [False, True, False, True]


def test_catalog_names_missing_locations_and_videos(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sources\.procedural_tsg\.uri: .*nowhere\.txt does not exist"):
        read_catalog(tiny_config(corpus, f"sources.procedural_tsg.uri={tmp_path}/nowhere.txt"))
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "tiny_00000.mp4").write_bytes((corpus / "videos" / "tiny_00000.mp4").read_bytes())
    with pytest.raises(ConfigError, match=r"sources\.procedural_refvos\.videos_uri: 2 videos do not exist.*tiny_00001"):
        read_catalog(tiny_config(corpus, f"sources.procedural_refvos.videos_uri={videos}"))
    catalog = read_catalog(tiny_config(corpus))
    truth = _ground_truth(corpus).values()
    with_target = sum(1 for video in truth for e in video["expressions"] if e["obj_ids"])
    moments = sum(len(video["moments"]) for video in truth)
    every = sum(len(video["expressions"]) for video in truth)
    assert with_target < every
    assert catalog.summary() == {"procedural_refvos": every, "procedural_tsg": moments}
    assert read_catalog(tiny_config(corpus, "sources.procedural_refvos.no_target=false")).summary() == {
        "procedural_refvos": with_target, "procedural_tsg": moments}
    assert catalog.weights.tolist() == [0.5, 0.5]
    # a curriculum stage: the static expressions only
    static = sum(1 for video in truth for e in video["expressions"] if e["obj_ids"] and e["kind"] == "static")
    assert 0 < static < with_target
    assert read_catalog(tiny_config(corpus, "sources.procedural_refvos.kinds=[static]")).summary() == {
        "procedural_refvos": static, "procedural_tsg": moments}
    with pytest.raises(ConfigError, match=r"procedural_refvos: .* holds no expressions of kinds"):
        read_catalog(tiny_config(corpus, "sources.procedural_refvos.kinds=[juggling]"))
    with pytest.raises(ConfigError, match=r"procedural_refvos: .* holds no expressions with target masks of kinds"):
        read_catalog(tiny_config(corpus, "sources.procedural_refvos.kinds=[no_target]", "sources.procedural_refvos.no_target=false"))
    with pytest.raises(ConfigError, match="kinds selects a RefVOS source's expressions"):
        read_catalog(tiny_config(corpus, "sources.procedural_tsg.kinds=[static]"))


def test_fitted_size_keeps_the_aspect_within_the_box_and_never_enlarges() -> None:
    assert fitted_size(240, 320, [64, 64]) == (48, 64)
    assert fitted_size(240, 320, [120, 160]) == (120, 160)
    assert fitted_size(320, 240, [112, 112]) == (112, 84)
    assert fitted_size(48, 64, [112, 112]) == (48, 64)
    assert fitted_size(240, 320, [64, 64], keep_aspect=False) == (64, 64)


def test_samples_keep_the_video_aspect_as_inference_does(corpus: Path, ray_local: None) -> None:
    import ray

    squares = ("data.keyframe_size=[40,40]", "data.lowres_size=[32,32]", "data.clip_size=[40,40]")
    for keep, key, low in ((True, (30, 40), (24, 32)), (False, (40, 40), (32, 32))):
        config = tiny_config(corpus, *squares, f"data.keep_aspect={str(keep).lower()}")
        builder = SampleBuilder([ray.put(read_catalog(config))], config.data, seed=3)
        rows = [builder({"index": i}) for i in range(6)]
        assert {r["task"] for r in rows} == {"refvos", "tsg"}
        for row in rows:
            assert row["lowres"].shape[1:3] == low and row["key_frames"].shape[1:3] == key
            assert row["masks"].shape[1:] == key
        clips = [SampleBuilder([ray.put(read_catalog(config))], config.data, seed=3, objective="sam2_tracking")(
            {"index": 0}) for _ in range(2)]
        assert clips[0]["clip_frames"].shape[1:3] == key and clips[0]["clip_masks"].shape[2:] == key
        # a sample is a function of its index (a resumed tracking run repeats the uninterrupted one)
        assert clips[0].keys() == clips[1].keys()
        for name in clips[0]:
            assert np.array_equal(np.asarray(clips[0][name]), np.asarray(clips[1][name])), name


def _ground_truth(corpus: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (corpus / "ground_truth.jsonl").read_text().splitlines()]
    return {row["video_id"]: row for row in rows}


def test_samples_decode_frames_masks_and_moment_labels(corpus: Path, ray_local: None) -> None:
    import ray

    config = tiny_config(corpus, "data.keyframe_size=[48,64]", "data.lowres_size=[24,32]")
    catalog = read_catalog(config)
    builder = SampleBuilder([ray.put(catalog)], config.data, seed=3)
    truth = _ground_truth(corpus)
    rows = [builder({"index": i}) for i in range(24)]
    assert {r["task"] for r in rows} == {"refvos", "tsg"}
    no_target = 0
    for row in rows:
        assert row["lowres"].shape == (8, 24, 32, 3) and row["key_frames"].shape == (2, 48, 64, 3)
        assert row["lowres"].mean() > 10  # decoded pixels, not the zero placeholder
        if row["task"] == "refvos":
            # key frames at the corpus' native 48x64: the pixels under the mask show the target's colour
            video = truth[row["video_id"]]
            expression = next(e for e in video["expressions"] if e["text"] == row["expression"])
            if not expression["obj_ids"]:  # a no-target expression: empty masks on the frames of its video
                no_target += 1
                assert row["masks"].shape == (2, 48, 64) and not row["masks"].any()
                continue
            targets = [COLOURS[o["colour"]] for o in video["objects"] if o["obj_id"] in expression["obj_ids"]]
            pixels = row["key_frames"][row["masks"] == 1].astype(float)  # (P, 3)
            assert len(pixels) > 0
            palette = np.array(list(COLOURS.values()), dtype=float)
            nearest = palette[np.argmin(((pixels[:, None] - palette[None]) ** 2).sum(-1), axis=1)]
            on_target = np.any([np.all(nearest == t, axis=1) for t in targets], axis=0)
            assert on_target.mean() > 0.8
        else:
            moment = next(m for m in truth[row["video_id"]]["moments"] if m["text"] == row["expression"])
            first, last = moment["frames"]  # the moment spans frames first..last inclusive
            expected = [int(first <= i <= last) for i in lowres_indices(16, 8)]
            assert row["frame_labels"].tolist() == expected
    assert 0 < no_target < len(rows)
    again = SampleBuilder([ray.put(catalog)], config.data, seed=3)({"index": 5})
    assert again["expression"] == rows[5]["expression"] and np.array_equal(again["masks"], rows[5]["masks"])


def test_joint_3b_follows_momentseg_appendix_b2():
    """LoRA r = 128 (alpha 256), effective batch 16, warmup ratio 0.05, 5 video frames, 50 temporal frames,
    and every Table 14 dataset the readers support."""
    from actors.config import load_config
    from actors.model.config import ModelConfig
    from pipelines.train_config import load_train_config

    config = load_train_config("configs/train/joint_3b.yaml", [
        "storage_path=s3://runs", *(f"sources.{n}.uri=s3://d/{n}" for n in ("mevis", "revos", "refytvos",
                                                                          "charades", "activitynet")),
        "sources.charades.videos_uri=s3://d/cv", "sources.activitynet.videos_uri=s3://d/av"])
    lora = load_config(ModelConfig, config.model_config, [*config.model_overrides, "mllm.backbone=/m/qwen",
                                                       "sam2.checkpoint=/m/sam2.pt"]).mllm.lora
    assert (lora.rank, lora.alpha) == (128, 256)
    assert config.samples_per_step() == 16
    assert config.optim.warmup_steps == 0.05 * config.max_steps
    assert (config.data.key_frames, config.data.lowres_frames) == (5, 50)
    assert sorted(s.format for s in config.sources.values()) == [
        "activitynet", "charades-sta", "mevis", "refytvos", "revos"]


def test_clip_prompts_merge_into_the_default_and_one_frame_mask_prompts_are_refused() -> None:
    with pytest.raises(ValueError, match=r"data.clip_prompts must weigh \['mask', 'box', 'points'\]"):
        SampleConfig(clip_prompts={"click": 1.0})
    with pytest.raises(ValueError, match=r"mask prompts weight 0.5 with data.clip_frames 1: .* no gradient"):
        SampleConfig(clip_frames=1, clip_prompts={"mask": 0.5, "box": 0.25, "points": 0.25})
    assert SampleConfig(clip_frames=1, clip_prompts={"mask": 0.0, "points": 1.0}).clip_frames == 1


def test_a_clip_tracks_up_to_clip_objects_objects_visible_on_its_first_frame(corpus: Path, ray_local: None) -> None:
    import ray

    config = tiny_config(corpus, "data.clip_objects=3", "data.clip_frames=3")
    catalog = read_catalog(config)
    builder = SampleBuilder([ray.put(catalog)], config.data, seed=5, objective="sam2_tracking")
    rows = {i: row for i in range(16) if (row := builder({"index": i}))["task"] == "clip"}
    counts = [len(row["clip_masks"]) for row in rows.values()]
    assert len(counts) >= 4 and 1 < max(counts) <= 3, counts
    single = SampleBuilder([ray.put(catalog)], tiny_config(corpus, "data.clip_frames=3").data, seed=5,
                           objective="sam2_tracking")
    for i, row in rows.items():
        masks = row["clip_masks"]
        assert masks.shape[1] == 3 and len(row["prompt"].split(",")) == len(masks)
        assert all(m[0].any() for m in masks)  # every object is visible where its prompt goes
        assert len({m.tobytes() for m in masks}) == len(masks)  # distinct objects
        # the drawn object, its window and prompt are those of a one-object clip of the same index
        alone = single({"index": i})
        assert np.array_equal(masks[:1], alone["clip_masks"]) and row["prompt"].split(",")[0] == alone["prompt"]
        assert np.array_equal(row["clip_frames"], alone["clip_frames"])
    # at a size where small objects vanish, a clip keeps only objects still visible on its first frame
    small = tiny_config(corpus, "data.clip_objects=3", "data.clip_frames=3", "data.clip_size=[9,12]",
                        "data.keep_aspect=false")
    tiny = SampleBuilder([ray.put(catalog)], small.data, seed=5, objective="sam2_tracking")
    clips = [row for i in range(16) if (row := tiny({"index": i}))["task"] == "clip"]
    assert clips and all(m[0].any() for row in clips for m in row["clip_masks"])
    assert sum(len(row["clip_masks"]) for row in clips) < sum(counts)
    with pytest.raises(ValueError, match="data.clip_objects must be >= 1, got 0"):
        tiny_config(corpus, "data.clip_objects=0")


def test_clips_draw_extra_conditioning_frames_without_changing_their_content(corpus: Path, ray_local: None) -> None:
    """With ``clip_cond_frames`` 3, each clip marks 0 to 2 frames after its first as conditioning frames (all
    counts occur); its frames, masks and prompts are those of the one-prompt clip of the same index."""
    import ray

    catalog = ray.put(read_catalog(tiny_config(corpus)))
    cond = SampleBuilder([catalog], tiny_config(corpus, "data.clip_frames=5", "data.clip_cond_frames=3").data,
                         seed=5, objective="sam2_tracking")
    plain = SampleBuilder([catalog], tiny_config(corpus, "data.clip_frames=5").data, seed=5,
                          objective="sam2_tracking")
    counts = []
    for i in range(24):
        row, alone = cond({"index": i}), plain({"index": i})
        if row["task"] != "clip":
            continue
        marks = row["clip_cond"]
        assert marks.shape == (5,) and marks.dtype == np.uint8 and marks[0] == 0 and set(marks.tolist()) <= {0, 1}
        counts.append(int(marks.sum()))
        assert not alone["clip_cond"].any()
        for key in ("clip_frames", "clip_masks"):
            assert np.array_equal(row[key], alone[key]), key
        assert row["prompt"] == alone["prompt"]
    assert set(counts) == {0, 1, 2}, counts
    with pytest.raises(ValueError, match=r"data.clip_cond_frames must be in \[1, data.clip_frames = 5\], got 6"):
        SampleConfig(clip_frames=5, clip_cond_frames=6)
    with pytest.raises(ValueError, match=r"data.clip_cond_frames must be in \[1, data.clip_frames = 8\], got 0"):
        SampleConfig(clip_cond_frames=0)



def test_a_window_around_a_visible_frame_keeps_the_prompt_inside_and_reaches_before_the_object_entered() -> None:
    present = np.zeros(40, dtype=bool)
    present[25:35] = True  # enters at 25, leaves after 34
    rng = np.random.default_rng(0)
    draws = [clip_window_around(present, 8, rng) for _ in range(400)]
    for window, at in draws:
        assert np.array_equal(window, np.arange(window[0], window[0] + 8)) and 0 <= window[0] <= 32
        assert present[window[at]]
    prompts = {int(window[at]) for window, at in draws}
    assert prompts == set(range(25, 35))  # every visible frame gets the prompt
    assert {at for _, at in draws} == set(range(8))  # anywhere in the clip
    assert any(not present[window[0]] for window, _ in draws)  # frames before the object entered, tracked backward
    short, at = clip_window_around(present[:30], 40, rng)  # a video shorter than the clip repeats its last frame
    assert np.array_equal(short, np.minimum(np.arange(40), 29)) and present[short[at]]


def test_clips_prompted_on_any_visible_frame(corpus: Path, ray_local: None) -> None:
    """``clip_prompt_frame: any``: each clip names its prompt frame, where every kept object is visible, and no
    conditioning frame falls on it; ``first`` rows keep the prompt on frame 0."""
    import ray

    catalog = ray.put(read_catalog(tiny_config(corpus)))
    overrides = ("data.clip_frames=6", "data.clip_objects=2", "data.clip_cond_frames=3")
    anywhere = SampleBuilder([catalog], tiny_config(corpus, *overrides, "data.clip_prompt_frame=any").data, seed=5,
                             objective="sam2_tracking")
    first = SampleBuilder([catalog], tiny_config(corpus, *overrides).data, seed=5, objective="sam2_tracking")
    positions = []
    for i in range(24):
        row = anywhere({"index": i})
        if row["task"] != "clip":
            continue
        at = row["clip_prompt_frame"]
        positions.append(at)
        assert all(masks[at].any() for masks in row["clip_masks"]) and row["clip_cond"][at] == 0
        assert first({"index": i})["clip_prompt_frame"] == 0
    assert len(set(positions)) >= 3, positions
    with pytest.raises(ValueError, match=r"data.clip_prompt_frame must be one of \['first', 'any'\], got 'middle'"):
        SampleConfig(clip_prompt_frame="middle")
