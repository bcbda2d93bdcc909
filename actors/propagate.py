"""The SAM2 half of a labeling job as a Ray Data stage: key-frame masks from the prompts, then BAP.

``Propagator`` holds SAM2 (loaded once per actor). Per video it opens the video itself, decodes the union
of key frames by random access (at the size ``MLLMWorker`` used, resized to SAM2's input: the engine's
exact path), runs ``actors.engine.MaskStage.segment`` (key-frame masks, optional TKS, BAP forward and
backward over frames streamed in chunks: memory bounded whatever the length) and returns one COCO RLE and
score per (expression, frame) (ARCHITECTURE step 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from actors.decode import DecoderConfig, fit_within
from actors.engine import EngineConfig, KeyFrames, MaskStage, key_frame_union
from actors.frames import open_source
from actors.mllm import VideoPrompts, inference_device, key_side, load_inference_model, queries_of
from actors.model.checkpoints import load_sam2_decoder
from actors.model.config import ModelConfig
from actors.model.sam2_bridge import Sam2Bridge, build_sam2
from actors.video_rows import ExpressionTrack, StageRunner, VideoMasks, VideoSource, payload_of


def load_sam2(config: ModelConfig) -> Sam2Bridge:
    """SAM2 of ``config`` alone: built (seeded) with its checkpoint and fine-tuned decoder. Sa2VA keeps SAM2
    inside its single checkpoint, so that case builds the whole network and keeps its SAM2."""
    if config.mllm.sa2va_uri is not None:
        return load_inference_model(config).sam2
    sam2 = build_sam2(config.sam2)
    if config.sam2_decoder_uri is not None:
        load_sam2_decoder(sam2.sam, config.sam2_decoder_uri, config.mllm.storage_options)
    return sam2.eval()


class Propagator:
    """Ray Data stage (actor pool, ``num_gpus`` from config): ``VideoPrompts`` -> ``VideoMasks``."""

    def __init__(self, model: ModelConfig, engine: EngineConfig, decoder: DecoderConfig,
                 storage_options: Mapping[str, Any] | None = None, torch_threads: int = 1) -> None:
        torch.set_num_threads(torch_threads)
        self.device = inference_device()
        self.stage = MaskStage(load_sam2(model).to(self.device), engine)
        self.key_side = key_side(engine, self.stage.frame_size[0])
        self.decoder, self.storage_options = decoder, storage_options
        self.runner = StageRunner("propagate", self.propagate)

    def propagate(self, row: dict[str, Any]) -> VideoMasks:
        prompted: VideoPrompts = payload_of(row)
        queries = queries_of(row)
        with open_source(VideoSource.from_json(row["source"]), self.storage_options, self.decoder) as video:
            union = key_frame_union(prompted.samples)
            decoded = KeyFrames(union, video.get(union, fit_within(video.height, video.width, self.key_side)))
            masks = self.stage.segment(video, prompted.samples, prompted.seg_prompts(self.device),
                                       decoded.resized(self.stage.frame_size))
            height, width, num_frames, fps = video.height, video.width, video.num_frames, video.fps
        tracks = [
            ExpressionTrack(query.expr_id, [r["counts"] for r in out.rles], out.scores.astype(np.float32),
                            out.anchor, out.key_frames, out.reseeded)
            for query, out in zip(queries, masks, strict=True)
        ]
        return VideoMasks(num_frames, fps, height, width, tracks)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.runner(batch)
