"""``vrseg export``: a labeling output written through the labeler's own writer classes (no Ray), exported as
COCO and YouTube-VIS JSON and read back with pycocotools (``COCO.annToMask``, ``mask.decode``): every frame's
mask must come back exactly as written, empty masks as the formats say (left out / null)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from label_outputs import write_video
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pipelines.cli import SUBCOMMAND_MODULES
from pipelines.export import export, register
from pipelines.storage import OutputStore


def vrseg(argv: list[str]) -> int:
    """``vrseg ARGV`` with only the export subcommand registered (the whole CLI imports Ray, torch and the models)."""
    parser = argparse.ArgumentParser(prog="vrseg")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def moving_box(frames: int, height: int, width: int, empty: tuple[int, ...] = ()) -> np.ndarray:
    """(T, H, W) bool: a 2x3 box moving right one pixel a frame, nothing on the ``empty`` frames."""
    masks = np.zeros((frames, height, width), dtype=bool)
    for t in range(frames):
        if t not in empty:
            masks[t, 1:3, t:t + 3] = True
    return masks


def noisy(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((frames, height, width)) > 0.6


# video id -> (frame names, {expr_id: (text, masks)}); "b/clip" has a "/" in its id, "v1"'s expression "1" is empty
# on every frame and its expression "0" on frame 2.
VIDEOS = {
    "v1": ([f"{i:05d}" for i in range(4)], {
        "0": ("the box moving right", moving_box(4, 6, 8, empty=(2,))),
        "1": ("the cat that never comes", np.zeros((4, 6, 8), dtype=bool)),
    }),
    "b/clip": (["f10", "f20", "f30"], {"a": ("noise", noisy(3, 5, 7, seed=3))}),
}
UNCOMMITTED = ("crashed", (["00000"], {"0": ("half written", np.ones((1, 4, 4), dtype=bool))}))


@pytest.fixture()
def labels(tmp_path: Path) -> tuple[str, str]:
    """A labeling output with ``VIDEOS`` committed (``v1``'s marker records its texts, ``b/clip``'s does not, as
    markers written before they carried texts) and ``UNCOMMITTED`` written but not committed; its manifest."""
    output = str(tmp_path / "labels")
    for video_id, (names, expressions) in VIDEOS.items():
        write_video(output, video_id, names, expressions, marker_texts=video_id == "v1")
    write_video(output, UNCOMMITTED[0], *UNCOMMITTED[1], commit=False)
    rows = [{"video_id": video_id, "video_uri": f"file:///videos/{video_id}.mp4",
             "expressions": [{"expr_id": e, "text": text} for e, (text, _) in expressions.items()]}
            for video_id, (_, expressions) in [*VIDEOS.items(), UNCOMMITTED]]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return output, str(manifest)


def written(video_id: str, expr_id: str) -> np.ndarray:
    return VIDEOS[video_id][1][expr_id][1]


def test_coco_export_reads_back_with_pycocotools(labels, tmp_path):
    output, manifest = labels
    out = str(tmp_path / "export" / "labels.coco.json")
    summary = export(output, "coco", out, manifest)
    coco = COCO(out)

    assert len(coco.imgs) == 4 + 3 == summary.images
    nonempty = sum(int(mask.any()) for _, exprs in VIDEOS.values() for _, masks in exprs.values() for mask in masks)
    assert len(coco.anns) == nonempty == summary.annotations == 3 + 3
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "object", "supercategory": "object"}]
    seen = set()
    for image in coco.imgs.values():
        video_id, frame = image["video"], image["frame_index"]
        names, expressions = VIDEOS[video_id]
        assert image["file_name"] == f"{video_id}/{names[frame]}.jpg"
        assert (image["height"], image["width"]) == written(video_id, next(iter(expressions))).shape[1:]
        anns = {a["attributes"]["expr_id"]: a for a in coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))}
        for expr_id, (text, masks) in expressions.items():
            if not masks[frame].any():
                assert expr_id not in anns
                continue
            ann = anns[expr_id]
            assert np.array_equal(coco.annToMask(ann).astype(bool), masks[frame])
            assert isinstance(ann["segmentation"]["counts"], str)
            assert ann["attributes"]["expression"] == text
            assert ann["area"] == int(masks[frame].sum())
            rows, cols = np.nonzero(masks[frame])
            assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
            assert ann["score"] == pytest.approx(0.5 + 0.1 * frame)
            assert (ann["iscrowd"], ann["category_id"]) == (0, 1)
            seen.add((video_id, expr_id, frame))
    assert len(seen) == 6
    assert "crashed" not in {image["video"] for image in coco.imgs.values()}


def test_ytvis_export_decodes_frame_by_frame(labels, tmp_path):
    output, manifest = labels
    out = str(tmp_path / "labels.ytvis.json")
    summary = export(output, "ytvis", out, manifest)
    data = json.loads(Path(out).read_text())

    assert (summary.videos, summary.images, summary.annotations) == (2, 7, 3)
    assert data["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    videos = {v["id"]: v for v in data["videos"]}
    assert [v["name"] for v in data["videos"]] == ["b/clip", "v1"]  # sorted by video id
    assert videos[1]["file_names"] == ["b/clip/f10.jpg", "b/clip/f20.jpg", "b/clip/f30.jpg"]
    assert (videos[2]["length"], videos[2]["height"], videos[2]["width"]) == (4, 6, 8)
    assert len(data["annotations"]) == 3
    for ann in data["annotations"]:
        video = videos[ann["video_id"]]
        expr_id = ann["attributes"]["expr_id"]
        text, masks = VIDEOS[video["name"]][1][expr_id]
        assert ann["attributes"]["expression"] == text
        assert len(ann["segmentations"]) == len(ann["areas"]) == len(ann["bboxes"]) == video["length"]
        for frame, (segmentation, area) in enumerate(zip(ann["segmentations"], ann["areas"], strict=True)):
            if not masks[frame].any():
                assert segmentation is None and area is None and ann["bboxes"][frame] is None
                continue
            assert np.array_equal(mask_utils.decode(segmentation).astype(bool), masks[frame])
            assert area == int(masks[frame].sum())
    by_expr = {(videos[a["video_id"]]["name"], a["attributes"]["expr_id"]): a for a in data["annotations"]}
    assert by_expr[("v1", "1")]["segmentations"] == [None] * 4  # looked for on every frame, found on none
    assert [s is None for s in by_expr[("v1", "0")]["segmentations"]] == [False, False, True, False]


def test_cli_writes_without_manifest_and_reads_s3(labels, s3, capsys):
    assert "pipelines.export" in SUBCOMMAND_MODULES  # what ``vrseg`` registers
    output, _ = labels
    fs = s3.filesystem()
    fs.put(output, s3.uri("labels").removeprefix("s3://"), recursive=True)
    out = s3.uri("exports", "labels.json")

    assert vrseg(["export", "--labels", s3.uri("labels"), "--format", "ytvis", "--out", out]) == 0
    assert capsys.readouterr().out.strip() == (
        f"vrseg export: 2 videos, 7 frames, 3 annotations (ytvis) -> {out}")
    data = json.loads(fs.cat_file(out.removeprefix("s3://")))
    assert [a["attributes"] for a in data["annotations"]] == [
        {"expr_id": "a", "expression": None}, {"expr_id": "0", "expression": "the box moving right"},
        {"expr_id": "1", "expression": "the cat that never comes"}]  # v1's texts from its marker


def run_failing(argv: list[str], capsys) -> str:
    assert vrseg(["export", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.strip()


def test_inputs_that_are_not_labels_are_one_line_errors(labels, tmp_path, capsys):
    output, manifest = labels
    out = str(tmp_path / "x.json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")

    assert run_failing(["--labels", str(tmp_path / "other"), "--format", "coco", "--out", out], capsys) == (
        f"vrseg export: file {tmp_path / 'other'}: not a labeling output with committed videos: no commit "
        "markers under _committed/ (is it a vrseg label --output, and has a video finished?)")
    assert run_failing(["--labels", str(tmp_path / "nowhere"), "--format", "coco", "--out", out], capsys) == (
        f"vrseg export: file {tmp_path / 'nowhere'}: no such labeling output (expected a vrseg label --output folder)")
    assert run_failing(["--labels", output, "--format", "coco", "--out", str(tmp_path)], capsys) == (
        f"vrseg export: --out must name the JSON file to write (e.g. labels.ytvis.json), {tmp_path} is a folder")
    assert not Path(out).exists()

    with pytest.raises(SystemExit) as exited:
        vrseg(["export", "--labels", output, "--format", "mevis", "--out", out])
    assert exited.value.code == 2
    assert "argument --format: invalid choice: 'mevis' (choose from 'ytvis', 'coco')" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown export format 'png'; expected one of ytvis, coco"):
        export(output, "png", out)


def test_labels_disagreeing_with_their_markers_or_manifest_are_refused(labels, tmp_path):
    output, manifest = labels
    out = str(tmp_path / "x.json")
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"video_id": "v1", "video_uri": "file:///v1.mp4",
                                 "expressions": [{"expr_id": "0", "text": "only this one"}]}) + "\n")
    with pytest.raises(ValueError, match=rf"file {other}, video 'b/clip', key 'a': no text for this labeled "
                                         r"expression \(is it the manifest the labels were made from\?\)"):
        export(output, "coco", out, str(other))

    OutputStore(output).commit("moments only", [], {"num_frames": 3, "fps": 1.0, "expressions": []})
    with pytest.raises(ValueError, match=r"video 'moments only': the commit marker's 'height' must be a positive "
                                         r"integer, got None"):
        export(output, "ytvis", out)
    OutputStore(output).commit("moments only", [], {"num_frames": 3, "height": 2, "width": 2, "expressions": []})
    with pytest.raises(ValueError, match=r"video 'moments only': the commit marker lists 0 masks/ Parquet files, "
                                         r"expected 1 \(a vrseg ground output holds moments, not masks\)"):
        export(output, "ytvis", out)
    assert not Path(out).exists()
