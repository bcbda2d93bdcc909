"""``vrseg evaluate`` end to end on real Ray: procedural MeViS/ReVOS corpus, hand-made Charades-STA and
Ref-DAVIS17 sets, predictions in the PNG layout and in the labeling output's Parquet layout, local and S3.

Expected scores are recomputed here with plain numpy from the definitions (boundary map by comparing
each pixel with its east / south / south-east neighbour, matching within a Euclidean disk), not with
``pipelines.metrics``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from actors.config import load_config
from pipelines.cli import main as cli_main
from pipelines.evaluate import (
    EvalConfig,
    ReportConfig,
    evaluate,
    open_prediction_store,
    score_refvos_expression,
)
from pipelines.formats.model import FormatError
from pipelines.formats.prediction_parquet import PREDICTION_SCHEMA, prediction_row
from pipelines.formats.prediction_png import write_png_predictions
from pipelines.formats.prediction_store import PredictedMask
from pipelines.formats.rle_layout import read_mevis
from pipelines.storage import OutputStore, video_key
from pipelines.synthetic_cli import SynthConfig, write_corpus

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- independent definitions


def _boundary(seg: np.ndarray) -> np.ndarray:
    # edge padding makes an outside neighbour equal to the pixel itself, i.e. "not compared"
    padded = np.pad(seg, ((0, 1), (0, 1)), mode="edge")
    return (seg != padded[:-1, 1:]) | (seg != padded[1:, :-1]) | (seg != padded[1:, 1:])


def _j(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else np.logical_and(pred, gt).sum() / union


def _f(pred: np.ndarray, gt: np.ndarray) -> float:
    height, width = gt.shape
    radius = math.ceil(0.008 * math.sqrt(height**2 + width**2))
    p_pts, g_pts = np.argwhere(_boundary(pred)), np.argwhere(_boundary(gt))
    if len(p_pts) == 0 and len(g_pts) == 0:
        return 1.0
    if len(p_pts) == 0 or len(g_pts) == 0:
        return 0.0  # (P, R) = (1, 0) or (0, 1)
    d2 = ((p_pts[:, None, :] - g_pts[None, :, :]) ** 2).sum(-1)
    precision = np.mean(d2.min(axis=1) <= radius * radius)
    recall = np.mean(d2.min(axis=0) <= radius * radius)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------- procedural corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """The tiny procedural corpus (MeViS + ReVOS + Charades layouts) and prediction sets on it."""
    root = tmp_path_factory.mktemp("eval")
    config = load_config(SynthConfig, ROOT / "configs/synth/tiny.yaml", ["output.layouts=[mevis,revos,charades]"])
    write_corpus(config, str(root / "corpus"))
    dataset = read_mevis(str(root / "corpus"))
    perfect, perturbed, expected = [], [], {}
    videos = list(dataset.videos.values())
    dropped = (videos[1].video_id, videos[1].expressions[0].expr_id)  # missing altogether
    gappy = (videos[0].video_id, videos[0].expressions[1].expr_id)  # some frames not predicted
    for record in videos:
        for position, expression in enumerate(record.expressions):
            key = (record.video_id, expression.expr_id)
            j_values, f_values = [], []
            for frame in range(record.num_frames):
                truth = record.target_mask(expression, frame)
                perfect.append(PredictedMask(*key, frame, record.frame_names[frame], truth))
                phase = (frame + position) % 5
                if phase == 0:
                    pred = np.zeros_like(truth)
                elif phase in (1, 2):
                    pred = np.roll(truth, shift=(1, 3), axis=(0, 1))
                else:
                    pred = truth.copy()
                if not expression.obj_ids and frame % 4 == 0:
                    pred[:4, :5] = True  # false positive on a no-target expression
                omitted = key == gappy and frame % 7 == 3
                if key != dropped and not omitted:
                    perturbed.append(PredictedMask(*key, frame, record.frame_names[frame], pred))
                scored = np.zeros_like(truth) if omitted else pred
                j_values.append(_j(scored, truth))
                f_values.append(_f(scored, truth))
            expected[key] = (0.0, 0.0) if key == dropped else (float(np.mean(j_values)), float(np.mean(f_values)))
    write_png_predictions(perfect, str(root / "perfect_png"))
    write_png_predictions(perturbed, str(root / "perturbed_png"))
    _write_labeling_output(perturbed, str(root / "label_out"), commit=[v.video_id for v in videos])
    _write_labeling_output(perturbed, str(root / "label_partial"), commit=[v.video_id for v in videos[:-1]])
    return {"root": root, "dataset": dataset, "expected": expected, "dropped": dropped}


def _write_labeling_output(predictions: list[PredictedMask], out_uri: str, commit: list[str],
                           storage_options: dict | None = None) -> None:
    """The ``vrseg label`` output layout: ``masks/<video_key>.parquet`` per video, then its commit marker."""
    store = OutputStore(out_uri, storage_options)
    for video_id in dict.fromkeys(p.video_id for p in predictions):
        rows = [prediction_row(p) for p in predictions if p.video_id == video_id]
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA), buffer)
        written = store.write_bytes(f"masks/{video_key(video_id)}.parquet", buffer.getvalue().to_pybytes())
        if video_id in commit:
            store.commit(video_id, [written])


def test_labeling_output_shows_only_committed_videos(corpus):
    dataset = corpus["dataset"]
    first, *_, last = dataset.videos.values()
    store = open_prediction_store(str(corpus["root"] / "label_partial"), dataset)
    assert store.expressions(last.video_id) == set()
    assert store.mask(last.video_id, last.expressions[0].expr_id, 0) is None
    assert store.expressions(first.video_id) == {e.expr_id for e in first.expressions}
    full = open_prediction_store(str(corpus["root"] / "label_out"), dataset)
    assert full.expressions(last.video_id) == {e.expr_id for e in last.expressions}


def _fast_config(concurrency: int = 1, **report: int) -> EvalConfig:
    """One scoring actor unless a test asks for more (the machine has two busy cores)."""
    config = EvalConfig(report=ReportConfig(**report) if report else ReportConfig())
    config.ray.concurrency = concurrency
    return config


def test_perfect_png_predictions_score_exactly_one(corpus, ray_local):
    out = corpus["root"] / "out_perfect"
    report = evaluate("mevis", str(corpus["root"] / "corpus"), str(corpus["root"] / "perfect_png"), str(out),
                      config=_fast_config())
    assert report["J"] == 1.0 and report["F"] == 1.0 and report["J&F"] == 1.0
    assert report["missing"] == []
    assert report["num_expressions"] == len(corpus["expected"])
    assert all(row["J"] == 1.0 and row["F"] == 1.0 for row in report["per_expression"])
    assert {"kind:static", "kind:motion", "kind:no_target"} <= set(report["subsets"])
    assert json.loads((out / "report.json").read_text()) == report
    assert "<td class='headline'>100.0</td>" in (out / "report.html").read_text()


def test_perturbed_parquet_labeling_output_matches_numpy_recomputation(corpus, ray_local):
    out = corpus["root"] / "out_parquet"
    report = evaluate("mevis", str(corpus["root"] / "corpus"), str(corpus["root"] / "label_out"), str(out),
                      config=_fast_config(concurrency=2, overlays=2, overlay_frames=3))
    expected = corpus["expected"]
    rows = {(r["video"], r["expr_id"]): r for r in report["per_expression"]}
    assert set(rows) == set(expected)
    for key, (j, f) in expected.items():
        assert rows[key]["J"] == pytest.approx(j, abs=1e-12), key
        assert rows[key]["F"] == pytest.approx(f, abs=1e-12), key
    j_mean = np.mean([j for j, _ in expected.values()])
    f_mean = np.mean([f for _, f in expected.values()])
    assert report["J"] == pytest.approx(j_mean, abs=1e-12)
    assert report["F"] == pytest.approx(f_mean, abs=1e-12)
    assert report["J&F"] == pytest.approx((j_mean + f_mean) / 2, abs=1e-12)
    assert 0.2 < report["J"] < 0.95  # the perturbation is visible
    video, expr_id = corpus["dropped"]
    assert report["missing"] == [{"video": video, "expr_id": expr_id}]
    assert rows[corpus["dropped"]]["missing"] is True and rows[corpus["dropped"]]["J&F"] == 0.0
    static = [key for key in expected if rows[key]["kind"] == "static"]
    assert report["subsets"]["kind:static"]["J"] == pytest.approx(np.mean([expected[k][0] for k in static]))
    page = (out / "report.html").read_text()
    assert f"<td class='headline'>{100 * report['J&F']:.1f}</td>" in page
    assert f"<td class='headline'>{100 * report['J']:.1f}</td>" in page
    assert "Failures: truth vs prediction" in page and page.count("<figure>") == 2 * 3
    assert f"{video} / {expr_id}" in page  # listed under missing predictions


def test_revos_protocol_groups_by_type_and_reports_no_target(corpus, ray_local):
    """Also the PNG layout: the same perturbed predictions as the Parquet test, the same numbers."""
    report = evaluate("revos", str(corpus["root"] / "corpus"), str(corpus["root"] / "perturbed_png"),
                      str(corpus["root"] / "out_revos"), config=_fast_config(overlays=0))
    dataset = read_mevis(str(corpus["root"] / "corpus"))
    expected = corpus["expected"]
    for row in report["per_expression"]:
        j, f = expected[(row["video"], row["expr_id"])]
        assert row["J"] == pytest.approx(j, abs=1e-12) and row["F"] == pytest.approx(f, abs=1e-12)
    assert [m["expr_id"] for m in report["missing"]] == [corpus["dropped"][1]]
    type_of = {}
    from pipelines.formats.rle_layout import read_revos

    for record in read_revos(str(corpus["root"] / "corpus")).videos.values():
        for expression in record.expressions:
            type_of[(record.video_id, expression.expr_id)] = (expression.type_id, not expression.obj_ids)
    groups = {name: [expected[k][0] for k, (t, none) in type_of.items() if t == tid and not none]
              for tid, name in ((0, "referring"), (1, "reasoning"))}
    for name, values in groups.items():
        assert report["subsets"][name]["J"] == pytest.approx(np.mean(values), abs=1e-12)
    assert report["J"] == pytest.approx((np.mean(groups["referring"]) + np.mean(groups["reasoning"])) / 2, abs=1e-12)
    assert report["subsets"]["no_target"]["num_expressions"] == sum(none for _, none in type_of.values())
    assert report["num_expressions"] == sum(len(r.expressions) for r in dataset.videos.values())


def test_scoring_in_chunks_equals_scoring_whole(corpus):
    dataset = corpus["dataset"]
    store = open_prediction_store(str(corpus["root"] / "perturbed_png"), dataset)
    record = next(iter(dataset.videos.values()))
    expression = record.expressions[1]
    whole = score_refvos_expression(record, expression, store, chunk_frames=1000)
    chunked = score_refvos_expression(record, expression, store, chunk_frames=3, worst_frames=2)
    assert chunked["J"] == pytest.approx(whole["J"], abs=1e-12)
    assert chunked["F"] == pytest.approx(whole["F"], abs=1e-12)
    assert (chunked["num_frames"], chunked["text"]) == (record.num_frames, expression.text)
    empty = np.zeros((record.height, record.width), dtype=bool)
    j_per_frame = []
    for frame in range(record.num_frames):
        predicted = store.mask(record.video_id, expression.expr_id, frame)
        j_per_frame.append(_j(empty if predicted is None else predicted, record.target_mask(expression, frame)))
    assert chunked["worst_frames"] == sorted(np.argsort(j_per_frame, kind="stable")[:2].tolist())


def test_labeling_output_on_s3(corpus, s3, ray_local):
    fs = s3.filesystem()
    fs.put(str(corpus["root"] / "corpus") + "/", f"{s3.bucket}/corpus/", recursive=True)
    fs.put(str(corpus["root"] / "label_out") + "/", f"{s3.bucket}/label_out/", recursive=True)
    report = evaluate("mevis", s3.uri("corpus"), s3.uri("label_out"), s3.uri("reports/run1"),
                      storage_options=s3.storage_options, config=_fast_config(overlays=1, overlay_frames=2))
    expected = corpus["expected"]
    assert report["J"] == pytest.approx(np.mean([j for j, _ in expected.values()]), abs=1e-12)
    assert json.loads(fs.cat_file(f"{s3.bucket}/reports/run1/report.json")) == report
    page = fs.cat_file(f"{s3.bucket}/reports/run1/report.html").decode()
    assert f"{100 * report['J&F']:.1f}" in page and page.count("<figure>") == 2


# --------------------------------------------------------------------------- temporal grounding

CHARADES = """AAA 0.0 10.0##person opens the door
AAA 5.0 15.0##person sits down
BBB 2.0 4.0##person laughs
BBB 10.0 20.0##person leaves the room
CCC 0 8##person eats a sandwich
"""
GROUNDING_PREDICTIONS = [
    {"video": "AAA", "query": 0, "start": 0.0, "end": 10.0},  # IoU 1
    {"video": "AAA", "query": 1, "start": 10.0, "end": 20.0},  # 5 / 15
    {"video": "AAA", "query": 1, "start": 5.0, "end": 15.0},  # lower-ranked candidate: ignored by R@1
    {"video": "BBB", "query": 2, "start": 2.0, "end": 5.0},  # 2 / 3
    {"video": "BBB", "query": 3, "start": 0.0, "end": 5.0},  # 0
]  # query 4 missing: IoU 0


def _write_grounding(tmp_path: Path, predictions: list[dict]) -> tuple[Path, Path]:
    annotations = tmp_path / "charades_sta_test.txt"
    annotations.write_text(CHARADES)
    predictions_file = tmp_path / "moments.jsonl"
    predictions_file.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    return annotations, predictions_file


def test_cli_grounding_report_matches_hand_computed_recall_and_miou(tmp_path, ray_local, capsys):
    annotations, predictions = _write_grounding(tmp_path, GROUNDING_PREDICTIONS)
    status = cli_main(["evaluate", "--format", "charades-sta", "--annotations", str(annotations),
                       "--predictions", str(predictions), "--out", str(tmp_path / "cli"),
                       "--config", str(ROOT / "configs/eval/default.yaml"), "ray.concurrency=1"])
    assert status == 0
    assert "R@0.5 40.0" in capsys.readouterr().out
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["R@0.3"] == pytest.approx(3 / 5)
    assert report["R@0.5"] == pytest.approx(2 / 5)
    assert report["R@0.7"] == pytest.approx(1 / 5)
    assert report["mIoU"] == pytest.approx((1 + 1 / 3 + 2 / 3) / 5)
    assert report["num_expressions"] == 5
    assert report["missing"] == [{"video": "CCC", "expr_id": "4", "query": 4}]
    ious = [row["IoU"] for row in report["per_expression"]]
    assert ious == pytest.approx([1.0, 1 / 3, 2 / 3, 0.0, 0.0])
    assert report["per_expression"][1]["pred_start"] == 10.0
    page = (tmp_path / "cli" / "report.html").read_text()
    assert "<td class='headline'>60.0</td>" in page and "<td class='headline'>40.0</td>" in page

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GROUNDING_PREDICTIONS[0]) + "\n" + json.dumps({"video": "AAA", "query": 99,
                                                                              "start": 0, "end": 1}) + "\n")
    status = cli_main(["evaluate", "--format", "charades-sta", "--annotations", str(annotations),
                       "--predictions", str(bad), "--out", str(tmp_path / "bad_out")])
    error = capsys.readouterr().err
    assert status == 2 and "bad.jsonl" in error and "line 2" in error and "99" in error
    status = cli_main(["evaluate", "--format", "charades-sta", "--annotations", str(annotations),
                       "--predictions", str(predictions), "--out", str(tmp_path / "x"), "ray.concurency=1"])
    assert status == 2 and "concurency" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"video": "BBB", "query": 0, "start": 0, "end": 1}', "belongs to video 'AAA'"),
        ('{"video": "AAA", "query": 0, "start": 3, "end": 1}', "after end"),
        ('{"video": "AAA", "query": 0, "start": 0}', "expected an object"),
    ],
)
def test_malformed_grounding_predictions_name_the_line(tmp_path, line, message):
    from pipelines.evaluate import read_grounding_predictions
    from pipelines.formats.moments import read_charades_sta

    annotations, predictions = _write_grounding(tmp_path, [])
    predictions.write_text(line + "\n")
    with pytest.raises(FormatError, match=f"line 1.*{message}|{message}"):
        read_grounding_predictions(str(predictions), read_charades_sta(str(annotations)))


def test_default_yaml_equals_schema_defaults():
    assert load_config(EvalConfig, ROOT / "configs/eval/default.yaml") == EvalConfig()


# --------------------------------------------------------------------------- Ref-DAVIS17, both protocols


def _refdavis_set(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """One 6-frame 32x40 video, objects 1 and 2 far apart; predictions perfect except slot 3 of
    object 2 (shifted two pixels right); returns that object's truth and shifted stacks."""
    frames = [f"{t:05d}" for t in range(6)]
    truth = np.zeros((2, 6, 32, 40), dtype=bool)
    for t in range(6):
        truth[0, t, 2:8, 2 + t : 9 + t] = True
        truth[1, t, 20:29, 24:33 - t // 2] = True
    annotations = root / "valid" / "Annotations" / "v1"
    annotations.mkdir(parents=True)
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9)
    for t, name in enumerate(frames):
        labels = truth[0, t] * 1 + truth[1, t] * 2
        image = Image.fromarray(labels.astype(np.uint8), mode="P")
        image.putpalette(palette)
        image.save(annotations / f"{name}.png")
    expressions = {str(4 * k + s): {"exp": f"object {k + 1} slot {s}", "obj_id": str(k + 1)}
                   for k in range(2) for s in range(4)}
    meta = root / "meta_expressions" / "valid"
    meta.mkdir(parents=True)
    (meta / "meta_expressions.json").write_text(json.dumps({"videos": {"v1": {"expressions": expressions,
                                                                               "frames": frames}}}))
    shifted = np.roll(truth[1], 2, axis=2)
    predictions = [
        PredictedMask("v1", expr_id, t, name, shifted[t] if expr_id == "7" else truth[int(raw["obj_id"]) - 1, t])
        for expr_id, raw in expressions.items() for t, name in enumerate(frames)
    ]
    write_png_predictions(predictions, str(root / "predictions"))
    return truth[1], shifted


