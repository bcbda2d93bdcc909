"""``vrseg label``: label a corpus in object storage with masks for every (video, expression), on Ray Data.

The program reads top to bottom as the data flow (ARCHITECTURE "One video through the labeling pipeline"):

1. inputs (``pipelines.label_inputs``): a manifest of any size streamed by a Ray Data read task into the
   pools (validated and de-duplicated there; the driver holds counts, not rows), or the entries of a benchmark
   (``--from-dataset``) or of a folder of videos with one expressions file; bad rows / expressions become
   error rows;
2. resume: videos whose commit marker exists under ``--output`` are skipped where the inputs are read (the
   markers' names are listed once, by a task for a manifest; no marker is read); a re-run with nothing
   pending starts no actor pool;
3. one row per remaining video flows through fixed-size actor pools with explicit batch sizes:
   ``LowresDecoder`` (CPU) -> ``MLLMWorker`` ([FIND], sampling inline, [SEG]; ``num_gpus`` from config)
   -> ``Propagator`` (SAM2 key-frame masks + BAP, masks spooled to local disk and written as the video's
   mask and track Parquet files and optional PNGs) -> ``VideoWriter`` (the commit marker). Rows carry low-res frames,
   samples, prompt embeddings and file records only: the actors that need key frames or the full stream
   open the video themselves, and masks never travel between stages, so no frame stack and no video's
   masks ever enter the object store, and memory stays bounded on long videos (the engine streams frames
   in chunks and spools masks to local disk); with ``stages: fused`` one ``FusedLabeler`` pool replaces the
   MLLM and SAM2 pools;
4. the driver shows progress; error rows stream to ``errors/errors.parquet`` (``pipelines.error_log``: input
   issues of this run's inputs and the failures of this run's videos, the current failure set, since failed
   videos are never committed and so are retried by the next run); then optional overlay videos and
   ``run.json``; with ``--report``, the output's QA report and review list (``pipelines.label_report``).

``pipelines.ground`` (``vrseg ground``) runs the same program with the ``[FIND]`` pass as its only model
stage: ``decoded_rows``, ``committed_rows`` and the driver's ``run_pending`` are shared.

Exactly once: a video's files are written before its marker; a video redone (a worker killed mid-video,
Ray Data retrying its task; the driver killed and the command re-run) is rewritten with the same bytes
under the same names, and a reader sees only committed videos. Worker actors are restarted by Ray Data
(``max_restarts=-1``, tasks retried) when they die; a video whose processing kills its worker is tried at most
``max_attempts`` times, then becomes an error row ``worker_died`` (``pipelines.attempts``). An unexpected
exception is an error row of kind ``internal`` with its traceback, also in the worker log, which reaches the
driver unless ``ray.log_to_driver`` is false.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any

from actors.config import ConfigError, to_plain
from actors.frames import LowresDecoder
from actors.fused_labeler import FusedLabeler
from actors.mllm import MLLMWorker
from actors.model.config import ModelConfig
from actors.propagate import Propagator
from actors.track_calibration import TrackCalibration
from actors.uri import join, protocol_of, redact, storage_options_for
from actors.video_rows import Failure
from pipelines.attempts import Attempts, attempt_ledger, guarded
from pipelines.error_log import ERRORS_FILE, error_log, failure_row
from pipelines.formats import FormatError, read_dataset
from pipelines.label_config import DEFAULT_LABEL_CONFIG, LabelConfig, PoolConfig, RayConfig, load_label_config
from pipelines.label_inputs import LabelInput, ListedInput, ManifestInput
from pipelines.label_report import LabelReportConfig, write_label_report
from pipelines.label_writer import MaskFileWriter, VideoWriter
from pipelines.manifest import drop_duplicates, entries_from_dataset, entries_from_folder
from pipelines.overlays import write_overlays
from pipelines.preflight import check_credentials
from pipelines.storage import RUN_RECORD, OutputStore, StorageError

DATASET_FORMATS = ("mevis", "revos", "reasonvos", "refytvos", "refdavis17")
FAILURES_PER_CALL = 256  # failure rows the driver sends to the ErrorLog at a time
PACKAGES = ("torch", "ray", "sam2", "transformers", "peft", "decord", "pyarrow", "fsspec", "s3fs", "numpy")
# what stops a job before any work (exit status 2): bad config, unreadable inputs or output
USER_ERRORS = (ConfigError, FormatError, StorageError, FileNotFoundError, PermissionError, ValueError)


@dataclass(frozen=True)
class InputSpec:
    """What to label: exactly one of a manifest, a benchmark (format + annotations) or a video folder."""

    manifest: str | None = None
    dataset_format: str | None = None
    annotations: str | None = None
    split: str | None = None
    videos: str | None = None
    expressions: str | None = None

    def __post_init__(self) -> None:
        chosen = [self.manifest is not None, self.dataset_format is not None, self.videos is not None]
        if sum(chosen) != 1:
            raise ValueError("give exactly one of --manifest, --from-dataset, --videos")
        if self.dataset_format is not None and (self.annotations is None or self.dataset_format not in DATASET_FORMATS):
            raise ValueError(f"--from-dataset needs one of {DATASET_FORMATS} and --annotations")
        if self.videos is not None and self.expressions is None:
            raise ValueError("--videos needs --expressions (a .txt or .json file)")

    def uris(self) -> list[str]:
        return [u for u in (self.manifest, self.annotations, self.videos, self.expressions) if u is not None]


@dataclass
class LabelRun:
    """What a run did: counts, error rows, summed per-stage seconds, wall time.

    ``errors`` holds the first ``pipelines.error_log.SAMPLE_ROWS`` error rows (``ERROR_SCHEMA`` dicts; all
    of them in a smaller run), ``error_rows`` and ``errors_by_kind`` count them all; every row is in
    ``errors/errors.parquet``.
    """

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    expressions_done: int = 0
    frames_done: int = 0
    store_fallbacks: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_rows: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    overlays: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- setup
def ensure_ray(address: str | None, config: RayConfig) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS``, else start a local instance; nothing if Ray is already up.
    Worker logs reach the driver (Ray deduplicates them) unless ``config.log_to_driver`` is off."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=config.log_to_driver)
    else:
        ray.init(num_cpus=config.num_cpus, include_dashboard=False, log_to_driver=config.log_to_driver)


def resolved_storage_options(options: Mapping[str, Any], uris: Sequence[str]) -> dict[str, Any]:
    """Options actors get explicitly: ``options`` (the config's, or the model weights'), completed from the
    AWS environment for s3 URIs (actors on other nodes do not share the driver's environment)."""
    if any(protocol_of(uri) in ("s3", "s3a") for uri in uris):
        return storage_options_for("s3://", options)
    return dict(options)


def model_for_actors(model: ModelConfig) -> ModelConfig:
    """``model`` with its weights' storage options resolved like the inputs' (``resolved_storage_options``)."""
    weights = resolved_storage_options(model.mllm.storage_options, model.weight_locations())
    return replace(model, mllm=replace(model.mllm, storage_options=weights))


def read_inputs(spec: InputSpec, config: LabelConfig, options: Mapping[str, Any]) -> LabelInput:
    """What ``spec`` names: a streamed manifest (its files checked now), or a benchmark's or a folder's
    entries listed here."""
    if spec.manifest is not None:
        manifest = ManifestInput(spec.manifest, options, config.inputs)
        manifest.files()  # FileNotFoundError before any work
        return manifest
    if spec.dataset_format is not None:
        dataset = read_dataset(spec.dataset_format, spec.annotations, options, spec.split)  # type: ignore[arg-type]
        return ListedInput(drop_duplicates(entries_from_dataset(dataset, config.inputs)))
    return ListedInput(drop_duplicates(entries_from_folder(spec.videos, spec.expressions, options,  # type: ignore[arg-type]
                                                           config.inputs)))


def pool_options(pool: PoolConfig) -> dict[str, Any]:
    """``map_batches`` arguments of a fixed-size actor pool."""
    import ray.data

    return {"compute": ray.data.ActorPoolStrategy(size=pool.size), "batch_size": pool.batch_size,
            "num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus, "batch_format": "pyarrow"}


def guarded_stage(rows: Any, stage_class: type, stage: str, pool: str, stage_kwargs: Mapping[str, Any],  # noqa: ANN401
                  config: LabelConfig, attempts: Attempts) -> Any:  # noqa: ANN401 - ray.data.Datasets
    """``rows`` through ``stage_class`` in ``config.pools.<pool>``, each video tried at most
    ``attempts.max_attempts`` times if it kills its worker (``pipelines.attempts``)."""
    pool_config: PoolConfig = getattr(config.pools, pool)
    return rows.map_batches(guarded(stage_class, stage), fn_constructor_kwargs={
        "attempts": attempts, "pool": pool, "max_memory_bytes": pool_config.max_memory_bytes,
        "stage_kwargs": stage_kwargs}, **pool_options(pool_config))


def decoded_rows(rows: Any, config: LabelConfig, options: Mapping[str, Any],  # noqa: ANN401 - a ray.data.Dataset
                 attempts: Attempts) -> Any:  # noqa: ANN401 - a ray.data.Dataset
    """The input rows (``pipelines.label_inputs``, one video per block) through the low-res decode pool (the
    ``[FIND]`` frames): every job's first stage."""
    engine = config.engine
    return guarded_stage(rows, LowresDecoder, "decode", "decode", {
        "count": engine.lowres_frames, "side": engine.lowres_side, "decoder": config.decoder_config(),
        "storage_options": options}, config, attempts)


def committed_rows(rows: Any, output_uri: str, config: LabelConfig,  # noqa: ANN401 - a ray.data.Dataset
                   options: Mapping[str, Any]) -> Any:  # noqa: ANN401
    """``rows`` through the write pool: each video's commit marker, one summary row per video."""
    return rows.map_batches(VideoWriter, fn_constructor_kwargs={
        "output_uri": output_uri, "storage_options": options}, **pool_options(config.pools.write))


def build_pipeline(rows: Any, output_uri: str, config: LabelConfig, model: ModelConfig,  # noqa: ANN401
                   options: Mapping[str, Any], png: bool, attempts: Attempts,
                   calibration: TrackCalibration | None) -> Any:  # noqa: ANN401 - ray.data.Datasets
    """The Ray Data program: one row per video through decode -> mllm -> propagate -> write; ``calibration``
    gives the tracks their confidence."""
    decoder, engine, pools = config.decoder_config(), config.engine, config.pools
    lowres = decoded_rows(rows, config, options, attempts)
    shared = {"model": model, "engine": engine, "decoder": decoder, "storage_options": options}
    output = MaskFileWriter(output_uri, options, png, calibration=calibration)
    if config.stages == "fused":
        masks = guarded_stage(lowres, FusedLabeler, "label", "label", {
            **shared, "output": output, "torch_threads": pools.label.threads()}, config, attempts)
    else:
        prompted = guarded_stage(lowres, MLLMWorker, "mllm", "mllm", {
            **shared, "torch_threads": pools.mllm.threads()}, config, attempts)
        masks = guarded_stage(prompted, Propagator, "propagate", "propagate", {
            **shared, "output": output, "torch_threads": pools.propagate.threads()}, config, attempts)
    return committed_rows(masks, output_uri, config, options)


class Progress:
    """A progress bar over the videos labeled (their number is not known before the inputs are read) with
    videos/s and expressions/s."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="video", file=sys.stderr, disable=not enabled, dynamic_ncols=True)
        self.start, self.expressions = time.perf_counter(), 0

    def update(self, expressions: int, failed: int) -> None:
        self.expressions += expressions
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{(self.bar.n + 1) / elapsed:.2f} videos/s, {self.expressions / elapsed:.2f} expr/s, "
                                 f"{failed} failed", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------------------- the job
def run_pending(inputs: LabelInput, store: OutputStore, options: Mapping[str, Any],
                pipeline: Callable[[Any, Attempts], Any], progress: bool, max_attempts: int) -> LabelRun:
    """The driver's part of a per-video job on Ray Data: the pending input rows (``inputs.rows``: videos not
    committed under ``store``, reached with ``options``) through ``pipeline(rows, attempts)`` (the run's attempt ledger,
    ``pipelines.attempts``), whose summary rows it counts, their failures streamed with the input issues to
    ``errors/errors.parquet`` (``pipelines.error_log``). The driver holds counts, never the rows."""
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    result = LabelRun()
    with error_log(store.root, options) as errors:
        rows = inputs.rows(store, errors)
        if rows is not None:
            with attempt_ledger(max_attempts) as attempts:
                _count_summaries(pipeline(rows, attempts), result, errors, progress)
        summary = ray.get(errors.close.remote())
    result.total, result.skipped = summary.videos, summary.skipped
    result.errors, result.error_rows, result.errors_by_kind = summary.first, summary.rows, summary.by_kind
    return result


def _count_summaries(summaries: Any, result: LabelRun, errors: Any, progress: bool) -> None:  # noqa: ANN401
    """Count the pipeline's summary rows into ``result``; failures go to ``errors`` a few at a time."""
    import ray

    bar = Progress(None, progress)
    failures: list[dict[str, Any]] = []
    for row in summaries.iter_rows():
        for stage, seconds in json.loads(row["timings"]).items():
            result.stage_seconds[stage] = result.stage_seconds.get(stage, 0.0) + seconds
        if row["failure"]:
            result.failed += 1
            failures.append(failure_row(row["video_id"], Failure.from_json(row["failure"])))
            if len(failures) >= FAILURES_PER_CALL:
                ray.get(errors.add.remote(failures))
                failures = []
        else:
            result.done += 1
            result.expressions_done += row["num_expressions"]
            result.frames_done += row["num_frames"] * row["num_expressions"]
            result.store_fallbacks += row["store_fallback"]
        bar.update(row["num_expressions"], result.failed)
    bar.close()
    ray.get(errors.add.remote(failures))


def label(spec: InputSpec, output_uri: str, config: LabelConfig, model: ModelConfig, *, png: bool = False,
          overlays: int = 0, address: str | None = None, progress: bool = True,
          argv: Sequence[str] = ()) -> LabelRun:
    """Label everything ``spec`` names into ``output_uri`` (see the module docstring); returns the run's record.

    Raises ``FormatError`` / ``StorageError`` / ``FileNotFoundError`` when the inputs or the output cannot
    be read at all; per-item problems are error rows in the result, never exceptions.
    """
    start = time.perf_counter()
    options = resolved_storage_options(config.storage_options, [*spec.uris(), output_uri])
    check_credentials([*spec.uris(), output_uri], options)
    calibration = config.track_calibration(options)
    ensure_ray(address, config.ray)
    store = OutputStore(output_uri, options)
    inputs = read_inputs(spec, config, options)
    actor_model = model_for_actors(model)
    result = run_pending(inputs, store, options, lambda rows, attempts: build_pipeline(
        rows, output_uri, config, actor_model, options, png, attempts, calibration), progress, config.max_attempts)
    if overlays > 0:
        entries = inputs.first_entries(overlays)  # enough: the first expression of every video comes first
        depth = max(len(e.queries) for e in entries) if entries else 0
        items = [(e.video_id, e.source, *e.queries[i]) for i in range(depth) for e in entries
                 if i < len(e.queries)]  # round robin: the first expression of every video first
        result.overlays = write_overlays(output_uri, items, overlays, options, config.decoder_config())
    result.wall_seconds = time.perf_counter() - start
    record = run_record(result, {k: v for k, v in vars(spec).items() if v is not None}, output_uri, config, model,
                        argv)
    store.write_bytes(RUN_RECORD, json.dumps(record, indent=2).encode("utf-8"))
    return result


def _versions() -> dict[str, str]:
    versions = {}
    for name in ("vrseg", *PACKAGES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _redact_argument(argument: str) -> str:
    """``storage_options.secret=VALUE`` -> ``storage_options.secret=***`` (any credential-named key)."""
    key, equals, value = argument.partition("=")
    name = key.rsplit(".", 1)[-1]
    return f"{key}=***" if equals and redact({name: value})[name] == "***" else argument


def run_record(result: LabelRun, inputs: Mapping[str, Any], output_uri: str, config: LabelConfig,
               model: ModelConfig, argv: Sequence[str]) -> dict[str, Any]:
    """``run.json``: what ran, with what, on what, and what came of it (credentials redacted)."""
    return redact({
        "command": [_redact_argument(a) for a in argv],
        "inputs": dict(inputs),
        "output": output_uri,
        "config": to_plain(config),
        "model": {"config_file": config.model.uri(), "overrides": config.model.all_overrides(),
                  "config": to_plain(model)},
        "versions": _versions(),
        "counts": {"videos": result.total, "done": result.done, "skipped_committed": result.skipped,
                   "failed": result.failed, "expressions_done": result.expressions_done,
                   "masks_written": result.frames_done, "error_rows": result.error_rows,
                   "frame_store_fallbacks": result.store_fallbacks},
        "failures": {"by_kind": dict(sorted(result.errors_by_kind.items())), "first": result.errors},
        "stage_seconds": {k: round(v, 3) for k, v in sorted(result.stage_seconds.items())},
        "wall_seconds": round(result.wall_seconds, 3),
        "overlays": result.overlays,
    })


# ---------------------------------------------------------------------------------------- command line
def summary_line(result: LabelRun, command: str = "label") -> str:
    return (f"vrseg {command}: {result.done} done, {result.skipped} skipped as already done, {result.failed} failed "
            f"({result.error_rows} error rows), {result.expressions_done} expressions in "
            f"{result.wall_seconds:.1f}s")


def exit_status(command: str, result: LabelRun, output_uri: str, allow_failures: bool) -> int:
    """0, or 1 when some items failed (listed on stderr by kind) unless ``allow_failures``."""
    if not result.error_rows:
        return 0
    listing = ", ".join(f"{k} {n}" for k, n in sorted(result.errors_by_kind.items()))
    print(f"vrseg {command}: {'warning: ' if allow_failures else ''}{result.error_rows} failures ({listing}); "
          f"see {redact(join(output_uri, ERRORS_FILE))}", file=sys.stderr)
    return 0 if allow_failures else 1


def run(args: argparse.Namespace) -> int:
    try:
        spec = InputSpec(manifest=args.manifest, dataset_format=args.from_dataset, annotations=args.annotations,
                         split=args.split, videos=args.videos, expressions=args.expressions)
        config, model = load_label_config(args.config, args.overrides)
        result = label(spec, args.output, config, model, png=args.png, overlays=args.overlays,
                       address=args.address, progress=not args.no_progress, argv=sys.argv)
    except USER_ERRORS as exc:
        print(f"vrseg label: {redact(str(exc))}", file=sys.stderr)
        return 2
    print(summary_line(result))
    print(f"vrseg label: outputs under {redact(args.output)} (masks/, tracks/, errors/, run.json)")
    if args.report:
        print(report_line(args.output, resolved_storage_options(config.storage_options, [args.output])))
    return exit_status("label", result, args.output, args.allow_failures)


def report_line(output_uri: str, storage_options: Mapping[str, Any]) -> str:
    """``--report``: write the output's QA report and review list (``pipelines.label_report``, the defaults of
    ``vrseg report``) into it; the line saying where, or why there is none (no video committed)."""
    try:
        summary = write_label_report(output_uri, config=LabelReportConfig(storage_options=dict(storage_options)))
    except FormatError as exc:
        return f"vrseg label: no QA report: {redact(str(exc))}"
    return f"vrseg label: QA report {redact(summary.report)}, review list {redact(summary.review)}"


def add_job_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """The arguments of every Ray Data job over a labeling config (``vrseg label``, ``vrseg ground``): output
    root, config, cluster, failure policy, progress bar and config overrides."""
    parser.add_argument("--output", required=True, help="output root (path, file://, s3://)")
    parser.add_argument("--config", default=str(DEFAULT_LABEL_CONFIG), help=config_help)
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")
    parser.add_argument("--allow-failures", action="store_true", help="exit 0 even when some items failed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. pools.mllm.size=2")


def module_main(command: str, register_command: Callable[[argparse._SubParsersAction], None],
                argv: Sequence[str] | None) -> int:
    """``python -m pipelines.<command> ARGS`` = ``vrseg <command> ARGS``."""
    parser = argparse.ArgumentParser(prog="vrseg")
    register_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([command, *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("label", help="label a corpus with masks on Ray Data (resumable, exactly once)",
                                   description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="JSON lines / Parquet manifest (file or folder; path, file://, s3://)")
    source.add_argument("--from-dataset", choices=DATASET_FORMATS, help="label a benchmark read from --annotations")
    source.add_argument("--videos", help="a folder of video files (labeled with --expressions)")
    parser.add_argument("--annotations", help="benchmark root for --from-dataset")
    parser.add_argument("--split", default=None, help="benchmark split for --from-dataset (revos, refytvos, refdavis17)")
    parser.add_argument("--expressions", help="with --videos: .txt (one expression per line, every video) or .json")
    parser.add_argument("--png", action="store_true", help="also write the PNG layout under png/")
    parser.add_argument("--overlays", type=int, default=0, metavar="N", help="write N overlay videos under overlays/")
    parser.add_argument("--report", action="store_true",
                        help="then write report.html and review.jsonl into the output (as vrseg report --labels)")
    add_job_arguments(parser, "configs/label/<name>.yaml (default: the embedded default, configs/label/default.yaml: models/procedural)")
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.label ARGS`` = ``vrseg label ARGS``."""
    return module_main("label", register, argv)


if __name__ == "__main__":
    sys.exit(main())
