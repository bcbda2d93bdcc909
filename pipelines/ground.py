"""``vrseg ground``: temporal sentence grounding over a TSG benchmark's videos, on Ray Data like labeling.

The data flow is labeling's with the ``[FIND]`` pass as the only model stage (MomentSeg 3.2.1, App. E.4):

1. inputs: the queries of a Charades-STA text file or an ActivityNet Captions JSON (``--format``,
   ``--annotations``), grouped per video, each video the file under ``--videos`` named by its id
   (``pipelines.manifest.entries_from_moments``); a query without a video file is an error row;
2. resume: videos whose commit marker exists under ``--output`` are skipped (``pipelines.label.run_pending``);
3. one row per remaining video: ``LowresDecoder`` (the engine's ``lowres_frames`` at ``lowres_side``) ->
   ``actors.grounder.Grounder`` (``[FIND]`` relevance, the moment at theta = ``engine.find_threshold``; the
   ``mllm`` pool of the labeling config) -> ``VideoWriter``, whose commit marker holds the video's moments
   and compact ``[FIND]`` curves (``actors.video_rows.VideoMoments``);
4. the driver writes ``errors/errors.parquet``, then ``predictions.jsonl`` from every committed video (this
   run's and earlier runs'): one line ``{"video", "query", "start", "end"}`` per query, in the annotation
   file's order, ``query`` its line index (ActivityNet: its index over the file), the layout
   ``vrseg evaluate --format charades-sta|activitynet --predictions`` reads; queries of failed videos are
   left out (the evaluator counts them as missing); then ``run.json``.

Exit status as ``vrseg label``: 0, 1 when items failed (unless ``--allow-failures``), 2 on unusable inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from actors.grounder import Grounder
from actors.model.config import ModelConfig
from actors.uri import redact
from pipelines.attempts import Attempts
from pipelines.evaluate import GROUNDING_FORMATS
from pipelines.formats import Moment, read_dataset
from pipelines.label import (
    RUN_RECORD,
    USER_ERRORS,
    LabelRun,
    add_job_arguments,
    committed_rows,
    decoded_rows,
    ensure_ray,
    exit_status,
    guarded_stage,
    model_for_actors,
    module_main,
    resolved_storage_options,
    run_pending,
    run_record,
    summary_line,
)
from pipelines.label_config import LabelConfig, load_label_config
from pipelines.label_inputs import ListedInput
from pipelines.manifest import entries_from_moments
from pipelines.preflight import check_credentials
from pipelines.storage import CommitRecord, OutputStore

PREDICTIONS_FILE = "predictions.jsonl"


@dataclass
class GroundRun:
    """What a run did: the per-video job's record and how many queries ``predictions.jsonl`` answers."""

    run: LabelRun
    queries: int
    predictions: int


def build_pipeline(rows: Any, output_uri: str, config: LabelConfig, model: ModelConfig,  # noqa: ANN401
                   options: Mapping[str, Any], attempts: Attempts) -> Any:  # noqa: ANN401 - ray.data.Datasets
    """The Ray Data program: the input rows (one per video) through decode -> ground -> write."""
    lowres = decoded_rows(rows, config, options, attempts)
    moments = guarded_stage(lowres, Grounder, "ground", "mllm", {
        "model": model, "engine": config.engine, "torch_threads": config.pools.mllm.threads()}, config, attempts)
    return committed_rows(moments, output_uri, config, options)


def prediction_lines(moments: Sequence[Moment], committed: Mapping[str, CommitRecord]) -> list[dict[str, Any]]:
    """``{"video", "query", "start", "end"}`` for each query of ``moments`` whose video is committed, in order."""
    found = {(video_id, e["expr_id"]): e["moment"] for video_id, record in committed.items()
             for e in record.extra.get("expressions", [])}
    lines = []
    for moment in moments:
        span = found.get((moment.video_id, str(moment.query_id)))
        if span is not None:
            lines.append({"video": moment.video_id, "query": moment.query_id, "start": span[0], "end": span[1]})
    return lines


def ground(fmt: str, annotations: str, videos: str, output_uri: str, config: LabelConfig, model: ModelConfig, *,
           address: str | None = None, progress: bool = True, argv: Sequence[str] = ()) -> GroundRun:
    """Ground every query of ``annotations`` (``fmt``) in the videos under ``videos`` into ``output_uri`` (see
    the module docstring). Raises ``FormatError`` / ``StorageError`` / ``FileNotFoundError`` when the inputs
    or the output cannot be read at all; per-item problems are error rows."""
    if fmt not in GROUNDING_FORMATS:
        raise ValueError(f"--format must be one of {GROUNDING_FORMATS}, got {fmt!r}")
    start = time.perf_counter()
    options = resolved_storage_options(config.storage_options, [annotations, videos, output_uri])
    check_credentials([annotations, videos, output_uri], options)
    ensure_ray(address, config.ray)
    store = OutputStore(output_uri, options)
    dataset = read_dataset(fmt, annotations, options)
    inputs = entries_from_moments(dataset, videos, options, config.inputs)
    actor_model = model_for_actors(model)
    result = run_pending(ListedInput(inputs), store, options, lambda rows, attempts: build_pipeline(
        rows, output_uri, config, actor_model, options, attempts), progress, config.max_attempts)
    lines = prediction_lines(dataset.moments, store.committed())
    store.write_bytes(PREDICTIONS_FILE, "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8"))
    result.wall_seconds = time.perf_counter() - start
    record = run_record(result, {"format": fmt, "annotations": annotations, "videos": videos}, output_uri, config,
                        model, argv)
    record["counts"].pop("masks_written")
    record["counts"].pop("frame_store_fallbacks")  # grounding has no frame store
    record["counts"].update({"queries": len(dataset.moments), "predictions": len(lines)})
    store.write_bytes(RUN_RECORD, json.dumps(record, indent=2).encode("utf-8"))
    return GroundRun(result, len(dataset.moments), len(lines))


# ---------------------------------------------------------------------------------------- command line
def run(args: argparse.Namespace) -> int:
    try:
        config, model = load_label_config(args.config, args.overrides)
        result = ground(args.format, args.annotations, args.videos, args.output, config, model,
                        address=args.address, progress=not args.no_progress, argv=sys.argv)
    except USER_ERRORS as exc:
        print(f"vrseg ground: {redact(str(exc))}", file=sys.stderr)
        return 2
    print(summary_line(result.run, "ground"))
    print(f"vrseg ground: {result.predictions} of {result.queries} queries predicted in "
          f"{redact(args.output)}/{PREDICTIONS_FILE} (errors/, run.json beside it)")
    return exit_status("ground", result.run, args.output, args.allow_failures)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ground", help="temporal grounding of a TSG benchmark on Ray Data (resumable)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=GROUNDING_FORMATS, help="annotation format")
    parser.add_argument("--annotations", required=True, help="Charades-STA .txt or ActivityNet .json (path, s3://)")
    parser.add_argument("--videos", required=True, help="folder holding <video id>.<mp4|...> files")
    add_job_arguments(parser, "configs/label/<name>.yaml (its model, engine [FIND] settings, pools)")
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.ground ARGS`` = ``vrseg ground ARGS``."""
    return module_main("ground", register, argv)


if __name__ == "__main__":
    sys.exit(main())
