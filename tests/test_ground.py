"""``vrseg ground`` end to end: Charades-STA queries and videos on S3 (moto) -> Ray Data (local) -> S3, resumed,
then scored by ``vrseg evaluate``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
from label_corpus import LABEL_CONFIG, engine_moments, label_config, local_corpus, upload_corpus

from pipelines.evaluate import evaluate, read_grounding_predictions
from pipelines.formats import read_dataset
from pipelines.ground import PREDICTIONS_FILE, ground, main
from pipelines.label import ERRORS_FILE, RUN_RECORD
from pipelines.storage import OutputStore

GHOST = "ghost 0.0 1.0##the red circle moves"  # a query whose video is not in the folder


def _iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def test_ground_writes_the_predictions_evaluate_reads_resumably(s3, ray_local) -> None:  # noqa: ANN001
    rows = upload_corpus(s3)
    text = (local_corpus() / "charades_sta.txt").read_text()
    annotations = s3.uri("charades", "charades_sta.txt")
    s3.filesystem().pipe(annotations.removeprefix("s3://"), (text + GHOST + "\n").encode())
    dataset = read_dataset("charades-sta", annotations, s3.storage_options)
    ghost = len(dataset.moments) - 1
    assert dataset.moments[ghost].video_id == "ghost"
    output, videos = s3.uri("ground"), s3.uri("corpus", "videos")

    status = main(["--format", "charades-sta", "--annotations", annotations, "--videos", videos, "--output", output,
                   "--config", LABEL_CONFIG, "--no-progress",
                   f"storage_options.client_kwargs.endpoint_url={s3.endpoint_url}"])
    assert status == 1  # the ghost query is an error row

    # one line per query of the videos found, in annotation order, with the moment the [FIND] pass predicts
    # in this process (query ids are line indices: expr_ids of the per-video rows)
    paths = {r["video_id"]: local_corpus() / "videos" / Path(r["video_uri"]).name for r in rows}
    per_video: dict[str, list[dict[str, str]]] = {}
    for m in dataset.moments[:ghost]:
        per_video.setdefault(m.video_id, []).append({"expr_id": str(m.query_id), "text": m.text})
    reference = engine_moments([(v, paths[v], queries) for v, queries in per_video.items()])
    store = OutputStore(output, s3.storage_options)
    lines = [json.loads(line) for line in store.read_bytes(PREDICTIONS_FILE).decode().splitlines()]
    assert [line["query"] for line in lines] == list(range(ghost))
    for line in lines:
        expected = reference[(line["video"], str(line["query"]))]
        assert line == {"video": dataset.moments[line["query"]].video_id, "query": line["query"],
                        "start": expected.start, "end": expected.end}
    assert read_grounding_predictions(output + "/" + PREDICTIONS_FILE, dataset, s3.storage_options) == {
        line["query"]: (line["start"], line["end"]) for line in lines}

    errors = pq.read_table(io.BytesIO(store.read_bytes(ERRORS_FILE))).to_pylist()
    assert [(e["video_id"], e["expr_id"], e["stage"], e["kind"]) for e in errors] == [
        ("ghost", str(ghost), "input", "missing_video")]
    record = json.loads(store.read_bytes(RUN_RECORD))
    assert {k: record["counts"][k] for k in ("videos", "done", "failed", "queries", "predictions", "error_rows")} == {
        "videos": 4, "done": 4, "failed": 0, "queries": ghost + 1, "predictions": ghost, "error_rows": 1}
    assert set(record["stage_seconds"]) == {"decode", "ground", "write"}
    assert record["inputs"] == {"format": "charades-sta", "annotations": annotations, "videos": videos}

    # resumable: a video whose marker is gone is redone alone, and the predictions come out byte for byte
    before = store.read_bytes(PREDICTIONS_FILE)
    s3.filesystem().rm_file(s3.uri("ground", OutputStore.marker_path(rows[2]["video_id"])).removeprefix("s3://"))
    config, model = label_config(s3)
    again = ground("charades-sta", annotations, videos, output, config, model, progress=False)
    assert (again.run.done, again.run.skipped, again.run.failed, again.predictions) == (1, 3, 0, ghost)
    assert store.read_bytes(PREDICTIONS_FILE) == before

    # vrseg evaluate scores them; the ghost query is missing and scores IoU 0
    report = evaluate("charades-sta", annotations, output + "/" + PREDICTIONS_FILE, s3.uri("report"),
                      s3.storage_options)
    ious = [_iou((line["start"], line["end"]), (dataset.moments[line["query"]].start,
                                                dataset.moments[line["query"]].end)) for line in lines]
    assert report["num_expressions"] == ghost + 1
    assert [m["query"] for m in report["missing"]] == [ghost]
    assert abs(report["mIoU"] - sum(ious) / (ghost + 1)) < 1e-9
