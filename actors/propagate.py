"""The SAM2 half of a labeling job as a Ray Data stage: key-frame masks from the prompts, then BAP.

``Propagator`` holds SAM2 (loaded once per actor). Per video it opens the video itself and decodes it once
more into a local frame store (``actors.frame_store``) at the engine's source size, takes the key frames
from it (the pixels ``MLLMWorker`` read by random access), runs ``actors.engine.MaskStage.segment``
(key-frame masks, optional TKS, BAP forward and backward over frames streamed in chunks) into a
``MaskSpool`` on local disk, and hands the spool with the tracks' metadata to the injected ``MaskOutput``,
which writes the video's mask and track files. Its output row carries only the tracks' metadata and the
written files' records: memory and the object store stay bounded whatever the video's length (ARCHITECTURE
steps 6-7).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import pyarrow as pa
import torch

from actors.decode import DecoderConfig, FrameSource
from actors.engine import EngineConfig, ExpressionQuery, KeyFrames, MaskStage, key_frame_union
from actors.frame_store import StoreFile, frame_store, random_access_fallback
from actors.frames import open_source
from actors.mask_spool import MaskSpool
from actors.mllm import VideoPrompts, inference_device, load_inference_model, queries_of
from actors.model.checkpoints import load_location_map, load_sam2_decoder
from actors.model.config import ModelConfig
from actors.model.heads import LocationMap
from actors.model.sam2_bridge import Sam2Bridge, build_sam2
from actors.scratch import remove_orphans
from actors.video_rows import ExpressionTrack, StageRunner, VideoMasks, VideoSource, payload_of


class MaskOutput(Protocol):
    """Writes one video's spooled masks and its tracks (one per expression, in spool order) where the job's
    outputs go; returns records of the files written."""

    def write(self, video_id: str, source: VideoSource, size: tuple[int, int], tracks: list[ExpressionTrack],
              spool: MaskSpool) -> list[Any]: ...


def load_sam2(config: ModelConfig) -> tuple[Sam2Bridge, LocationMap | None]:
    """SAM2 of ``config`` alone: built (seeded) with its checkpoint and fine-tuned decoder, and the model's
    ``mllm.location_map`` head when it has one. Sa2VA keeps SAM2 inside its single checkpoint, so that case
    builds the whole network and keeps its SAM2."""
    if config.mllm.sa2va_uri is not None:
        network = load_inference_model(config)
        return network.sam2, network.mllm.location_map
    sam2 = build_sam2(config.sam2, config.mllm.storage_options)
    if config.sam2_decoder_uri is not None:
        load_sam2_decoder(sam2, config.sam2_decoder_uri, config.mllm.storage_options)
    return sam2.eval(), load_location_map(config, sam2.feature_channels, sam2.prompt_dim)


class VideoSegmenter:
    """The SAM2 half of one video's job: key-frame masks and BAP over a frame store, masks spooled and
    handed to the ``MaskOutput``. Holds the worker's ``StoreFile`` (reused video after video)."""

    def __init__(self, sam2: Sam2Bridge, engine: EngineConfig, output: MaskOutput, device: torch.device,
                 decoder: DecoderConfig, storage_options: Mapping[str, Any] | None = None,
                 location_map: LocationMap | None = None) -> None:
        remove_orphans(decoder.scratch_dir)  # what a killed predecessor on this node left
        self.stage = MaskStage(sam2, engine, location_map)
        self.output, self.device = output, device
        self.decoder, self.storage_options = decoder, storage_options
        self.store_file = StoreFile(decoder.scratch_dir)

    @contextmanager
    def video_frames(self, source: VideoSource) -> Iterator[FrameSource]:
        """``source``'s video swept into the worker's frame store at the engine's source size."""
        with open_source(source, self.storage_options, self.decoder) as video:
            with frame_store(video, self.stage.source_size(video.height, video.width), self.store_file) as frames:
                yield frames

    def masks(self, video_id: str, source: VideoSource, queries: list[ExpressionQuery], prompted: VideoPrompts,
              frames: FrameSource) -> VideoMasks:
        """``frames``: the video at ``source_size`` (a ``frame_store``: read in both directions)."""
        size = self.stage.source_size(frames.height, frames.width)
        union = key_frame_union(prompted.samples)
        decoded = KeyFrames(union, frames.get(union, size))
        with MaskSpool(len(queries), frames.num_frames, self.decoder.scratch_dir) as spool:
            masks = self.stage.segment(frames, prompted.samples, prompted.seg_prompts(self.device), decoded, spool)
            tracks = [ExpressionTrack(query.expr_id, query.text, out.anchor, out.key_frames, out.cleared, moment,
                                      out.key_scores, out.reseeds, out.pre_update)
                      for query, out, moment in zip(queries, masks, prompted.moments, strict=True)]
            files = self.output.write(video_id, source, (frames.height, frames.width), tracks, spool)
        return VideoMasks(frames.num_frames, frames.fps, frames.height, frames.width, tracks, files,
                          random_access_fallback(frames))


class Propagator:
    """Ray Data stage (actor pool, ``num_gpus`` from config): ``VideoPrompts`` -> ``VideoMasks``."""

    def __init__(self, model: ModelConfig, engine: EngineConfig, decoder: DecoderConfig, output: MaskOutput,
                 storage_options: Mapping[str, Any] | None = None, torch_threads: int = 1) -> None:
        torch.set_num_threads(torch_threads)
        device = inference_device()
        sam2, location_map = load_sam2(model)
        self.segmenter = VideoSegmenter(sam2.to(device), engine, output, device, decoder, storage_options,
                                        None if location_map is None else location_map.to(device))
        self.runner = StageRunner("propagate", self.propagate)

    def propagate(self, row: dict[str, Any]) -> VideoMasks:
        source = VideoSource.from_json(row["source"])
        with self.segmenter.video_frames(source) as frames:
            return self.segmenter.masks(row["video_id"], source, queries_of(row), payload_of(row), frames)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.runner(batch)