def test_refdavis17_reports_both_protocols(tmp_path, ray_local):
    gt, shifted = _refdavis_set(tmp_path)
    j2 = np.mean([_j(p, g) for p, g in zip(shifted, gt, strict=True)])
    f2 = np.mean([_f(p, g) for p, g in zip(shifted, gt, strict=True)])
    report = evaluate("refdavis17", str(tmp_path), str(tmp_path / "predictions"), str(tmp_path / "out"),
                      config=_fast_config(overlays=1, overlay_frames=2))
    assert report["num_expressions"] == 8
    assert report["J"] == pytest.approx((7 + j2) / 8, abs=1e-12)
    assert report["F"] == pytest.approx((7 + f2) / 8, abs=1e-12)
    four_run = report["four_run"]
    assert four_run["J"] == pytest.approx((3 + (1 + j2) / 2) / 4, abs=1e-12)
    assert four_run["F"] == pytest.approx((3 + (1 + f2) / 2) / 4, abs=1e-12)
    assert four_run["subsets"]["run:annotator2-full-video"]["J"] == pytest.approx((1 + j2) / 2, abs=1e-12)
    assert report["subsets"]["kind:annotator2-full-video"]["J"] == pytest.approx((1 + j2) / 2, abs=1e-12)
    assert "object 2 slot 3" in (tmp_path / "out" / "report.html").read_text()
