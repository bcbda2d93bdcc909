"""The one-video inference engine on real procedural videos (decord) with the real tiny models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from actors import rle as rle_codec
from actors.bap import PropagationConfig
from actors.config import load_config
from actors.decode import DecoderConfig, VideoDecoder
from actors.engine import (
    EngineConfig,
    ExpressionQuery,
    KeyFrames,
    VideoLabeler,
    interpolate_relevance,
    key_frame_union,
    resize_frames,
    sample_expressions,
)
from actors.mask_spool import MaskSpool
from actors.model.checkpoints import build_model
from actors.model.config import ModelConfig
from actors.model.sam2_session import Sam2VideoSession
from actors.sampling import SampleResult, SamplingConfig, make_sampler
from pipelines.synthetic import SceneConfig, generate_video
from pipelines.video_io import write_mp4

TINY_ENGINE = {"lowres_frames": 12, "lowres_side": 56, "keyframe_side": 112, "chunk_size": 8}


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_model(load_config(ModelConfig, "configs/model/tiny.yaml"))


@pytest.fixture(scope="module")
def tda_model():
    return build_model(load_config(ModelConfig, "configs/model/tiny.yaml", ["mllm.tda.enabled=true"]))


def _video(tmp_path_factory: pytest.TempPathFactory, index: int, frames: int, late: float = 0.0):
    scene = SceneConfig(num_frames=frames, height=48, width=64, late_target_fraction=late)
    video = generate_video(f"v{index}", seed=3, index=index, config=scene)
    path = str(tmp_path_factory.mktemp("videos") / f"{video.video_id}.mp4")
    write_mp4(video.simulation.iter_frames(), path, video.fps)
    return video, path


@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    return _video(tmp_path_factory, 0, 20)


def _labeler(model, **changes) -> VideoLabeler:
    sampling = changes.pop("sampling", SamplingConfig(k=4, window=4))
    propagation = changes.pop("propagation", PropagationConfig())
    config = EngineConfig(sampling=sampling, propagation=propagation, **{**TINY_ENGINE, **changes})
    return VideoLabeler(model.mllm, model.sam2, config)


def _queries(video) -> list[ExpressionQuery]:
    return [ExpressionQuery(e.expr_id, e.text) for e in video.expressions]


def _iou(a: dict, b: dict) -> float:
    ma, mb = rle_codec.decode(a), rle_codec.decode(b)
    union = np.logical_or(ma, mb).sum()
    return 1.0 if union == 0 else float(np.logical_and(ma, mb).sum() / union)


def _segment(labeler: VideoLabeler, source: VideoDecoder, samples: list, texts: list[str]) -> tuple[list, list]:
    """The mask stage alone on ``samples``: its outputs and each expression's RLEs (frames ascending)."""
    size = labeler.mask_stage.source_size(source.height, source.width)
    union = key_frame_union(samples)
    decoded = KeyFrames(union, source.get(union, size))
    lowres = source.uniform(8, (56, 56))
    prompts = labeler.prompt_stage.prompts(samples, texts, decoded.resized((112, 112)), lowres, source.num_frames)
    with MaskSpool(len(samples), source.num_frames) as spool:
        masks = labeler.mask_stage.segment(source, samples, prompts, decoded, spool)
        shape = [source.height, source.width]
        rles = [[{"size": shape, "counts": m.counts} for m in spool.rows(e)] for e in range(len(samples))]
    return masks, rles


def test_every_expression_gets_every_frame(model, short_video):
    video, path = short_video
    queries = _queries(video)
    with VideoDecoder(path) as source:
        labels = _labeler(model).label(source, queries)
        delivered = source.counters.delivered.copy()
        codec = source.counters.codec.copy()
    assert [e.expr_id for e in labels.expressions] == [q.expr_id for q in queries]
    assert (labels.num_frames, labels.height, labels.width) == (20, 48, 64)
    for out in labels.expressions:
        assert len(out.rles) == 20
        assert all(r["size"] == [48, 64] for r in out.rles)
        assert out.relevance.shape == (20,) and np.isfinite(out.relevance).all()
        assert out.scores.shape == (20,) and ((out.scores >= 0) & (out.scores <= 1)).all()
        assert out.anchor in out.key_frames and len(out.sampled) == 4
        assert set(out.cleared) <= set(out.key_frames) - {out.anchor}
        assert set(out.reseeds) <= set(out.key_frames) - {out.anchor}
        assert len(out.key_scores) == len(out.key_frames) and all(0 <= s <= 1 for s in out.key_scores)
        # present exactly where the mask is not empty: SAM2's gate empties the masks of absent objects
        assert out.present.tolist() == [rle_codec.area(r) > 0 for r in out.rles]
    # decoded for [FIND] (uniform) and once into the frame store, which serves everything else
    assert codec.max() <= 2 and delivered.max() <= 2
    assert set(labels.timings) == {"decode_lowres", "find", "sample", "decode_keyframes", "seg", "segment"}


