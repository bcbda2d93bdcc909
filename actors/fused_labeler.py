"""Both model halves of a labeling job in one Ray Data stage: ``[FIND]`` + sampling + ``[SEG]``, then SAM2.

``vrseg label`` runs the halves as two actor pools by default (``stages: split``): ``MLLMWorker`` and
``Propagator`` scale independently, but each opens the video, and the MLLM reads its key frames by random
access, which through long groups of pictures decodes most of the video again (measured on a
250-frame keyframe interval: 2.48 codec decodes per frame over the job's three decoding actors, up to
3 for one frame).
``FusedLabeler`` (``stages: fused``) holds the whole network: per video it sweeps the video once into a
frame store (``actors.frame_store``) and serves the MLLM's key frames, SAM2's key frames and both
propagation passes from it, so with the ``LowresDecoder``'s pass no frame is decoded more than twice,
whatever the keyframe interval (ARCHITECTURE step 2). It suits one GPU holding both models (Sa2VA keeps
them in one checkpoint anyway). The outputs equal the split stages' and the single-process engine's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import torch

from actors.decode import DecoderConfig
from actors.engine import EngineConfig
from actors.mllm import VideoPrompter, inference_device, load_inference_model, queries_of
from actors.model.config import ModelConfig
from actors.propagate import MaskOutput, VideoSegmenter
from actors.video_rows import StageRunner, VideoMasks, VideoSource, payload_of


class FusedLabeler:
    """Ray Data stage (actor pool, ``num_gpus`` from config): ``LowresVideo`` -> ``VideoMasks``."""

    def __init__(self, model: ModelConfig, engine: EngineConfig, decoder: DecoderConfig, output: MaskOutput,
                 storage_options: Mapping[str, Any] | None = None, torch_threads: int = 1) -> None:
        torch.set_num_threads(torch_threads)
        device = inference_device()
        network = load_inference_model(model).to(device)
        self.prompter = VideoPrompter(network.mllm, network.sam2.image_size, engine)
        self.segmenter = VideoSegmenter(network.sam2, engine, output, device, decoder, storage_options,
                                        network.mllm.location_map)
        self.runner = StageRunner("label", self.label)

    def label(self, row: dict[str, Any]) -> VideoMasks:
        source, queries = VideoSource.from_json(row["source"]), queries_of(row)
        with self.segmenter.video_frames(source) as frames:
            prompted = self.prompter.prompts(payload_of(row), [q.text for q in queries], frames)
            return self.segmenter.masks(row["video_id"], source, queries, prompted, frames)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.runner(batch)
