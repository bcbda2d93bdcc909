"""The MLLM half of a labeling job as a Ray Data stage: ``[FIND]`` + sampling + ``[SEG]``.

``MLLMWorker`` (GPU pool on a cluster) receives the low-res frames from ``actors.frames.LowresDecoder``,
loads the model once, then per video: ``[FIND]`` relevance over every frame with the video prefix shared by
all expressions (step 3) and the moment it predicts (``actors.grounding``), the sampler inline (step 4),
the union of key frames decoded by random access at the key-frame size, and ``[SEG]`` prompts (step 5).
It passes on only the samples, the relevance curves, the moments and the prompt embeddings (numpy); the
``Propagator`` re-opens the video for its own frames.

The sizes are those of ``actors.engine.VideoLabeler.label``: key frames are decoded at the engine's
``source_size`` (SAM2's input size, or larger where the key frames need it) and resized for the MLLM, so the
pipeline's outputs equal the single-process engine's on the same videos (random access and the
Propagator's frame store give the same pixels at the same size).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from actors.decode import DecoderConfig, FrameChunk, FrameSource, fit_within
from actors.engine import (
    EngineConfig,
    ExpressionQuery,
    KeyFrames,
    PromptStage,
    key_frame_union,
    require_tda_for_tks,
    sample_expressions,
    source_size,
)
from actors.frames import open_source
from actors.grounding import ExpressionMoment, ground_expressions
from actors.model.checkpoints import build_model
from actors.model.config import ModelConfig
from actors.model.segmllm import SegMLLM, SegModel, SegPrompts
from actors.sampling import SampleResult, make_sampler
from actors.scratch import remove_orphans
from actors.video_rows import LowresVideo, StageRunner, VideoSource, payload_of


def load_inference_model(config: ModelConfig) -> SegModel:
    """The network of ``config`` in eval mode (``build_model`` seeds what the config gives no weights for,
    so every actor and every run holds the same network)."""
    return build_model(config).eval()


def queries_of(row: dict[str, Any]) -> list[ExpressionQuery]:
    """The expressions of a labeling row, in order."""
    return [ExpressionQuery(q["expr_id"], q["text"]) for q in json.loads(row["queries"])]


def inference_device() -> torch.device:
    """The GPU Ray gave this actor (``num_gpus`` > 0 in its pool), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class VideoPrompts:
    """``MLLMWorker``'s output: per expression its sample, ``[FIND]`` curve (T,), moment and SAM2 prompts."""

    num_frames: int
    samples: list[SampleResult]
    relevance: np.ndarray  # (E, T) float32
    moments: list[ExpressionMoment]
    prompts: list[dict[str, np.ndarray]]  # SegPrompts fields (batch of one) as numpy, None fields left out

    def seg_prompts(self, device: torch.device) -> list[SegPrompts]:
        return [SegPrompts(**{k: torch.from_numpy(v).to(device) for k, v in p.items()}) for p in self.prompts]


def _prompts_to_numpy(prompts: SegPrompts) -> dict[str, np.ndarray]:
    return {k: v.float().cpu().numpy() for k, v in vars(prompts).items() if v is not None}


class VideoPrompter:
    """The MLLM half of one video's job: ``[FIND]`` relevance, sampling, key frames, ``[SEG]`` prompts."""

    def __init__(self, mllm: SegMLLM, sam2_image_size: int, engine: EngineConfig) -> None:
        require_tda_for_tks(engine, mllm)
        self.stage = PromptStage(mllm, engine)
        self.sam2_image_size, self.engine = sam2_image_size, engine
        self.sampler = make_sampler(engine.sampling)

    def prompts(self, lowres: LowresVideo, texts: list[str], frames: FrameSource) -> VideoPrompts:
        """``frames``: the video, read at the engine's ``source_size`` for the key frames."""
        find_frames = FrameChunk(lowres.indices, lowres.frames)
        relevance = self.stage.relevance(find_frames, texts, lowres.num_frames, lowres.fps)
        moments = ground_expressions(relevance, lowres.indices, lowres.fps, self.engine.find_threshold)
        samples = sample_expressions(self.sampler, relevance, self.engine.sampling.k, len(lowres.indices))
        union = key_frame_union(samples)
        height, width = lowres.height, lowres.width
        decoded = KeyFrames(union, frames.get(union, source_size(self.engine, self.sam2_image_size, height, width)))
        mllm_frames = decoded.resized(fit_within(height, width, self.engine.keyframe_side))
        prompts = self.stage.prompts(samples, texts, mllm_frames, find_frames, lowres.num_frames, lowres.fps)
        return VideoPrompts(lowres.num_frames, samples, relevance.astype(np.float32), moments,
                            [_prompts_to_numpy(p) for p in prompts])


class MLLMWorker:
    """Ray Data stage (actor pool, ``num_gpus`` from config): ``LowresVideo`` -> ``VideoPrompts``; the key
    frames are read from the video by random access."""

    def __init__(self, model: ModelConfig, engine: EngineConfig, decoder: DecoderConfig,
                 storage_options: Mapping[str, Any] | None = None, torch_threads: int = 1) -> None:
        torch.set_num_threads(torch_threads)
        remove_orphans(decoder.scratch_dir)  # what a killed predecessor on this node left
        network = load_inference_model(model)
        self.prompter = VideoPrompter(network.mllm.to(inference_device()), network.sam2.image_size, engine)
        del network.sam2  # the Propagator holds SAM2
        self.decoder, self.storage_options = decoder, storage_options
        self.runner = StageRunner("mllm", self.prompt)

    def prompt(self, row: dict[str, Any]) -> VideoPrompts:
        texts = [q.text for q in queries_of(row)]
        with open_source(VideoSource.from_json(row["source"]), self.storage_options, self.decoder) as video:
            return self.prompter.prompts(payload_of(row), texts, video)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.runner(batch)
