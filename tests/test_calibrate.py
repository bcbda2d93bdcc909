"""``vrseg calibrate``: a labeling output scored against its ground truth -> a fitted track calibration that
``vrseg label`` accepts; the no-target rule; bad inputs named."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from label_outputs import write_video

from actors import rle as rle_codec
from actors.config import load_config
from actors.track_calibration import TrackCalibration
from actors.track_confidence import FEATURE_NAMES
from pipelines.cli import main as vrseg
from pipelines.formats import Dataset, read_dataset
from pipelines.storage import OutputStore
from pipelines.synthetic_cli import SynthConfig, write_corpus

SYNTH = ["num_videos=3", "text.per_kind=1", "text.no_target=1", "output.layouts=[mp4,mevis,manifest]"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 tiny procedural videos (16 frames, 48x64): mp4s, MeViS annotations and a labeling manifest."""
    root = tmp_path_factory.mktemp("calibration-corpus")
    write_corpus(load_config(SynthConfig, "configs/synth/tiny.yaml", SYNTH), str(root))
    return root


def _junk(frames: int, height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    masks = np.zeros((frames, height, width), dtype=bool)
    top, left, bottom, right = box
    masks[:, top:bottom, left:right] = True
    return masks


def label_like_a_model(dataset: Dataset, output: str, perfect: bool = False) -> dict[tuple[str, str], str]:
    """A labeling output of ``dataset``'s videos: every other target expression gets its true masks with
    scores 0.9 ("good"), the others a wrong 20x20 box on every frame with scores 0.6 ("bad"), the no-target
    expressions a 3x3 box on every frame with scores 0.2; ``perfect``: every expression its truth. Returns
    what each (video, expression) got."""
    given = {}
    for record in dataset.videos.values():
        expressions, scores = {}, {}
        for index, expression in enumerate(record.expressions):
            frames, height, width = record.num_frames, record.height, record.width
            truth = np.stack([record.target_mask(expression, f) for f in range(frames)])
            if perfect or (expression.obj_ids and index % 2 == 0):
                kind = "good"
            else:
                kind = "bad" if expression.obj_ids else "no_target"
            masks = {"good": truth, "bad": _junk(frames, height, width, (0, 0, 20, 20)) & ~truth,
                     "no_target": _junk(frames, height, width, (40, 60, 43, 63))}[kind]
            expressions[expression.expr_id] = (expression.text, masks)
            scores[expression.expr_id] = [{"good": 0.9, "bad": 0.6, "no_target": 0.2}[kind]] * frames
            given[(record.video_id, expression.expr_id)] = kind
        write_video(output, record.video_id, record.frame_names, expressions, scores=scores)
    return given


def test_calibrate_fits_confidence_and_a_no_target_rule(corpus: Path, tmp_path: Path) -> None:
    dataset = read_dataset("mevis", str(corpus))
    labels = str(tmp_path / "labels")
    given = label_like_a_model(dataset, labels)
    out = tmp_path / "calibration" / "tracks.json"
    status = vrseg(["calibrate", "--labels", labels, "--annotations", str(corpus), "--format", "mevis",
                    "--out", str(out)])
    assert status == 0
    saved = json.loads(out.read_text())
    assert (saved["format"], saved["version"], saved["features"]) == ("vrseg.track_calibration", 2,
                                                                      list(FEATURE_NAMES))
    counts = {kind: sum(k == kind for k in given.values()) for kind in ("good", "bad", "no_target")}
    assert saved["fit"]["labels"] == labels and saved["fit"]["annotations"] == str(corpus)
    assert (saved["fit"]["format"], saved["fit"]["videos"], saved["fit"]["tracks"]) == ("mevis", 3, len(given))
    assert saved["fit"]["positives"] == counts["good"] and saved["fit"]["label"] == "J&F >= 0.5"
    rule = saved["no_target"]
    assert rule["fit"]["positives"] == counts["no_target"] and rule["fit"]["label"] == "the expression has no target"
    # the fitted threshold decides exactly the no-target expressions: each gains J&F 1 - 0, no target loses any
    assert (rule["fit"]["decided"], rule["fit"]["decided_with_target"]) == (counts["no_target"], 0)
    assert rule["fit"]["target_jf_change"] == 0.0 and 0.0 < rule["threshold"] < 1.0

    calibration = TrackCalibration.load(str(out))
    store = OutputStore(labels)
    for video_id, record in store.committed().items():
        path = next(f.path for f in record.files if f.path.startswith("tracks/"))
        for row in pq.read_table(io.BytesIO(store.read_bytes(path))).to_pylist():
            kind = given[(video_id, row["expr_id"])]
            confidence, no_target = calibration.assess(np.array(row["features"]), row["no_target"])
            assert no_target == (kind == "no_target")
            assert (confidence > 0.5) == (kind in ("good", "no_target")), (video_id, row["expr_id"], kind)


def test_calibrate_reads_and_writes_object_storage(corpus: Path, tmp_path: Path, s3) -> None:  # noqa: ANN001
    fs = s3.filesystem()
    labels = str(tmp_path / "labels")
    label_like_a_model(read_dataset("mevis", str(corpus)), labels)
    fs.put(labels + "/", s3.uri("labels").removeprefix("s3://") + "/", recursive=True)
    fs.put(str(corpus) + "/", s3.uri("mevis").removeprefix("s3://") + "/", recursive=True)
    out = s3.uri("calibrations", "tracks.json")
    assert vrseg(["calibrate", "--labels", s3.uri("labels"), "--annotations", s3.uri("mevis"), "--format", "mevis",
                  "--out", out]) == 0
    loaded = TrackCalibration.load(out, s3.storage_options)
    assert loaded.no_target is not None and loaded.fit_info["labels"] == s3.uri("labels")
    local = tmp_path / "local.json"
    assert vrseg(["calibrate", "--labels", labels, "--annotations", str(corpus), "--format", "mevis",
                  "--out", str(local)]) == 0
    assert (loaded.weights, loaded.no_target.threshold) == (TrackCalibration.load(str(local)).weights,
                                                            TrackCalibration.load(str(local)).no_target.threshold)


def _drop_tracks_from_markers(output: Path) -> None:
    """Commit every video again without its tracks file (as outputs labeled before tracks/ existed)."""
    store = OutputStore(str(output))
    for video_id, record in store.committed().items():
        store.commit(video_id, [f for f in record.files if not f.path.startswith("tracks/")], record.extra)


def test_bad_inputs_stop_with_one_line_naming_them(corpus: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    dataset = read_dataset("mevis", str(corpus))
    count = sum(len(r.expressions) for r in dataset.videos.values())
    out = str(tmp_path / "c.json")

    def error(labels: str, *extra: str) -> str:
        assert vrseg(["calibrate", "--labels", labels, "--annotations", str(corpus), "--format", "mevis",
                      "--out", out, *extra]) == 2
        return capsys.readouterr().err

    missing = str(tmp_path / "nowhere")
    assert f"vrseg calibrate: file {missing}: no such labeling output" in error(missing)

    perfect = tmp_path / "perfect"
    label_like_a_model(dataset, str(perfect), perfect=True)
    assert f"{perfect}: cannot fit on its {count} tracks scored against {corpus}: fit needs both good and bad " \
           "tracks, got only label 1" in error(str(perfect))

    other = tmp_path / "other"
    for video_id, record in dataset.videos.items():
        expressions = {e.expr_id: (e.text, np.zeros((record.num_frames, record.height, record.width), bool))
                       for e in record.expressions}
        write_video(str(other), f"x{video_id}", record.frame_names, expressions)
    assert f"{other}: none of its {count} tracks matches one of the {count} expressions of {corpus} (mevis)" in error(str(other))

    without = tmp_path / "without_tracks"
    label_like_a_model(dataset, str(without))
    _drop_tracks_from_markers(without)
    assert f"{without}: no committed video has a tracks/ file" in error(str(without))

    assert "--threshold must be in [0, 1], got 1.5" in error(str(perfect), "--threshold", "1.5")
    assert not Path(out).exists()


def test_labeling_with_the_fitted_calibration_gives_confidences_and_empties_decided_tracks(
        corpus: Path, tmp_path: Path, ray_local) -> None:  # noqa: ANN001
    labels = str(tmp_path / "fit-labels")
    label_like_a_model(read_dataset("mevis", str(corpus)), labels)
    calibration = tmp_path / "tracks.json"
    assert vrseg(["calibrate", "--labels", labels, "--annotations", str(corpus), "--format", "mevis",
                  "--out", str(calibration)]) == 0
    output = tmp_path / "labeled"
    status = vrseg(["label", "--manifest", str(corpus / "manifest.jsonl"), "--output", str(output), "--config",
                    "configs/label/tiny.yaml", "--no-progress", f"tracks.calibration={calibration}"])
    assert status == 0
    store = OutputStore(str(output))
    rows = 0
    for video_id in store.committed():
        tracks = pq.read_table(io.BytesIO(store.read_bytes(f"tracks/{video_id}.parquet"))).to_pylist()
        masks = pq.read_table(io.BytesIO(store.read_bytes(f"masks/{video_id}.parquet"))).to_pylist()
        for track in tracks:
            assert track["confidence"] is not None and 0.0 <= track["confidence"] <= 1.0
            mine = [m for m in masks if m["expr_id"] == track["expr_id"]]
            areas = [rle_codec.area({"size": [m["height"], m["width"]], "counts": m["rle"]}) for m in mine]
            assert [m["present"] for m in mine] == [a > 0 for a in areas]
            assert track["present_frames"] == sum(a > 0 for a in areas)
            assert track["no_target"] == (track["present_frames"] == 0)  # decided tracks are written empty
            rows += 1
    assert rows == sum(len(r.expressions) for r in read_dataset("mevis", str(corpus)).videos.values())
