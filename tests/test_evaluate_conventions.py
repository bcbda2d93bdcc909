"""``vrseg evaluate`` conventions end to end on real Ray, on hand-made sets whose scores are computed by
hand in the comments: Ref-DAVIS17 void pixels and the official-convention four-run number beside
vrseg's (ReferFormer's merged-palette predictions), the summary line and HTML headline, and input
mistakes that end in one line on stderr and exit status 2, whether met on the driver or in a worker.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from image_sets import write_reasonseg, write_refcoco
from PIL import Image

from pipelines.cli import main as cli_main
from pipelines.formats import FormatError, open_predictions, read_dataset

FRAMES = ["00000", "00001", "00002"]
H, W = 12, 20
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (252 * 3 - 3) + [224, 224, 192]


def _palette_png(labels: np.ndarray) -> bytes:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(PALETTE[: 256 * 3])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _annotation(t: int) -> np.ndarray:
    """Object 1 a 4x4 square with a void column (255) right of it; object 2 a square on the right;
    object 3 (no frame-0 pixel, id above frame 0's highest) appears on frames 1-2."""
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[1:5, 1:5] = 1
    labels[1:5, 5] = 255
    labels[7:11, 12:16] = 2
    if t > 0:
        labels[7:11, 2:6] = 3
    return labels


def _refdavis(root: Path) -> Path:
    """Annotations in DAVIS' 480p nesting; expressions for objects 1 and 3 only (object 2 has none);
    predictions in ReferFormer's merged layout: label 1 = object 1's square plus the void column,
    label 2 = object 3 exactly."""
    expressions = {str(4 * k + s): {"exp": f"object {obj} run {s}", "obj_id": str(obj)}
                   for k, obj in enumerate([1, 3]) for s in range(4)}
    meta = root / "meta_expressions" / "valid" / "meta_expressions.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"videos": {"v1": {"expressions": expressions, "frames": FRAMES}}}))
    annotations = root / "valid" / "Annotations" / "480p" / "v1"
    annotations.mkdir(parents=True)
    predictions = root / "referformer"
    for t, name in enumerate(FRAMES):
        labels = _annotation(t)
        (annotations / f"{name}.png").write_bytes(_palette_png(labels))
        merged = np.zeros((H, W), dtype=np.uint8)
        merged[1:5, 1:6] = 1
        merged[labels == 3] = 2
        for slot in range(4):
            run = predictions / f"anno_{slot}" / "v1"
            run.mkdir(parents=True, exist_ok=True)
            (run / f"{name}.png").write_bytes(_palette_png(merged))
    return predictions


def _cli(root: Path, predictions: Path, out: Path, fmt: str = "refdavis17") -> int:
    return cli_main(["evaluate", "--format", fmt, "--annotations", str(root), "--predictions", str(predictions),
                     "--out", str(out), "ray.concurrency=1", "report.overlays=1"])


def test_refdavis17_void_four_run_headline_and_official_convention(tmp_path, ray_local, capsys):
    predictions = _refdavis(tmp_path)
    assert _cli(tmp_path, predictions, tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    # Per expression: object 1's prediction covers its square (16 px) and the void column (4 px), which
    # is left out: J = 16/16 (not 16/20) and F = 1; object 3's expressions are exact (frame 0: both empty).
    assert [(r["expr_id"], r["J"], r["F"]) for r in report["per_expression"]] == [(str(i), 1.0, 1.0) for i in range(8)]
    four_run = report["four_run"]
    assert (four_run["J"], four_run["F"]) == (1.0, 1.0)  # vrseg: objects 1 and 3, both exact
    # davis2017-evaluation: objects 1..2 (frame 0's highest id); object 2 is matched to label 2 (object
    # 3's mask, disjoint from it): J = F = 0; object 1: 1. Per run (1 + 0) / 2.
    official = four_run["official_convention"]
    assert (official["J"], official["F"], official["J&F"], official["num_objects"]) == (0.5, 0.5, 0.5, 8)
    assert official["differs"] is True
    assert [reason.split(" (")[0] for reason in official["because"]] == [
        "1 object(s) first appear after frame 0 with an id above frame 0's highest",
        "1 object(s) of frame 0 have no expression"]
    assert "(v1:3)" in official["because"][0] and "(v1:2)" in official["because"][1]
    line = capsys.readouterr().out.strip()
    assert line.startswith("vrseg evaluate: four-run (published): J 100.0, F 100.0, J&F 100.0 | per expression: "
                           "J 100.0, F 100.0, J&F 100.0 | four-run, official convention: J 50.0, F 50.0, J&F 50.0 (")
    assert "davis2017-evaluation does not score them" in line and line.endswith("report.html")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<tr><td>four-run (published)</td><td class='headline'>100.0</td>" in page
    assert "<tr><td>four-run, official convention</td><td class='headline'>50.0</td>" in page
    assert "davis2017-evaluation scores them, vrseg leaves them out" in page


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_unreadable_files_read_in_a_worker_give_the_drivers_one_line(tmp_path, ray_local, capsys):
    predictions = _refdavis(tmp_path)
    (predictions / "anno_2" / "v1" / "00001.png").write_bytes(b"not a png")
    dataset = read_dataset("refdavis17", str(tmp_path))
    with pytest.raises(FormatError) as driver_side:
        open_predictions(str(predictions), dataset).mask("v1", "2", 1)
    assert _cli(tmp_path, predictions, tmp_path / "out") == 2
    assert _one_line_error(capsys) == f"vrseg evaluate: {driver_side.value}"
    assert "anno_2/v1/00001.png" in str(driver_side.value) and "not a readable PNG" in str(driver_side.value)

    (predictions / "anno_2" / "v1" / "00001.png").write_bytes(_palette_png(np.zeros((H, W))))
    (tmp_path / "valid" / "Annotations" / "480p" / "v1" / "00002.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(FormatError) as driver_side:
        read_dataset("refdavis17", str(tmp_path)).videos["v1"].tracks["1"].frame_mask(2)
    assert _cli(tmp_path, predictions, tmp_path / "out2") == 2
    assert _one_line_error(capsys) == f"vrseg evaluate: {driver_side.value}"


def _png_layout(root: Path, frame_names: list[str], video: str = "v1") -> Path:
    """Object 1's expressions predicted in the PNG layout under the given frame names."""
    out = root / "png"
    for expr_id in range(4):
        for name in frame_names:
            path = out / video / str(expr_id) / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_palette_png(np.zeros((H, W))))
    return out


def test_mistaken_predictions_and_annotations_end_in_one_line_and_status_2(tmp_path, ray_local, capsys):
    _refdavis(tmp_path)
    # frames named by index where the annotation says 00000: refused in the worker that scores them
    assert _cli(tmp_path, _png_layout(tmp_path / "by_index", ["0", "1", "2"]), tmp_path / "o1") == 2
    error = _one_line_error(capsys)
    assert "video 'v1', key '0': predicted frame '0' is not a frame of the video (3 such; the annotation's " \
           "frames are '00000' .. '00002')" in error
    # predictions of another video: refused on the driver before anything is scored
    assert _cli(tmp_path, _png_layout(tmp_path / "other", FRAMES, video="v2"), tmp_path / "o2") == 2
    error = _one_line_error(capsys)
    assert "no prediction matches any of the 8 expressions of the annotations" in error
    assert "'v1/0/00000.png'" in error
    # an annotation folder with a frame missing, then none at all
    annotations = tmp_path / "valid" / "Annotations" / "480p" / "v1"
    (annotations / "00001.png").unlink()
    assert _cli(tmp_path, tmp_path / "referformer", tmp_path / "o3") == 2
    assert "00001.png" in _one_line_error(capsys)
    shutil.rmtree(annotations)
    assert _cli(tmp_path, tmp_path / "referformer", tmp_path / "o4") == 2
    assert "Annotations/480p/<video>/<frame>.png" in _one_line_error(capsys)


def test_image_benchmarks_ciou_giou_void_and_kinds(tmp_path, ray_local, capsys):
    """The hand-worked sets of ``image_sets``: RefCOCO with Parquet RLE predictions, ReasonSeg with PNGs."""
    refcoco = write_refcoco(tmp_path / "refcoco")
    assert _cli(refcoco, tmp_path / "refcoco" / "predictions", tmp_path / "out_refcoco", fmt="refcoco") == 0
    report = json.loads((tmp_path / "out_refcoco" / "report.json").read_text())
    assert (report["cIoU"], report["gIoU"]) == (pytest.approx(2 / 3), pytest.approx(5 / 9))
    assert report["missing"] == [{"image": "COCO_A", "expr_id": "11"}]
    assert [(r["image"], r["expr_id"], r["intersection"], r["union"]) for r in report["per_expression"]] == [
        ("COCO_A", "10", 4, 6), ("COCO_A", "11", 0, 4), ("COCO_B", "12", 8, 8)]
    assert "refcoco: cIoU 66.7, gIoU 55.6 over 3 (1 missing)" in capsys.readouterr().out
    reasonseg = write_reasonseg(tmp_path / "reasonseg")
    assert _cli(reasonseg, tmp_path / "reasonseg" / "predictions", tmp_path / "out_reasonseg", fmt="reasonseg") == 0
    report = json.loads((tmp_path / "out_reasonseg" / "report.json").read_text())
    assert (report["cIoU"], report["gIoU"]) == (pytest.approx(13 / 23), 0.75)
    assert report["subsets"] == {"kind:long_query": {"cIoU": 1.0, "gIoU": 1.0, "num_expressions": 1},
                                 "kind:short_query": {"cIoU": 0.5, "gIoU": 0.5, "num_expressions": 1}}
    page = (tmp_path / "out_reasonseg" / "report.html").read_text()
    assert "<td class='headline'>56.5</td><td class='headline'>75.0</td>" in page and "b / 0 — IoU 50.0" in page
