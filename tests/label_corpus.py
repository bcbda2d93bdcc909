"""Shared by the labeling and grounding tests: a small procedural corpus (mp4s, manifest, Charades-STA
queries), its upload to S3, the single-process engine's masks and moments on it (the references the
pipelines must reproduce), and readers of a labeling output."""

from __future__ import annotations

import functools
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from actors.config import load_config
from pipelines.label_config import LabelConfig, load_label_config
from pipelines.synthetic_cli import SynthConfig, write_corpus

LABEL_CONFIG = "configs/label/tiny.yaml"
SYNTH_OVERRIDES = ["num_videos=4", "text.per_kind=1", "text.no_target=0", "output.layouts=[mp4,charades,manifest]",
                   "scene.min_objects=2", "scene.max_objects=2"]


@functools.lru_cache(maxsize=1)
def local_corpus() -> Path:
    """The corpus on local disk (written once per test session)."""
    root = Path(tempfile.mkdtemp(prefix="vrseg-label-corpus-"))
    write_corpus(load_config(SynthConfig, "configs/synth/tiny.yaml", SYNTH_OVERRIDES), str(root))
    return root


def manifest_rows() -> list[dict[str, Any]]:
    lines = (local_corpus() / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def upload_corpus(s3: Any, prefix: str = "corpus") -> list[dict[str, Any]]:  # noqa: ANN401 - the s3 fixture
    """Upload the corpus' videos under ``prefix``; its manifest rows with S3 video URIs."""
    fs = s3.filesystem()
    rows = []
    for row in manifest_rows():
        name = Path(row["video_uri"]).name
        fs.put_file(str(local_corpus() / "videos" / name), s3.uri(prefix, "videos", name).removeprefix("s3://"))
        rows.append({**row, "video_uri": s3.uri(prefix, "videos", name)})
    return rows


def write_manifest(s3: Any, rows: list[dict[str, Any]], key: str = "manifest.jsonl", extra: bytes = b"") -> str:  # noqa: ANN401
    data = "".join(json.dumps(r) + "\n" for r in rows).encode() + extra
    s3.filesystem().pipe(s3.uri(key).removeprefix("s3://"), data)
    return s3.uri(key)


def label_config(s3: Any, overrides: list[str] | None = None) -> tuple[LabelConfig, Any]:  # noqa: ANN401
    config, model = load_label_config(LABEL_CONFIG, overrides or [])
    config.storage_options = dict(s3.storage_options)
    return config, model


def corpus_videos() -> list[tuple[str, Path, list[dict[str, str]]]]:
    """``(video_id, local path, [{expr_id, text}, ...])`` of every manifest row."""
    return [(row["video_id"], local_corpus() / "videos" / Path(row["video_uri"]).name, row["expressions"])
            for row in manifest_rows()]


@functools.lru_cache(maxsize=1)
def engine_masks() -> dict[tuple[str, str], list[str]]:
    """``(video_id, expr_id) -> RLE counts per frame`` of the corpus from ``VideoLabeler`` in this process."""
    return engine_masks_of(corpus_videos())


def read_masks(s3: Any, output: str) -> dict[tuple[str, str], list[tuple[int, str]]]:  # noqa: ANN401
    """Every committed video's mask rows: ``(video_id, expr_id) -> [(frame_idx, counts), ...]`` as stored."""
    from pipelines.storage import OutputStore

    store = OutputStore(output, s3.storage_options)
    store.fs.invalidate_cache()
    out: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for video_id, record in store.committed().items():
        for written in record.files:
            if written.path.startswith("masks/"):
                table = pq.read_table(io.BytesIO(store.read_bytes(written.path))).to_pydict()
                for vid, expr_id, frame, rle in zip(table["video_id"], table["expr_id"], table["frame_idx"],
                                                    table["rle"], strict=True):
                    assert vid == video_id
                    out.setdefault((vid, expr_id), []).append((frame, rle))
    return out


def masks_bytes(s3: Any, output: str) -> dict[str, bytes]:  # noqa: ANN401
    """Committed mask files by video id (to compare two runs byte for byte)."""
    from pipelines.storage import OutputStore

    store = OutputStore(output, s3.storage_options)
    store.fs.invalidate_cache()
    return {video_id: store.read_bytes(f.path) for video_id, record in store.committed().items()
            for f in record.files if f.path.startswith("masks/")}



def label_cli(argv: list[str]) -> int:
    """``vrseg label ARGV`` in this process."""
    from pipelines.label import main

    return main(argv)


def engine_masks_of(videos: list[tuple[str, Path, list[dict[str, str]]]],
                    network: Any = None) -> dict[tuple[str, str], list[str]]:  # noqa: ANN401 - a SegModel
    """``engine_masks`` for other videos: ``(video_id, local path, [{expr_id, text}, ...])`` each, labeled by
    ``VideoLabeler`` in this process (the reference for videos outside the corpus), with ``network`` (default:
    the labeling config's model)."""
    import torch

    from actors.decode import VideoDecoder
    from actors.engine import ExpressionQuery, VideoLabeler
    from actors.mllm import load_inference_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config, model = load_label_config(LABEL_CONFIG)
    network = load_inference_model(model) if network is None else network
    labeler = VideoLabeler(network.mllm, network.sam2, config.engine)
    out = {}
    for video_id, path, expressions in videos:
        queries = [ExpressionQuery(e["expr_id"], e["text"]) for e in expressions]
        with VideoDecoder(str(path), None, config.decoder_config()) as video:
            labels = labeler.label(video, queries)
        for expression in labels.expressions:
            out[(video_id, expression.expr_id)] = [r["counts"] for r in expression.rles]
    torch.set_num_threads(threads)
    return out


def engine_moments(videos: list[tuple[str, Path, list[dict[str, str]]]]) -> dict[tuple[str, str], Any]:
    """``(video_id, expr_id) -> ExpressionMoment`` of ``(video_id, local path, [{expr_id, text}, ...])`` each:
    the labeling config's ``[FIND]`` pass in this process on the frames ``LowresDecoder`` decodes, then
    ``actors.grounding.ground_expressions`` (the reference for labeling's and grounding's moments)."""
    import torch

    from actors.decode import VideoDecoder, fit_within
    from actors.engine import PromptStage
    from actors.grounding import ground_expressions
    from actors.mllm import load_inference_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config, model = load_label_config(LABEL_CONFIG)
    engine = config.engine
    stage = PromptStage(load_inference_model(model).mllm, engine)
    out = {}
    for video_id, path, expressions in videos:
        with VideoDecoder(str(path), None, config.decoder_config()) as video:
            lowres = video.uniform(min(engine.lowres_frames, video.num_frames),
                                   fit_within(video.height, video.width, engine.lowres_side))
            relevance = stage.relevance(lowres, [e["text"] for e in expressions], video.num_frames, video.fps)
            moments = ground_expressions(relevance, lowres.indices, video.fps, engine.find_threshold)
        out.update({(video_id, e["expr_id"]): m for e, m in zip(expressions, moments, strict=True)})
    torch.set_num_threads(threads)
    return out
