"""The shipped procedural model (``models/procedural/``, named by ``configs/label/default.yaml``, the embedded
default) segments the object an expression refers to, on procedural videos it never saw (seed 2000; the
training corpora use seeds 1 and 2, the evidence bench 1000, the validation split 500).

Meaningful masks are what these tests check, so a wiring fault a random model hides (the wrong hidden state
taken for ``[SEG]``, a flipped or shifted mask, an anchor on the wrong frame) fails them: every frame of every
static expression is compared with the referred object and with every other annotated object of the video.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actors.config import load_config
from actors.decode import VideoDecoder
from actors.engine import ExpressionQuery, VideoLabeler, resize_frames
from actors.mllm import load_inference_model
from actors.model.sam2_session import Sam2VideoSession
from pipelines import metrics
from pipelines.evaluate import score_refvos_expression
from pipelines.formats import Dataset, VideoRecord, read_dataset
from pipelines.formats.model import Expression
from pipelines.formats.prediction_memory import VideoMasksInMemory
from pipelines.label_config import DEFAULT_LABEL_CONFIG, load_label_config
from pipelines.synthetic_cli import SynthConfig, write_corpus

HELDOUT = ["seed=2000", "num_videos=3", "scene.num_frames=32", "text.per_kind=2", "text.no_target=1",
           "text.moments=1", "prefix=shipped", "output.layouts=[mp4,mevis]"]
# Measured on this split (6 static expressions): the shipped model J 0.66 and the referred object first for 6 of 6
# (with BAP propagation instead: 0.38, 4 of 6; before the tracker refinement stage 0.29, 5 of 6); its SAM2 prompt
# stage alone, the MLLM untrained (the recipe's stage 1 export, procedural-prompts): J 0.28, 2 of 6; random weights:
# 0 of 6 (empty masks)
STATIC_J = 0.5
# SAM2's session seeded with each annotated object's true mask on its first visible frame (11 objects), mean J of the
# later frames: the shipped tracker 0.43 (before its refinement stage, procedural_tracker.yaml: 0.40), masks on the
# seeded object rather than another for 5 of 11 (7 of 11); the untrained family 0.00
TRACK_J = 0.35
TRACK_RIGHT = 0.4
RIGHT_OBJECT = 0.8
# The shipped weights run in bfloat16 (the real configs' dtype) against float32 on this split: mean J change and mean
# per-frame IoU between the two labelings, measured 0.0001 and 0.998 (issue 13)
BFLOAT16_J_CHANGE = 0.02
BFLOAT16_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset]:
    root = tmp_path_factory.mktemp("shipped-heldout")
    write_corpus(load_config(SynthConfig, "configs/synth/default.yaml", HELDOUT), str(root))
    return root, read_dataset("mevis", str(root))


def label_static(heldout: tuple[Path, Dataset], overrides: list[str]) -> dict[str, VideoMasksInMemory]:
    """Every static expression of the split labeled with the default labeling config (and ``overrides``)."""
    root, dataset = heldout
    config, model = load_label_config(DEFAULT_LABEL_CONFIG, overrides)
    network = load_inference_model(model)
    labeler = VideoLabeler(network.mllm, network.sam2, config.engine)
    stores = {}
    for video_id, record in dataset.videos.items():
        queries = [ExpressionQuery(e.expr_id, e.text) for e in static(record)]
        with VideoDecoder(str(root / "videos" / f"{video_id}.mp4"), None, config.decoder_config()) as source:
            labels = labeler.label(source, queries)
        stores[video_id] = VideoMasksInMemory(record, {e.expr_id: e.rles for e in labels.expressions})
    return stores


@pytest.fixture(scope="module")
def labeled(heldout: tuple[Path, Dataset]) -> dict[str, VideoMasksInMemory]:
    """The shipped model's labels."""
    return label_static(heldout, [])


def static(record: VideoRecord) -> list[Expression]:
    return [e for e in record.expressions if e.kind == "static" and e.obj_ids]


def test_default_label_config_is_the_shipped_model() -> None:
    _, model = load_label_config(DEFAULT_LABEL_CONFIG)
    assert Path(model.mllm.backbone).resolve().is_relative_to((Path(__file__).parents[1] / "models").resolve())


def test_static_expressions_are_segmented(heldout: tuple[Path, Dataset],
                                          labeled: dict[str, VideoMasksInMemory]) -> None:
    _, dataset = heldout
    rows = [score_refvos_expression(record, e, labeled[video_id])
            for video_id, record in dataset.videos.items() for e in static(record)]
    assert len(rows) >= 5
    assert np.mean([row["J"] for row in rows]) >= STATIC_J, rows


