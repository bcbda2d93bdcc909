"""SegMLLM: Qwen2.5-VL with ``[SEG]``, ``[FIND]``, ``<SEG>``, ``<TAK>`` and their heads; SegModel: SegMLLM + SAM2.

Inputs follow MomentSeg 3.2.1: low-resolution uniformly sampled frames enter as a Qwen2.5-VL *video*
(at most ``video_tokens_per_frame`` LLM tokens per temporal token; the temporal patch of 2 halves the
number of temporal tokens) and high-resolution key frames enter as *images*. Answers are teacher-forced
(``prompts.py``): the hidden state of the special token in the answer is read, nothing is generated.

Vision is encoded once per call and scattered into the prompt embeddings; the language model then runs
either on whole sequences (training, the reference path) or on one shared prefix (system turn + visuals,
KV cache computed once) followed by batches of per-expression suffixes (inference). Both give the same
hidden states (tested).

Trainable parts (``enable_lora``): LoRA on the decoder layers' linear projections and peft's *trainable
tokens* for the added token rows of the input embedding (and of the untied LM head): peft keeps a
separate trainable copy of just those rows and writes them over the frozen matrix in the forward pass, so
base rows stay frozen and the adapter directory carries the new rows. Heads are always trainable; the
vision tower and the LLM base are frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import DynamicCache, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from actors.model.config import TRAINING_MODES, MLLMConfig
from actors.model.heads import (
    Decoupler,
    FindHead,
    LocationMap,
    RunningStandardization,
    TextPrompt,
    build_location_map,
    interpolate_to_frames,
    seg_projection,
    temporal_dynamic_aggregation,
)
from actors.model.losses import (
    LossConfig,
    adversarial_loss,
    answer_lm_loss,
    find_matching_loss,
    location_map_loss,
    mask_bce_loss,
    mask_dice_loss,
    object_presence_loss,
    weighted_total,
)
from actors.model.prompts import (
    ADDED_TOKENS,
    FIND_TOKEN,
    FRAME_SEG_TOKEN,
    SEG_TOKEN,
    TAK_TOKEN,
    TokenizedPrompts,
    find_conversation,
    seg_conversation,
    tokenize_conversations,
)
from actors.model.sam2_bridge import FrameBatch, ImageFeatures, MaskPrediction, Sam2Bridge

Frames = np.ndarray | torch.Tensor  # (T, H, W, 3) uint8 RGB
MASK_LOSS_PARTS = ("mask_bce", "mask_dice", "mask_object", "mask_location")  # SegModel._mask_losses' order
RESIZE_SEED = 0


@dataclass
class VisualInputs:
    """Processor outputs of one call's visuals (an optional low-res video, then optional key-frame images).

    ``video_token_grid_thw``: the grid the LLM sees for the video (tokens, rope positions): the vision
    tower's ``video_grid_thw``, or with mean-pooled temporal tokens (VideoLISA) one merged token per
    temporal index, ``(t, merge, merge)``.
    """

    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    video_token_grid_thw: torch.Tensor | None = None
    second_per_grid_ts: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    num_frames: int = 0


@dataclass
class SegPrompts:
    """SAM2 prompt embeddings for E expressions.

    ``prompts`` (E, D): what SAM2 is prompted with: the ``[SEG]`` projection, or with TDA the fused ``<TAK>``.
    ``frame_prompts`` (E, N, D) projected per-key-frame ``<SEG>`` and ``frame_similarity`` (E, N)
    cos(<SEG>_i, <TAK>) (TDA only; TKS scores frames with them). ``text_prompts``/``visual_prompts`` (E, D):
    the DeSa2VA decoupled prompts (decoupling only; the engine decodes both and fuses the masks).
    """

    prompts: torch.Tensor
    frame_prompts: torch.Tensor | None = None
    frame_similarity: torch.Tensor | None = None
    text_prompts: torch.Tensor | None = None
    visual_prompts: torch.Tensor | None = None


def decode_seg_prompts(
    sam2: Sam2Bridge,
    frames: FrameBatch | ImageFeatures,
    prompts: SegPrompts,
    reprompt: bool = False,
    location_map: LocationMap | None = None,
) -> MaskPrediction:
    """Masks of one expression's ``prompts`` on ``frames`` (a batch of one prompt, shared by the frames).

    Plain prompts: SAM2 decodes ``prompts.prompts``. Decoupled prompts (DeSa2VA 3.2-3.3): the text prompt
    and the visual prompt are each decoded and the two predictions fused by averaging (logits, IoUs, object
    scores; the paper's summary names the fusion but not its operator). ``reprompt`` (DeSa2VA mask
    re-prompting, one iteration: "a single iteration suffices"): the fused low-res logits become SAM2's dense
    prompt and the *same* prompts are decoded again ("keeping other inputs fixed"), then fused the same way.
    With decoupling, ``prompts.prompts`` (the ``[SEG]`` projection, which the decoupled losses never train) is
    not read. ``location_map`` (``mllm.location_map``) makes each first decoding's dense prompt from its prompt.
    Differentiable w.r.t. the prompts, so training may run it too.
    """
    sources = [prompts.prompts] if prompts.text_prompts is None else [prompts.text_prompts, prompts.visual_prompts]

    def fused(dense: torch.Tensor | None) -> MaskPrediction:
        predictions = [vars(sam2.decode_masks(frames, p, dense_prompt=dense, location_map=location_map)) for p in sources]
        return MaskPrediction(
            **{
                k: None if predictions[0][k] is None else sum(p[k] for p in predictions) / len(predictions)
                for k in predictions[0]
            }
        )

    prediction = fused(None)
    return fused(prediction.low_res_logits) if reprompt else prediction


@dataclass
class TrainSample:
    """One training example. RefVOS when ``key_frames``/``masks`` are set, TSG when ``frame_labels`` is set
    (both may be set: both conversations run).

    ``lowres_frames`` (L, h, w, 3) uint8: uniformly sampled frames (temporal tokens).
    ``key_frames`` (N, H, W, 3) uint8 and ``masks`` (N, H, W) {0, 1}: frames to segment and their targets.
    ``frame_labels`` (L,) {0, 1}: is low-res frame j inside the moment; ``frame_valid`` (L,) bool: Omega.
    """

    expression: str
    lowres_frames: Frames
    key_frames: Frames | None = None
    masks: torch.Tensor | None = None
    frame_labels: torch.Tensor | None = None
    frame_valid: torch.Tensor | None = None
    template: int = 0


@dataclass
class MLLMTrainOutputs:
    """What one TSG/RefVOS conversation of a ``TrainSample`` yields for the losses."""

    lm_logits: torch.Tensor
    lm_labels: torch.Tensor
    find_logits: torch.Tensor | None = None
    seg: SegPrompts | None = None
    text_reference: torch.Tensor | None = None
    visual_reference: torch.Tensor | None = None


def _frames_tensor(frames: Frames, name: str) -> torch.Tensor:
    """(T, H, W, 3) uint8 array/tensor -> (T, 3, H, W) uint8 tensor; errors name the input."""
    tensor = torch.as_tensor(np.asarray(frames)) if isinstance(frames, np.ndarray) else frames
    if (
        not isinstance(tensor, torch.Tensor)
        or tensor.ndim != 4
        or tensor.shape[-1] != 3
        or tensor.dtype != torch.uint8
    ):
        shape = tuple(getattr(tensor, "shape", ()))
        raise ValueError(
            f"{name} must be (T, H, W, 3) uint8 RGB frames, got shape {shape} {getattr(tensor, 'dtype', '')}"
        )
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} has no frames")
    return tensor.permute(0, 3, 1, 2).contiguous()


def _check_expressions(expressions: Sequence[str]) -> list[str]:
    if isinstance(expressions, str) or not expressions:
        raise ValueError("expressions must be a non-empty list of strings")
    for index, text in enumerate(expressions):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"expression {index} is empty or not a string: {text!r}")
    return list(expressions)


class SegMLLM(nn.Module):
    """Qwen2.5-VL + processor + added tokens + ``[SEG]``/``[FIND]`` heads (+ TDA, decoupler options)."""

    def __init__(
        self,
        qwen: Qwen2_5_VLForConditionalGeneration,
        processor: Qwen2_5_VLProcessor,
        config: MLLMConfig,
        prompt_dim: int,
        feature_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.processor = processor
        self.config = config
        tokenizer = processor.tokenizer
        missing = [t for t in ADDED_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens(
                {"additional_special_tokens": missing}, replace_extra_special_tokens=False
            )
        self.token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS}
        rows = qwen.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RESIZE_SEED)
                qwen.resize_token_embeddings(len(tokenizer))
        qwen.requires_grad_(False)
        self.qwen: Qwen2_5_VLForConditionalGeneration | PeftModel = qwen
        hidden = qwen.config.text_config.hidden_size
        dtype = qwen.get_input_embeddings().weight.dtype
        self.seg_proj = seg_projection(hidden, prompt_dim).to(dtype)
        norm = config.seg_norm
        self.seg_norm = RunningStandardization(hidden, norm.momentum, norm.shrinkage) if norm.enabled else None
        self.find_head = FindHead(hidden, config.find_dim, config.find_tau).to(dtype)
        if config.location_map.enabled and feature_channels is None:
            raise ValueError("mllm.location_map needs SAM2's feature channels (feature_channels)")
        self.location_map = build_location_map(config.location_map, list(feature_channels or []), prompt_dim, dtype)
        self.text_prompt = TextPrompt(hidden, prompt_dim).to(dtype) if config.text_prompt else None
        self.decoupler = (
            Decoupler(hidden, prompt_dim, config.decouple.grl_scale, config.decouple.club_hidden).to(dtype)
            if config.decouple.enabled
            else None
        )
        vision = qwen.config.vision_config
        self.temporal_patch_size = int(vision.temporal_patch_size)
        self.merge_size = int(vision.spatial_merge_size)
        self.patch_size = int(vision.patch_size)
        if config.gradient_checkpointing:
            qwen.gradient_checkpointing_enable()

    # ------------------------------------------------------------------ structure
    @property
    def hf_model(self) -> Qwen2_5_VLForConditionalGeneration:
        """The transformers model (inside the peft wrapper when LoRA is on)."""
        return self.qwen.get_base_model() if isinstance(self.qwen, PeftModel) else self.qwen

    @property
    def hidden_size(self) -> int:
        return self.hf_model.config.text_config.hidden_size

    def trainable_token_indices(self) -> dict[str, list[int]]:
        """peft ``trainable_token_indices``: the added rows of the input embedding (and untied LM head)."""
        ids = sorted(self.token_ids.values())
        if self.hf_model.config.tie_word_embeddings:
            return {"embed_tokens": ids}
        return {"embed_tokens": ids, "lm_head": ids}

    def lora_config(self) -> LoraConfig:
        """LoRA on the LLM decoder's linear layers only (the vision tower stays frozen), plus the new rows."""
        lora = self.config.lora
        names = "|".join(lora.target_modules)
        return LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({names})",
            trainable_token_indices=self.trainable_token_indices(),
        )

    def enable_lora(self) -> None:
        """Wrap the backbone with fresh LoRA adapters + trainable new token rows (for training)."""
        if isinstance(self.qwen, PeftModel):
            raise RuntimeError("LoRA adapters are already attached")
        self.qwen = get_peft_model(self.qwen, self.lora_config())

    def attach_adapter(self, local_dir: str, trainable: bool = False) -> None:
        """Wrap the backbone with a saved PEFT adapter directory (LoRA + new token rows)."""
        if isinstance(self.qwen, PeftModel):
            raise RuntimeError("LoRA adapters are already attached")
        self.qwen = PeftModel.from_pretrained(self.qwen, local_dir, is_trainable=trainable)

    def heads(self) -> nn.ModuleDict:
        """The projection heads, keyed as in ``heads.safetensors``."""
        modules: dict[str, nn.Module] = {"seg_proj": self.seg_proj, "find_head": self.find_head}
        if self.seg_norm is not None:
            modules["seg_norm"] = self.seg_norm
        if self.location_map is not None:
            modules["location_map"] = self.location_map
        if self.text_prompt is not None:
            modules["text_prompt"] = self.text_prompt
        if self.decoupler is not None:
            modules["decoupler"] = self.decoupler
        return nn.ModuleDict(modules)

    # ------------------------------------------------------------------ inputs
    def _video_inputs(self, frames: Frames, fps: float | None) -> dict[str, torch.Tensor]:
        video = _frames_tensor(frames, "low-resolution video")
        unit = (self.patch_size * self.merge_size) ** 2
        size = {"shortest_edge": unit, "longest_edge": self.config.video_tokens_per_frame * unit}
        out = self.processor.video_processor(
            videos=[video], size=size, cap_pixels_per_frame=False, do_sample_frames=False, return_tensors="pt"
        )
        seconds = self.temporal_patch_size / (fps or self.config.video_fps)
        grid = out["video_grid_thw"]
        token_grid = grid.clone()
        if self.config.video_token_pooling == "mean":
            token_grid[:, 1:] = self.merge_size
        return {
            "pixel_values_videos": out["pixel_values_videos"],
            "video_grid_thw": grid,
            "video_token_grid_thw": token_grid,
            "second_per_grid_ts": torch.tensor([seconds]),
        }

    def _image_inputs(self, frames: Frames) -> dict[str, torch.Tensor]:
        images = _frames_tensor(frames, "key frames")
        unit = (self.patch_size * self.merge_size) ** 2
        size = {"shortest_edge": unit, "longest_edge": self.config.image_max_tokens * unit}
        out = self.processor.image_processor(images=list(images), size=size, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def visual_inputs(
        self, lowres_video: Frames | None = None, key_frames: Frames | None = None, fps: float | None = None
    ) -> VisualInputs:
        """Processor outputs for an optional low-res video and optional key frames."""
        visual = VisualInputs()
        if lowres_video is not None:
            for key, value in self._video_inputs(lowres_video, fps).items():
                setattr(visual, key, value)
            visual.num_frames = (
                int(np.asarray(lowres_video).shape[0])
                if isinstance(lowres_video, np.ndarray)
                else int(lowres_video.shape[0])
            )
        if key_frames is not None:
            for key, value in self._image_inputs(key_frames).items():
                setattr(visual, key, value)
        return visual

    def _tokens_per_visual(self, grid: torch.Tensor | None) -> list[int]:
        return [] if grid is None else [int(g.prod()) // self.merge_size**2 for g in grid]

    def _tokenize(self, conversations: list, visual: VisualInputs) -> TokenizedPrompts:
        return tokenize_conversations(
            self.processor,
            conversations,
            image_tokens=self._tokens_per_visual(visual.image_grid_thw),
            video_tokens=self._tokens_per_visual(visual.video_token_grid_thw),
        )

    # ------------------------------------------------------------------ language model
    def _device(self) -> torch.device:
        return self.hf_model.get_input_embeddings().weight.device

    def _vision_embeddings(self, visual: VisualInputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Merged vision-tower outputs: (video tokens, H) and (image tokens, H), in sequence order."""
        model, device = self.hf_model.model, self._device()
        video = image = None
        if visual.pixel_values_videos is not None:
            out = model.get_video_features(
                visual.pixel_values_videos.to(device), visual.video_grid_thw.to(device)
            )
            video = torch.cat(out.pooler_output, dim=0)
            if self.config.video_token_pooling == "mean":  # VideoLISA: one token per temporal index
                video = video.view(int(visual.video_grid_thw[0, 0]), -1, video.shape[-1]).mean(1)
        if visual.pixel_values is not None:
            out = model.get_image_features(visual.pixel_values.to(device), visual.image_grid_thw.to(device))
            image = torch.cat(out.pooler_output, dim=0)
        return video, image

    def _embed(
        self, ids: torch.Tensor, vision: tuple[torch.Tensor | None, torch.Tensor | None]
    ) -> torch.Tensor:
        """Token embeddings (B, L, H) with the vision tokens' placeholders replaced by the vision outputs."""
        config = self.hf_model.config
        embeds = self.hf_model.get_input_embeddings()(ids)
        for token_id, features in ((config.video_token_id, vision[0]), (config.image_token_id, vision[1])):
            if features is not None:
                mask = (ids == token_id)[..., None].expand_as(embeds)
                embeds = embeds.masked_scatter(mask, features.to(embeds.dtype).repeat(ids.shape[0], 1))
        return embeds

    def _positions(self, ids: list[int], visual: VisualInputs) -> torch.Tensor:
        """Qwen2.5-VL 3D rope positions (3, L) of one full sequence (library's ``get_rope_index``)."""
        config = self.hf_model.config
        device = self._device()
        tensor = torch.tensor([ids], device=device)
        types = torch.zeros_like(tensor, dtype=torch.int32)
        types[tensor == config.image_token_id] = 1
        types[tensor == config.video_token_id] = 2
        positions, _ = self.hf_model.model.get_rope_index(
            tensor,
            mm_token_type_ids=types,
            image_grid_thw=None if visual.image_grid_thw is None else visual.image_grid_thw.to(device),
            video_grid_thw=None if visual.video_token_grid_thw is None else visual.video_token_grid_thw.to(device),
            second_per_grid_ts=None
            if visual.second_per_grid_ts is None
            else visual.second_per_grid_ts.to(device),
        )
        return positions[:, 0]

    def _language_model(self) -> nn.Module:
        return self.hf_model.model.language_model

    def hidden_states_full(
        self, tokens: TokenizedPrompts, visual: VisualInputs
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Reference path: each expression's whole sequence run on its own.

        Returns per expression the prefix states (P, H) and the suffix states (S_e, H).
        """
        vision = self._vision_embeddings(visual)
        prefixes, suffixes = [], []
        prefix_len = len(tokens.prefix_ids)
        for suffix in tokens.suffix_ids:
            ids = tokens.prefix_ids + suffix
            tensor = torch.tensor([ids], device=self._device())
            out = self._language_model()(
                inputs_embeds=self._embed(tensor, vision),
                position_ids=self._positions(ids, visual)[:, None, :],
                use_cache=False,
            )
            hidden = out.last_hidden_state[0]
            prefixes.append(hidden[:prefix_len])
            suffixes.append(hidden[prefix_len:])
        return prefixes, suffixes

    def hidden_states_shared(
        self, tokens: TokenizedPrompts, visual: VisualInputs
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Shared path: the prefix runs once (its KV cache is kept), then suffixes run in right-padded
        batches of ``suffix_batch`` on a copy of that cache. Returns prefix states (P, H), suffix states."""
        device = self._device()
        vision = self._vision_embeddings(visual)
        prefix = torch.tensor([tokens.prefix_ids], device=device)
        prefix_len = prefix.shape[1]
        full_positions = [self._positions(tokens.prefix_ids + s, visual) for s in tokens.suffix_ids]
        out = self._language_model()(
            inputs_embeds=self._embed(prefix, vision),
            position_ids=full_positions[0][:, None, :prefix_len],
            use_cache=True,
        )
        prefix_hidden, cache = out.last_hidden_state[0], out.past_key_values
        pad = self.processor.tokenizer.pad_token_id
        suffixes: list[torch.Tensor] = []
        step = self.config.suffix_batch
        for start in range(0, len(tokens.suffix_ids), step):
            chunk = tokens.suffix_ids[start : start + step]
            batch, width = len(chunk), max(len(s) for s in chunk)
            ids = torch.full((batch, width), pad, device=device)
            mask = torch.zeros((batch, prefix_len + width), dtype=torch.long, device=device)
            positions = torch.zeros((3, batch, width), dtype=torch.long, device=device)
            mask[:, :prefix_len] = 1
            for row, suffix in enumerate(chunk):
                ids[row, : len(suffix)] = torch.tensor(suffix, device=device)
                mask[row, prefix_len : prefix_len + len(suffix)] = 1
                suffix_positions = full_positions[start + row][:, prefix_len:]
                positions[:, row, : len(suffix)] = suffix_positions
                positions[:, row, len(suffix) :] = suffix_positions[:, -1:]
            layers = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v, *_ in cache]
            out = self._language_model()(
                inputs_embeds=self._embed(ids, (None, None)),
                attention_mask=mask,
                position_ids=positions,
                past_key_values=DynamicCache(ddp_cache_data=layers),
                use_cache=True,
            )
            suffixes += [out.last_hidden_state[row, : len(s)] for row, s in enumerate(chunk)]
        return prefix_hidden, suffixes

    # ------------------------------------------------------------------ readouts
    def _frame_token_states(
        self, prefix_ids: list[int], prefix_hidden: torch.Tensor, visual: VisualInputs
    ) -> torch.Tensor:
        """LLM output states of the video tokens grouped per temporal index: (L_t, tokens per index, H)."""
        ids = torch.tensor(prefix_ids, device=prefix_hidden.device)
        states = prefix_hidden[ids == self.hf_model.config.video_token_id]
        t, h, w = (int(x) for x in visual.video_token_grid_thw[0])
        return states.view(t, (h // self.merge_size) * (w // self.merge_size), -1)

    def _states_at(self, suffix_ids: list[int], suffix_hidden: torch.Tensor, token: str) -> torch.Tensor:
        """Hidden states at the positions of ``token`` in one suffix: (count, H)."""
        ids = torch.tensor(suffix_ids, device=suffix_hidden.device)
        states = suffix_hidden[ids == self.token_ids[token]]
        if states.shape[0] == 0:
            raise RuntimeError(f"answer has no {token} token")
        return states

    def _head_input(self, states: torch.Tensor) -> torch.Tensor:
        return states.to(self.seg_proj[0].weight.dtype)

    def _seg_input(self, states: torch.Tensor) -> torch.Tensor:
        """``[SEG]``/``<SEG>``/``<TAK>`` states as the projection (and the decoupler) take them."""
        states = self._head_input(states)
        return states if self.seg_norm is None else self.seg_norm(states)

    def _find_logits(
        self,
        tokens: TokenizedPrompts,
        prefix_hidden: torch.Tensor,
        suffix_hidden: list[torch.Tensor],
        visual: VisualInputs,
    ) -> torch.Tensor:
        frames = self._frame_token_states(tokens.prefix_ids, prefix_hidden, visual)
        finds = torch.cat(
            [
                self._states_at(s, h[: len(s)], FIND_TOKEN)[-1:]
                for s, h in zip(tokens.suffix_ids, suffix_hidden, strict=True)
            ]
        )
        temporal = self.find_head(self._head_input(finds), self._head_input(frames))  # (E, L_t)
        return interpolate_to_frames(temporal, visual.num_frames, self.temporal_patch_size)  # (E, T)

    def _seg_prompts(
        self, tokens: TokenizedPrompts, suffix_hidden: list[torch.Tensor], expressions: Sequence[str]
    ) -> SegPrompts:
        """The SAM2 prompts of the expressions' ``[SEG]`` (or ``<SEG>``/``<TAK>``) states, plus with
        ``mllm.text_prompt`` each expression's ``TextPrompt`` (added to the prompt SAM2 decodes)."""
        pairs = list(zip(tokens.suffix_ids, suffix_hidden, strict=True))
        if self.config.tda.enabled:
            frame_states = torch.stack(
                [self._states_at(s, h, FRAME_SEG_TOKEN) for s, h in pairs]
            )  # (E, N, H)
            tak_states = torch.cat([self._states_at(s, h, TAK_TOKEN)[-1:] for s, h in pairs])  # (E, H)
            frame_prompts = self.seg_proj(self._seg_input(frame_states))
            fused, similarity = temporal_dynamic_aggregation(
                frame_prompts, self.seg_proj(self._seg_input(tak_states)), self.config.tda.alpha
            )
            result = SegPrompts(prompts=fused, frame_prompts=frame_prompts, frame_similarity=similarity)
            seg_states = tak_states
        else:
            seg_states = torch.cat([self._states_at(s, h, SEG_TOKEN)[-1:] for s, h in pairs])  # (E, H)
            result = SegPrompts(prompts=self.seg_proj(self._seg_input(seg_states)))
        if self.decoupler is not None:
            result.text_prompts, result.visual_prompts = self.decoupler(self._seg_input(seg_states))
        if self.text_prompt is not None:
            embeddings = torch.stack([self._expression_embedding(e) for e in expressions])
            result.prompts = result.prompts + self.text_prompt(embeddings.to(result.prompts.dtype))
        return result

    # ------------------------------------------------------------------ inference API
    @torch.no_grad()
    def moment_scores(
        self, video_frames_lowres: Frames, expressions: Sequence[str], fps: float | None = None
    ) -> torch.Tensor:
        """``[FIND]`` relevance of every input frame for every expression: (E, T) logits cos / tau
        (MomentSeg Eq. 5; apply a sigmoid for the probability the loss trains). The video prefix (vision
        encoding and KV cache) is computed once for all expressions."""
        expressions = _check_expressions(expressions)
        visual = self.visual_inputs(lowres_video=video_frames_lowres, fps=fps)
        tokens = self._tokenize([find_conversation(e) for e in expressions], visual)
        prefix_hidden, suffix_hidden = self.hidden_states_shared(tokens, visual)
        return self._find_logits(tokens, prefix_hidden, suffix_hidden, visual).float()

    @torch.no_grad()
    def seg_prompts(
        self,
        key_frames_highres: Frames,
        expressions: Sequence[str],
        lowres_video: Frames | None = None,
        fps: float | None = None,
    ) -> SegPrompts:
        """SAM2 prompt embeddings (E, prompt_dim) from the key frames (images) and optionally the low-res
        video; the visual prefix is shared by all expressions."""
        expressions = _check_expressions(expressions)
        visual = self.visual_inputs(lowres_video=lowres_video, key_frames=key_frames_highres, fps=fps)
        num_images = len(visual.image_grid_thw)
        conversations = [
            seg_conversation(e, num_images, lowres_video is not None, self.config.tda.enabled)
            for e in expressions
        ]
        tokens = self._tokenize(conversations, visual)
        _, suffix_hidden = self.hidden_states_shared(tokens, visual)
        return self._seg_prompts(tokens, suffix_hidden, expressions)

    # ------------------------------------------------------------------ training
    def _lm_targets(
        self, tokens: TokenizedPrompts, suffix_hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LM logits at the positions predicting the answer tokens, and those tokens."""
        suffix, start = tokens.suffix_ids[0], tokens.answer_starts[0]
        logits = self.hf_model.lm_head(suffix_hidden[start - 1 : len(suffix) - 1])
        return logits, torch.tensor(suffix[start:], device=logits.device)

    def _expression_embedding(self, text: str) -> torch.Tensor:
        """Mean input embedding of the expression's tokens (the decoupler's text reference), (H,)."""
        ids = self.processor.tokenizer(text, add_special_tokens=False).input_ids
        return self.hf_model.get_input_embeddings()(torch.tensor(ids, device=self._device())).mean(0)

    def train_outputs(self, sample: TrainSample) -> list[MLLMTrainOutputs]:
        """Teacher-forced forward of the sample's TSG and/or RefVOS conversation (whole-sequence path)."""
        outputs = []
        if sample.frame_labels is not None:
            visual = self.visual_inputs(lowres_video=sample.lowres_frames)
            tokens = self._tokenize([find_conversation(sample.expression, sample.template)], visual)
            prefixes, suffixes = self.hidden_states_full(tokens, visual)
            logits, labels = self._lm_targets(tokens, suffixes[0])
            outputs.append(
                MLLMTrainOutputs(
                    lm_logits=logits,
                    lm_labels=labels,
                    find_logits=self._find_logits(tokens, prefixes[0], suffixes, visual),
                )
            )
        if sample.key_frames is not None:
            visual = self.visual_inputs(lowres_video=sample.lowres_frames, key_frames=sample.key_frames)
            num_images = len(visual.image_grid_thw)
            conversation = seg_conversation(
                sample.expression, num_images, True, self.config.tda.enabled, sample.template
            )
            tokens = self._tokenize([conversation], visual)
            prefixes, suffixes = self.hidden_states_full(tokens, visual)
            logits, labels = self._lm_targets(tokens, suffixes[0])
            image_states = prefixes[0][torch.tensor(tokens.prefix_ids) == self.hf_model.config.image_token_id]
            outputs.append(
                MLLMTrainOutputs(
                    lm_logits=logits,
                    lm_labels=labels,
                    seg=self._seg_prompts(tokens, suffixes, [sample.expression]),
                    text_reference=self._expression_embedding(sample.expression),
                    visual_reference=image_states.mean(0),
                )
            )
        if not outputs:
            raise ValueError(f"training sample '{sample.expression}' has neither frame_labels nor key_frames")
        return outputs


class SegModel(nn.Module):
    """The whole network: SegMLLM + the SAM2 bridge, with the joint TSG + RefVOS training forward."""

    def __init__(self, mllm: SegMLLM, sam2: Sam2Bridge, losses: LossConfig) -> None:
        super().__init__()
        self.mllm = mllm
        self.sam2 = sam2
        self.losses = losses

    def enable_training(self, mode: str = "lora") -> None:
        """Set what trains. ``lora``: LoRA, new token rows, heads, SAM2 mask decoder; the vision tower, the
        LLM base and the rest of SAM2 frozen. ``full`` (training from scratch): every MLLM parameter
        (vision tower, LLM, embeddings, LM head), the heads and the SAM2 mask decoder; the rest of SAM2
        (image encoder, prompt encoder, memory), which SAM2's own tracking objective trains, stays frozen.
        ``heads`` (prompt alignment, as LLaVA's first stage trains only its projector): the whole MLLM frozen;
        the heads and the SAM2 mask decoder train. With ``mllm.location_map`` SAM2's mask-prompt downscaling
        trains too in every mode (it turns the location map into the dense prompt; SAM2's tracking objective
        never trains it, as the published configs output a mask prompt as the mask without decoding it). With
        ``sam2.prompt_heads: separate`` these are the prompted path's own copies, SAM2's tracker stays frozen."""
        if mode not in TRAINING_MODES:
            raise ValueError(f"training mode must be one of {list(TRAINING_MODES)}, got '{mode}'")
        if mode == "lora" and not isinstance(self.mllm.qwen, PeftModel):
            self.mllm.enable_lora()
        elif mode == "lora":  # an adapter loaded for inference (frozen) trains on from where it is
            for name, parameter in self.mllm.qwen.named_parameters():
                if "lora_" in name or "trainable_tokens_delta" in name:
                    parameter.requires_grad_(True)
        if mode == "full":
            if isinstance(self.mllm.qwen, PeftModel):
                raise ValueError("full-parameter training of a model with a LoRA adapter attached: export or "
                                 "merge the adapter first")
            self.mllm.qwen.requires_grad_(True)
        if mode == "heads":
            self.mllm.qwen.requires_grad_(False)
        self.sam2.separate_prompt_heads()
        self.sam2.requires_grad_(False)
        self.sam2.mask_decoder.requires_grad_(True)
        if self.mllm.location_map is not None:
            self.sam2.prompt_encoder.mask_downscaling.requires_grad_(True)
        self.train()

    def _mask_losses(self, sample: TrainSample, prompts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """BCE, Dice and object presence of the masks decoded on every key frame from one prompt (1, D), and
        with ``mllm.location_map`` the location map's loss (``location_map_loss``)."""
        if sample.masks is None:
            raise ValueError(f"training sample '{sample.expression}' has key_frames but no masks")
        frames = (
            np.asarray(sample.key_frames) if isinstance(sample.key_frames, np.ndarray) else sample.key_frames
        )
        prediction = self.sam2.decode_masks(frames, prompts.expand(len(frames), -1), location_map=self.mllm.location_map)
        targets = torch.as_tensor(sample.masks, device=prediction.mask_logits.device)
        if targets.shape != prediction.mask_logits.shape:
            raise ValueError(
                f"training sample '{sample.expression}': masks {tuple(targets.shape)} do not match "
                f"key frames {tuple(prediction.mask_logits.shape)}"
            )
        terms = (
            mask_bce_loss(prediction.mask_logits, targets),
            mask_dice_loss(prediction.mask_logits, targets),
            object_presence_loss(prediction.object_score_logits, targets.flatten(1).any(1)),
        )
        if prediction.location_logits is None:
            return terms
        return (*terms, location_map_loss(prediction.location_logits, targets))

    def forward_train(self, samples: Sequence[TrainSample]) -> dict[str, torch.Tensor]:
        """Loss parts (``lm``, ``find``, ``mask_bce``, ``mask_dice``, ``mask_object``, with location_map ``mask_location``,
        and with decoupling ``adversarial``,
        ``club``, ``club_likelihood``), each averaged over the samples that have it, and ``loss``, their
        sum weighted by ``LossConfig``."""
        terms: dict[str, list[torch.Tensor]] = {}
        decoupled: list[tuple[SegPrompts, torch.Tensor, torch.Tensor]] = []
        for sample in samples:
            for output in self.mllm.train_outputs(sample):
                terms.setdefault("lm", []).append(answer_lm_loss(output.lm_logits, output.lm_labels))
                if output.find_logits is not None:
                    labels = torch.as_tensor(sample.frame_labels, device=output.find_logits.device)[None]
                    valid = (
                        torch.ones_like(labels, dtype=torch.bool)
                        if sample.frame_valid is None
                        else torch.as_tensor(sample.frame_valid, device=labels.device)[None]
                    )
                    terms.setdefault("find", []).append(
                        find_matching_loss(
                            output.find_logits, labels, valid, self.losses.find_positive_weight
                        )
                    )
                if output.seg is None:
                    continue
                if output.seg.text_prompts is None:
                    mask_terms = [self._mask_losses(sample, output.seg.prompts)]
                else:  # DeSa2VA: both prompts are supervised by the ground truth
                    mask_terms = [
                        self._mask_losses(sample, output.seg.text_prompts),
                        self._mask_losses(sample, output.seg.visual_prompts),
                    ]
                    decoupled.append((output.seg, output.text_reference, output.visual_reference))
                for index, name in enumerate(MASK_LOSS_PARTS[: len(mask_terms[0])]):
                    terms.setdefault(name, []).append(torch.stack([t[index] for t in mask_terms]).mean())
        parts = {name: torch.stack(values).mean() for name, values in terms.items()}
        if decoupled:
            parts.update(self._decoupling_losses(decoupled))
        parts["loss"] = weighted_total(parts, self.losses)
        return parts

    def _decoupling_losses(
        self, decoupled: list[tuple[SegPrompts, torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """DeSa2VA adversarial (through gradient reversal) and CLUB terms over the batch's decoupled prompts."""
        decoupler = self.mllm.decoupler
        text = torch.cat([seg.text_prompts for seg, _, _ in decoupled])
        visual = torch.cat([seg.visual_prompts for seg, _, _ in decoupled])
        text_ref = torch.stack([t for _, t, _ in decoupled]).to(text.dtype)
        visual_ref = torch.stack([v for _, _, v in decoupled]).to(text.dtype)
        text_from_visual, visual_from_text = decoupler.adversary_predictions(text, visual)
        return {
            "adversarial": adversarial_loss(text_from_visual, text_ref)
            + adversarial_loss(visual_from_text, visual_ref),
            "club": decoupler.club.upper_bound(text, visual),
            "club_likelihood": decoupler.club.likelihood_loss(text, visual),
        }

    def forward(self, samples: Sequence[TrainSample]) -> dict[str, torch.Tensor]:
        """``forward_train`` (so DDP/FSDP wrappers, which call ``forward``, see the training path)."""
        return self.forward_train(samples)