def test_frame_store_and_random_access_label_alike(model, short_video):
    """A video too large for the frame store is read by random access and streaming instead: more decoding,
    the same masks."""
    video, path = short_video
    queries = _queries(video)[:3]
    labeler = _labeler(model)
    with VideoDecoder(path) as source:
        stored = labeler.label(source, queries)
        stored_codec = int(source.counters.codec.sum())
    with VideoDecoder(path, config=DecoderConfig(max_store_bytes=1)) as source:
        direct = labeler.label(source, queries)
        direct_codec = int(source.counters.codec.sum())
    assert direct_codec > stored_codec
    for a, b in zip(stored.expressions, direct.expressions, strict=True):
        assert a.rles == b.rles and a.anchor == b.anchor
        np.testing.assert_array_equal(a.scores, b.scores)


def test_batched_equals_per_expression(model, short_video):
    video, path = short_video
    queries = _queries(video)[:4]
    labeler = _labeler(model)
    with VideoDecoder(path) as source:
        together = labeler.label(source, queries)
    for query, batched in zip(queries, together.expressions, strict=True):
        with VideoDecoder(path) as source:
            alone = labeler.label(source, [query]).expressions[0]
        assert alone.sampled == batched.sampled and alone.anchor == batched.anchor
        ious = [_iou(a, b) for a, b in zip(alone.rles, batched.rles, strict=True)]
        assert min(ious) >= 0.999, (query, ious)


def test_objects_with_different_anchors_match_their_single_runs(model, short_video):
    """Two expressions anchored on different frames share one session; each equals its run alone."""
    video, path = short_video
    queries = _queries(video)[:2]
    labeler = _labeler(model)
    curves = np.full((2, video.num_frames), -5.0)
    curves[0, 3:7] = 5.0
    curves[1, 12:16] = 5.0
    samples = sample_expressions(make_sampler(labeler.config.sampling), curves, labeler.config.sampling.k,
                                 video.num_frames)
    assert samples[0].anchor != samples[1].anchor

    def segment(indices: list[int]) -> tuple[list, list]:
        with VideoDecoder(path) as source:
            return _segment(labeler, source, [samples[i] for i in indices], [queries[i].text for i in indices])

    together, together_rles = segment([0, 1])
    for i in (0, 1):
        alone, alone_rles = segment([i])
        assert alone[0].anchor == together[i].anchor
        assert min(_iou(a, b) for a, b in zip(alone_rles[0], together_rles[i], strict=True)) >= 0.999


