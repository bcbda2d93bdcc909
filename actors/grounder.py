"""The model stage of ``vrseg ground`` (temporal sentence grounding) as a Ray Data stage: ``[FIND]`` only.

``Grounder`` (GPU pool on a cluster) receives the ``LowresVideo`` rows of ``actors.frames.LowresDecoder``,
as labeling's ``MLLMWorker`` does, and runs the ``[FIND]`` pass of ``actors.engine.PromptStage`` alone (every
query of a video on one shared video prefix, MomentSeg 3.2.1), then ``actors.grounding.ground_expressions``
(the moment with theta = ``engine.find_threshold``, Appendix E.4, and the compact curve). No key frames and
no SAM2: the video is not opened again.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch

from actors.decode import FrameChunk
from actors.engine import EngineConfig, PromptStage
from actors.grounding import ground_expressions
from actors.mllm import inference_device, load_inference_model, queries_of
from actors.model.config import ModelConfig
from actors.video_rows import LowresVideo, StageRunner, VideoMoments, payload_of


class Grounder:
    """Ray Data stage (actor pool, ``num_gpus`` from config): ``LowresVideo`` -> ``VideoMoments``."""

    def __init__(self, model: ModelConfig, engine: EngineConfig, torch_threads: int = 1) -> None:
        torch.set_num_threads(torch_threads)
        self.stage = PromptStage(load_inference_model(model).mllm.to(inference_device()), engine)
        self.threshold = engine.find_threshold
        self.runner = StageRunner("ground", self.ground)

    def ground(self, row: dict[str, Any]) -> VideoMoments:
        lowres: LowresVideo = payload_of(row)
        queries = queries_of(row)
        relevance = self.stage.relevance(FrameChunk(lowres.indices, lowres.frames), [q.text for q in queries],
                                         lowres.num_frames, lowres.fps)
        moments = ground_expressions(relevance, lowres.indices, lowres.fps, self.threshold)
        return VideoMoments(lowres.num_frames, lowres.fps,
                            [(q.expr_id, m) for q, m in zip(queries, moments, strict=True)])

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.runner(batch)