def test_in_bfloat16_the_real_configs_dtype_it_segments_as_in_float32(heldout: tuple[Path, Dataset],
                                                                     labeled: dict[str, VideoMasksInMemory]) -> None:
    """The real model configs load the backbone in bfloat16 (``mllm.dtype``): the same weights labeled that way
    reach the same static J and the same objects, frame by frame, as in float32."""
    _, dataset = heldout
    half = label_static(heldout, ["model.overrides=[mllm.dtype=bfloat16]"])
    pairs = [(score_refvos_expression(record, e, half[video_id])["J"],
              score_refvos_expression(record, e, labeled[video_id])["J"])
             for video_id, record in dataset.videos.items() for e in static(record)]
    assert np.mean([h for h, _ in pairs]) >= STATIC_J, pairs
    assert abs(np.mean([h - f for h, f in pairs])) <= BFLOAT16_J_CHANGE, pairs
    agreement = [metrics.jaccard_per_frame(
        np.stack([half[v].mask(v, e.expr_id, t) for t in range(len(record.frame_names))]),
        np.stack([labeled[v].mask(v, e.expr_id, t) for t in range(len(record.frame_names))]), None).mean()
        for v, record in dataset.videos.items() for e in static(record)]
    assert np.mean(agreement) >= BFLOAT16_AGREEMENT, agreement


def right_object_rate(dataset: Dataset, stores: dict[str, VideoMasksInMemory]) -> float:
    """The fraction of static expressions whose predicted masks overlap (IoU summed over every frame) the
    referred object more than any other annotated object of the video."""
    outcomes = []
    for video_id, record in dataset.videos.items():
        for expression in static(record):
            overlap = dict.fromkeys(record.tracks, 0.0)
            for frame in range(len(record.frame_names)):
                predicted = stores[video_id].mask(video_id, expression.expr_id, frame)
                for obj_id, track in record.tracks.items():
                    truth = track.frame_mask(frame)
                    if truth is not None and (truth | predicted).any():
                        overlap[obj_id] += (truth & predicted).sum() / (truth | predicted).sum()
            target = max(overlap[o] for o in expression.obj_ids)
            others = [v for o, v in overlap.items() if o not in expression.obj_ids]
            outcomes.append(target > max(others, default=0.0))
    assert len(outcomes) >= 5
    return float(np.mean(outcomes))


def test_masks_cover_the_referred_object_not_another(heldout: tuple[Path, Dataset],
                                                     labeled: dict[str, VideoMasksInMemory]) -> None:
    assert right_object_rate(heldout[1], labeled) >= RIGHT_OBJECT


def test_the_same_network_with_random_weights_does_not(heldout: tuple[Path, Dataset]) -> None:
    """The check above can fail: the untrained model family (``configs/model/procedural.yaml``) misses it."""
    untrained = label_static(heldout, ["model.config=configs/model/procedural.yaml"])
    assert right_object_rate(heldout[1], untrained) < RIGHT_OBJECT


def track_from_truth(heldout: tuple[Path, Dataset], model_config: str | None = None) -> list[tuple[float, bool]]:
    """Per annotated object: SAM2's session (the labeling engine's) seeded with the object's true mask on its first
    visible frame and propagated forward to the end; (mean J of the tracked frames against the object, whether
    they overlap it more than any other object)."""
    root, dataset = heldout
    overrides = [] if model_config is None else [f"model.config={model_config}"]
    config, model = load_label_config(DEFAULT_LABEL_CONFIG, overrides)
    sam2 = load_inference_model(model).sam2
    size = (sam2.image_size, sam2.image_size)
    outcomes = []
    for video_id, record in dataset.videos.items():
        with VideoDecoder(str(root / "videos" / f"{video_id}.mp4"), None, config.decoder_config()) as source:
            frames = resize_frames(source.get(range(source.num_frames)), size)
        truth = {o: np.stack([record.target_mask(Expression(o, o, obj_ids=(o,)), t) for t in range(len(frames))])
                 for o in record.tracks}
        for obj_id, masks in truth.items():
            visible = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
            if visible.size == 0 or visible[0] >= len(frames) - 4:
                continue
            start = int(visible[0])
            session = Sam2VideoSession(sam2, frames, mask_size=(record.height, record.width))
            seed = resize_frames(np.repeat(masks[start, :, :, None].astype(np.uint8) * 255, 3, axis=-1)[None], size)
            session.add_mask(obj_id, start, seed[0, :, :, 0] >= 128)
            predicted = np.stack([(r.mask_logits[0] > 0).numpy() for r in session.propagate(start)][1:])
            later = slice(start + 1, len(frames))
            j = {o: float(np.mean(metrics.jaccard_per_frame(predicted, m[later], None))) for o, m in truth.items()}
            outcomes.append((j[obj_id], j[obj_id] > max((v for o, v in j.items() if o != obj_id), default=0.0)))
    return outcomes


def test_the_tracker_follows_a_seeded_object_through_the_video(heldout: tuple[Path, Dataset]) -> None:
    """What BAP's propagation rests on: from a true mask, SAM2's memory keeps the object (J over the later frames) and
    stays on it rather than on another object; the untrained family's tracker does not."""
    trained = track_from_truth(heldout)
    assert len(trained) >= 6
    assert np.mean([j for j, _ in trained]) >= TRACK_J, trained
    assert np.mean([right for _, right in trained]) >= TRACK_RIGHT, trained
    untrained = track_from_truth(heldout, "configs/model/procedural.yaml")
    assert np.mean([j for j, _ in untrained]) < TRACK_J, untrained
