"""``vrseg synth``: write a procedural corpus (``pipelines.synthetic``) in the real dataset layouts.

Layout under ``--out`` (any fsspec URI)::

    videos/<video>.mp4                 H.264 yuv420p, one per video                       (layout "mp4")
    JPEGImages/<video>/<00000>.jpg     frames, shared by the MeViS and ReVOS files
    meta_expressions.json              MeViS expressions (+ "kind")                      (layout "mevis")
    mask_dict.json                     COCO RLE per annotation id and frame (null = not visible)
    meta_expressions_<split>_.json     ReVOS expressions with type_id, height, width     (layout "revos")
    mask_dict_foreground.json          ReVOS union of all objects per frame
    charades_sta.txt                   "<video> <start> <end>##<sentence>" (seconds)   (layout "charades")
    manifest.jsonl                     {"video_id", "video_uri", "expressions": [{"expr_id", "text"}]}
    ground_truth.jsonl                 per video: objects, expressions (kind, type_id, targets, relevant
                                       frames, late), moments (frames and seconds)
    synth_run.json                     the config (secrets redacted) and counts

MeViS and ReVOS share one folder, so the frames are written once and ``read_mevis(out)`` and
``read_revos(out, split)`` both read it. The manifest needs the mp4s (it points at them).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from actors.config import ConfigError, load_config, to_plain
from actors.uri import join, redact
from pipelines.formats.files import location
from pipelines.formats.moments import write_charades_sta
from pipelines.formats.rle_layout import write_mevis, write_revos
from pipelines.synthetic import SceneConfig, SyntheticVideo, generate_corpus, to_dataset
from pipelines.synthetic_text import TextConfig
from pipelines.video_io import write_mp4

LAYOUTS = ("mp4", "mevis", "revos", "charades", "manifest")


@dataclass
class OutputConfig:
    """What to write and how; ``storage_options`` reach the ``--out`` location (e.g. an S3 endpoint)."""

    layouts: list[str] = field(default_factory=lambda: list(LAYOUTS))
    revos_split: str = "valid"
    crf: int = 18  # x264 constant rate factor
    preset: str = "veryfast"
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [name for name in self.layouts if name not in LAYOUTS]
        if unknown:
            raise ValueError(f"output.layouts: unknown {unknown}; choose from {list(LAYOUTS)}")
        if "manifest" in self.layouts and "mp4" not in self.layouts:
            raise ValueError("output.layouts: 'manifest' points at the mp4 files, so it needs 'mp4'")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"output.crf must be in [0, 51], got {self.crf}")


@dataclass
class SynthConfig:
    """``vrseg synth`` configuration (``configs/synth/*.yaml``)."""

    seed: int = 0
    num_videos: int = 8
    prefix: str = "synth"
    scene: SceneConfig = field(default_factory=SceneConfig)
    text: TextConfig = field(default_factory=TextConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        if self.num_videos < 1:
            raise ValueError(f"num_videos must be >= 1, got {self.num_videos}")
        if not self.prefix or any(c in self.prefix for c in "/ \t#"):
            raise ValueError(f"prefix must be non-empty without '/', spaces or '#', got {self.prefix!r}")


def ground_truth_row(video: SyntheticVideo) -> dict[str, Any]:
    """Everything known about ``video`` as one JSON object (ids as in the MeViS/ReVOS files)."""
    facts = {o.obj_id: o for o in video.facts.objects}
    return {
        "video_id": video.video_id,
        "num_frames": video.num_frames,
        "fps": video.fps,
        "height": video.height,
        "width": video.width,
        "late": video.late,
        "objects": [
            {
                "obj_id": spec.obj_id,
                "shape": spec.shape,
                "colour": spec.colour,
                "depth": spec.depth,
                "first_visible": facts[spec.obj_id].first_visible,
                "last_visible": facts[spec.obj_id].last_visible,
            }
            for spec in video.simulation.specs
        ],
        "expressions": [
            {
                "expr_id": e.expr_id,
                "text": e.text,
                "kind": e.kind,
                "type_id": e.type_id,
                "obj_ids": list(e.obj_ids),
                "frames": list(e.frames) if e.frames is not None else None,
                "late": e.late,
            }
            for e in video.expressions
        ],
        "moments": [
            {
                "text": m.text,
                "kind": m.kind,
                "obj_ids": list(m.obj_ids),
                "frames": list(m.frames),
                "start": m.seconds(video.fps)[0],
                "end": m.seconds(video.fps)[1],
            }
            for m in video.moments
        ],
    }


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows).encode("utf-8")


def write_corpus(config: SynthConfig, out_uri: str) -> dict[str, Any]:
    """Generate ``config.num_videos`` videos and write the layouts in ``config.output.layouts`` under
    ``out_uri``; returns the run record (also written as ``synth_run.json``)."""
    options = config.output.storage_options
    layouts = set(config.output.layouts)
    root = location(out_uri, options)
    videos = list(generate_corpus(config.num_videos, config.seed, config.scene, config.text, config.prefix))
    by_id = {video.video_id: video for video in videos}

    def mp4_uri(video_id: str) -> str:
        return join(out_uri, "videos", f"{video_id}.mp4")

    encoded_bytes = 0
    if "mp4" in layouts:
        for video in videos:
            info = write_mp4(
                video.simulation.iter_frames(), mp4_uri(video.video_id), video.fps, options,
                crf=config.output.crf, preset=config.output.preset,
            )
            encoded_bytes += info.num_bytes
    dataset = to_dataset(videos, mp4_uri if "mp4" in layouts else None)

    def frames(video_id: str):  # noqa: ANN202 - an iterator of (H, W, 3) uint8 frames
        return by_id[video_id].simulation.iter_frames()

    jpegs_written = False
    if "mevis" in layouts:
        write_mevis(dataset, out_uri, frames, options)
        jpegs_written = True
    if "revos" in layouts:
        write_revos(dataset, out_uri, None if jpegs_written else frames, config.output.revos_split, options)
    if "charades" in layouts:
        write_charades_sta(dataset.moments, join(out_uri, "charades_sta.txt"), options)
    if "manifest" in layouts:
        rows = [
            {
                "video_id": video.video_id,
                "video_uri": mp4_uri(video.video_id),
                "expressions": [{"expr_id": e.expr_id, "text": e.text} for e in video.expressions],
            }
            for video in videos
        ]
        root.child("manifest.jsonl").write_bytes(_jsonl(rows))
    root.child("ground_truth.jsonl").write_bytes(_jsonl([ground_truth_row(video) for video in videos]))
    kinds = Counter(e.kind for video in videos for e in video.expressions)
    record = {
        "config": redact(to_plain(config)),
        "out": redact(out_uri),
        "num_videos": len(videos),
        "num_frames": sum(video.num_frames for video in videos),
        "late_videos": sum(video.late for video in videos),
        "expressions": dict(sorted(kinds.items())),
        "moments": len(dataset.moments),
        "mp4_bytes": encoded_bytes,
    }
    root.child("synth_run.json").write_bytes(json.dumps(record, indent=2).encode("utf-8"))
    return record


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(SynthConfig, args.config, args.overrides)
    except ConfigError as exc:
        print(f"vrseg synth: {exc}", file=sys.stderr)
        return 2
    record = write_corpus(config, args.out)
    kinds = ", ".join(f"{k} {n}" for k, n in record["expressions"].items())
    print(
        f"vrseg synth: {record['num_videos']} videos ({record['late_videos']} with late targets), "
        f"{record['num_frames']} frames, expressions: {kinds}; {record['moments']} moments -> {record['out']}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help="write a procedural video corpus", description=__doc__.splitlines()[0],
    )
    parser.add_argument("--config", default="configs/synth/default.yaml", help="YAML under configs/synth/")
    parser.add_argument("--out", required=True, help="output location (path, file://, s3://)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. num_videos=4")
    parser.set_defaults(func=run)