def test_late_target_anchor_follows_relevance(model, tmp_path_factory):
    """With the relevance curve of a late target (its visible frames), MCS anchors in the second half and
    the mask stage starts propagation there and still labels every frame."""
    video, path = _video(tmp_path_factory, 5, 24, late=1.0)
    late = [e for e in video.expressions if e.obj_ids and e.frames and e.frames[0] >= video.num_frames // 2]
    assert late, "the late-target scene must have an expression whose target enters in the second half"
    expression = late[0]
    curve = np.full(video.num_frames, -5.0)
    curve[expression.frames[0] : expression.frames[1] + 1] = 5.0
    labeler = _labeler(model)
    samples = sample_expressions(make_sampler(labeler.config.sampling), curve[None], labeler.config.sampling.k,
                                 video.num_frames)
    assert samples[0].anchor >= video.num_frames // 2
    with VideoDecoder(path) as source:
        masks, rles = _segment(labeler, source, samples, [expression.text])
    assert masks[0].anchor == samples[0].anchor
    assert len(rles[0]) == video.num_frames


class RecordingSession(Sam2VideoSession):
    """The engine's SAM2 session, recording per pass (one session each) its conditioning frames and clears."""

    passes: list[dict[str, list[int]]] = []

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.record: dict[str, list[int] | int] = {"seeds": [], "clears": 0}
        RecordingSession.passes.append(self.record)

    def add_masks(self, frame_idx, masks) -> None:  # noqa: ANN001
        self.record["seeds"].append(frame_idx)
        super().add_masks(frame_idx, masks)

    def clear(self, obj_id, keep_seeds=True) -> None:  # noqa: ANN001
        assert keep_seeds, "Eq. 8 clears tracked memory and keeps the conditioning frames"
        self.record["clears"] += 1
        super().clear(obj_id, keep_seeds)


# Key frames 2, 6, 10, 15 of a 20-frame video, anchor 10; lambda = 1e6 makes Eq. 8 clear at every key frame
# reached. Per Table 9 row: each pass's conditioning frames (all added before it starts), how many times it
# cleared, and the key frames cleared over the whole video.
TABLE9_PASSES = {
    "forward": ([{"seeds": [2], "clears": 0}], []),
    "anchor_updating": ([{"seeds": [2, 6, 10, 15], "clears": 0}], []),
    "memory_cleaning": ([{"seeds": [2, 6, 10, 15], "clears": 3}], [6, 10, 15]),
    "bap": ([{"seeds": [10, 15], "clears": 1}, {"seeds": [2, 6, 10], "clears": 2}], [2, 6, 15]),
    "keyframe": ([{"seeds": [10], "clears": 0}, {"seeds": [10], "clears": 0}], []),
}

# The key frames each mode's passes fed the key-frame mask in at, besides their start (anchor updating).
TABLE9_RESEEDS = {"forward": [], "anchor_updating": [6, 10, 15], "memory_cleaning": [6, 10, 15], "bap": [2, 6, 15],
                  "keyframe": []}


@pytest.mark.parametrize("mode", list(TABLE9_PASSES))
def test_sam2_conditioning_frames_and_clearing_per_table9_row(model, short_video, monkeypatch, mode):
    video, path = short_video
    monkeypatch.setattr("actors.engine.Sam2VideoSession", RecordingSession)
    monkeypatch.setattr(RecordingSession, "passes", [])
    labeler = _labeler(model, propagation=PropagationConfig(mode=mode, lam=1e6))
    sample = SampleResult(np.array([2, 6, 10, 15]), anchor=10)
    with VideoDecoder(path) as source:
        masks, rles = _segment(labeler, source, [sample], [video.expressions[0].text])
    passes, cleared = TABLE9_PASSES[mode]
    assert RecordingSession.passes == passes
    assert masks[0].cleared == cleared
    assert masks[0].reseeds == TABLE9_RESEEDS[mode]
    # the mask tracking gave on each re-seeded frame before its key-frame mask replaced it, at the video's size
    assert len(masks[0].pre_update) == len(masks[0].reseeds)
    assert all(rle_codec.decode(r, (source.height, source.width)).shape == (source.height, source.width)
               for r in masks[0].pre_update)
    assert len(masks[0].key_scores) == 4
    assert masks[0].anchor == (10 if mode in ("bap", "keyframe") else 2)
    assert len(rles[0]) == video.num_frames
    if mode in ("forward", "anchor_updating", "memory_cleaning"):  # nothing before a one-way pass's start
        assert all(not rle_codec.decode(r).any() for r in rles[0][:2])


def test_bap_threshold_controls_clearing(model, short_video):
    """lambda = 0 never clears (P >= 0 always); a huge lambda clears at every key frame reached."""
    video, path = short_video
    queries = _queries(video)[:2]
    with VideoDecoder(path) as source:
        never = _labeler(model, propagation=PropagationConfig(lam=0.0)).label(source, queries)
    with VideoDecoder(path) as source:
        always = _labeler(model, propagation=PropagationConfig(lam=1e6)).label(source, queries)
    for n, a in zip(never.expressions, always.expressions, strict=True):
        assert n.cleared == []
        assert a.cleared == sorted(set(a.key_frames) - {a.anchor})


def test_tks_picks_anchor_among_candidates(tda_model, short_video):
    video, path = short_video
    labeler = _labeler(tda_model, sampling=SamplingConfig(method="tks", k=4))
    with VideoDecoder(path) as source:
        labels = labeler.label(source, _queries(video)[:2])
    for out in labels.expressions:
        assert out.anchor in out.key_frames and len(out.rles) == 20


def test_one_token_seg_all_decodes_every_frame_from_the_prompt_without_propagation(model, short_video,
                                                                                  monkeypatch):
    """VideoLISA OTSA: no SAM2 session is opened; every frame's mask and score are the expression's one
    prompt decoded on that frame alone, without memory."""
    import actors.engine as engine_module

    def no_session(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("OTSA must not propagate")

    monkeypatch.setattr(engine_module, "Sam2VideoSession", no_session)
    labeler = _labeler(model, propagation=PropagationConfig(mode="one_token_seg_all"))
    captured = []
    prompts_of = labeler.prompt_stage.prompts
    monkeypatch.setattr(labeler.prompt_stage, "prompts", lambda *a, **k: captured.extend(prompts_of(*a, **k)) or captured)
    video, path = short_video
    with VideoDecoder(path) as source:
        labels = labeler.label(source, _queries(video)[:2])
        frames = source.get(np.arange(20), labeler.mask_stage.source_size(source.height, source.width))
    sam2 = labeler.mask_stage.sam2
    frames = resize_frames(frames, labeler.mask_stage.frame_size)
    for e, out in enumerate(labels.expressions):
        assert out.cleared == [] and out.anchor == out.key_frames[0]
        with torch.inference_mode():
            expected = sam2.decode_masks(frames, captured[e].prompts.expand(20, -1))
        np.testing.assert_allclose(out.scores, torch.sigmoid(expected.object_score_logits).numpy(), rtol=1e-4)
        assert out.key_scores == [float(out.scores[f]) for f in out.key_frames]
        logits = torch.nn.functional.interpolate(expected.mask_logits[:, None], size=(48, 64), mode="bilinear",
                                                 align_corners=False)[:, 0]
        for frame in (3, 11, 17):
            assert np.array_equal(rle_codec.decode(out.rles[frame]), (logits[frame] > 0).numpy())
        visible = (expected.object_score_logits > 0).numpy()
        non_empty = np.array([rle_codec.area(r) > 0 for r in out.rles])
        np.testing.assert_array_equal(out.present, visible & non_empty)
        assert not non_empty[~visible].any()  # absent: empty


def test_tks_requires_tda(model):
    with pytest.raises(ValueError, match="tda"):
        _labeler(model, sampling=SamplingConfig(method="tks", k=4))


def test_reprompt_feeds_the_first_mask_back(model, short_video):
    """The anchor's score is its key-frame confidence S^p: re-prompting with the first mask changes it."""
    video, path = short_video
    queries = _queries(video)[:1]
    with VideoDecoder(path) as source:
        plain = _labeler(model).label(source, queries).expressions[0]
    with VideoDecoder(path) as source:
        again = _labeler(model, reprompt=True).label(source, queries).expressions[0]
    assert plain.sampled == again.sampled and plain.anchor == again.anchor
    assert plain.scores[plain.anchor] != again.scores[again.anchor]


def test_decoupled_prompts_are_fused(short_video):
    decoupled = build_model(load_config(ModelConfig, "configs/model/tiny.yaml", ["mllm.decouple.enabled=true"]))
    video, path = short_video
    with VideoDecoder(path) as source:
        labels = _labeler(decoupled).label(source, _queries(video)[:2])
    assert all(len(out.rles) == 20 for out in labels.expressions)


def test_temporal_tokens_are_omitted_by_default_and_have_their_own_budget(model, short_video, monkeypatch):
    """MomentSeg omits the temporal tokens at inference (Table 10); turned on, the [SEG] pass reads
    ``temporal_frames`` of the [FIND] frames at ``temporal_side``, at their own frame rate."""
    video, path = short_video
    contexts: list[tuple] = []
    seg_prompts = model.mllm.seg_prompts

    def spy(key_frames, expressions, lowres_video=None, fps=None):  # noqa: ANN001, ANN202
        contexts.append((None if lowres_video is None else lowres_video.shape, fps))
        return seg_prompts(key_frames, expressions, lowres_video=lowres_video, fps=fps)

    monkeypatch.setattr(model.mllm, "seg_prompts", spy)
    queries = _queries(video)[:1]
    with VideoDecoder(path) as source:
        _labeler(model).label(source, queries)
        fps = source.fps
    assert contexts == [(None, None)]
    with VideoDecoder(path) as source:
        _labeler(model, temporal_tokens=True, temporal_frames=4, temporal_side=28).label(source, queries)
    assert contexts[1] == ((4, 21, 28, 3), fps * 4 / 20)  # 4 of the 12 [FIND] frames (42 x 56) at 28 px


def test_frame_sides_beyond_the_models_tokens_per_frame_are_refused(model):
    # the tiny model allows 4 tokens per video frame: 2 x 2 merged 28-px patches
    with pytest.raises(ValueError, match=r"lowres_side=112 makes 16 tokens per frame .*video_tokens_per_frame=4"):
        _labeler(model, lowres_side=112)
    with pytest.raises(ValueError, match="engine.temporal_side=112 makes 16 tokens"):
        _labeler(model, temporal_tokens=True)
    _labeler(model, temporal_side=112)  # temporal tokens off: their side does not matter


def test_the_real_config_runs_momentseg_inference_inputs():
    """App. B.2 / Table 10 in configs/label/qwen2_5vl-3b_sam2.1-l.yaml: 100 [FIND] frames at 64 tokens, 8 key
    frames at 256, temporal tokens off (50 at 16 when on), MCS w = 5 and sigma = 1 [FIND] frames, theta 0.4;
    the model's 64-token cap survives a command line replacing ``model.overrides``."""
    from pipelines.label_config import load_label_config

    config, model_config = load_label_config("configs/label/qwen2_5vl-3b_sam2.1-l.yaml",
                                             ["model.overrides=[mllm.backbone=/m/qwen,sam2.checkpoint=/m/sam2.pt]"])
    engine, tokens = config.engine, lambda side: round(side / 28) ** 2
    assert (engine.lowres_frames, tokens(engine.lowres_side), model_config.mllm.video_tokens_per_frame) == (100, 64, 64)
    assert (engine.sampling.k, tokens(engine.keyframe_side), model_config.mllm.image_max_tokens) == (8, 256, 256)
    assert (engine.temporal_tokens, engine.temporal_frames, tokens(engine.temporal_side)) == (False, 50, 16)
    assert (engine.sampling.method, engine.sampling.window, engine.sampling.sigma) == ("mcs", 5, 1.0)
    assert (engine.find_threshold, engine.propagation.mode, engine.propagation.lam) == (0.4, "bap", 0.9)
    assert model_config.mllm.backbone == "/m/qwen"


def test_the_vrs_hq_config_runs_vrs_hq_as_published():
    """<SEG> x N + <TAK> fused with alpha = 0.1, TKS over K = 12 candidates, propagation from the keyframe."""
    from pipelines.label_config import load_label_config

    config, model_config = load_label_config("configs/label/vrs-hq_qwen2_5vl-3b_sam2.1-l.yaml",
                                             ["model.overrides=[mllm.backbone=/m/qwen,sam2.checkpoint=/m/sam2.pt]"])
    assert (model_config.mllm.tda.enabled, model_config.mllm.tda.alpha) == (True, 0.1)
    assert (config.engine.sampling.method, config.engine.sampling.k) == ("tks", 12)
    assert config.engine.propagation.mode == "keyframe"


def test_the_videolisa_config_runs_sparse_dense_and_one_token_seg_all():
    from pipelines.label_config import load_label_config

    config, model_config = load_label_config("configs/label/videolisa_qwen2_5vl-3b_sam2.1-l.yaml",
                                             ["model.overrides=[mllm.backbone=/m/qwen,sam2.checkpoint=/m/sam2.pt]"])
    assert model_config.mllm.video_token_pooling == "mean"
    sampling = config.engine.sampling
    assert (sampling.method, sampling.k, sampling.dense) == ("sparse_dense", 32, 4)
    assert config.engine.propagation.mode == "one_token_seg_all"


def test_interpolate_relevance_is_linear_between_samples():
    curve = interpolate_relevance(np.array([[0.0, 4.0]]), np.array([2, 6]), 9)
    np.testing.assert_allclose(curve[0], [0, 0, 0, 1, 2, 3, 4, 4, 4])


def test_engine_config_rejects_bad_values():
    with pytest.raises(ValueError, match="chunk_size"):
        dataclasses.replace(EngineConfig(), chunk_size=0)
