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
from actors.engine import ExpressionQuery, VideoLabeler
from actors.mllm import load_inference_model
from pipelines.evaluate import score_refvos_expression
from pipelines.formats import Dataset, VideoRecord, read_dataset
from pipelines.formats.model import Expression
from pipelines.formats.prediction_memory import VideoMasksInMemory
from pipelines.label_config import DEFAULT_LABEL_CONFIG, load_label_config
from pipelines.synthetic_cli import SynthConfig, write_corpus

HELDOUT = ["seed=2000", "num_videos=3", "scene.num_frames=32", "text.per_kind=2", "text.no_target=1",
           "text.moments=1", "prefix=shipped", "output.layouts=[mp4,mevis]"]
# Measured on this split (6 static expressions): the shipped model J 0.66 and the referred object first for 6 of 6
# (with BAP propagation instead: 0.29, 5 of 6); its SAM2 prompt stage alone, the MLLM untrained (the recipe's stage 1
# export, procedural-prompts): J 0.28, 2 of 6; random weights: 0 of 6 (empty masks)
STATIC_J = 0.5
RIGHT_OBJECT = 0.8


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
