"""SAM2 from the ``sam2`` package: build by config name + Hydra overrides, load/save weights safely,
and decode masks from a projected ``[SEG]`` embedding (the way training sees masks).

The network is the package's ``SAM2Base``; nothing here re-implements it. ``Sam2Bridge`` adds the one
path the package lacks: a language prompt as a *sparse prompt embedding*. As in Sa2VA, the projected
``[SEG]`` token (width ``prompt_dim``, the SAM mask decoder's transformer width: 256 for every published
SAM2, 64 in the tiny configuration) is appended to the prompt encoder's "no point" padding tokens and
the mask decoder runs on the frame's no-memory features (SAM2's first-frame path: image features plus
``no_mem_embed``). The video session that propagates masks lives in ``actors/model/sam2_session.py``.

Choices written down:
- Build overrides always include the post-processing settings that ``sam2.build_sam2_video_predictor``
  adds (dynamic multimask fallback via stability, binarised user masks in the memory encoder), so the
  bridge and the stock video predictor are the same network. Hole filling needs the package's CUDA
  extension; it is not applied (the stock predictor silently skips it on CPU too).
- SAM2 hard-gates masks whose object score is negative to ``NO_OBJ_SCORE``. ``decode_masks`` applies
  that gate in eval mode only: in training mode it returns the raw decoder logits, because the gate has no
  gradient and would cut the mask loss off from the decoder on exactly the frames it gets wrong.
- Multimask selection follows SAM2's own rule for a first frame without points
  (``SAM2Base._use_multimask``): with the published configs three masks are predicted and the one with
  the highest predicted IoU is returned (as Sa2VA does).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import safetensors.torch
import sam2
import torch
import torch.nn.functional as F
from fsspec.implementations.local import LocalFileSystem
from hydra import compose
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from sam2.modeling.sam2_base import NO_OBJ_SCORE, SAM2Base

from actors.config import ConfigError
from actors.uri import filesystem_for

if TYPE_CHECKING:
    from actors.model.heads import LocationMap

# The settings ``sam2.build_sam.build_sam2_video_predictor`` applies on top of every config.
VIDEO_POSTPROCESSING_OVERRIDES = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
)

# SAM2's input normalisation (``sam2.utils.misc.load_video_frames``).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

SAM2_CONFIG_ROOT = Path(sam2.__file__).parent


PROMPT_HEADS = ("shared", "separate")


class CheckpointError(ValueError):
    """A SAM2 checkpoint cannot be loaded; the message names the file and what is wrong."""


@dataclass
class Sam2Config:
    """Which SAM2 to build and which weights to load.

    ``config_name`` is a Hydra config inside the ``sam2`` package (``configs/sam2.1/sam2.1_hiera_l.yaml``,
    ``configs/sam2/sam2_hiera_l.yaml`` for Sa2VA checkpoints, ...); ``overrides`` are Hydra override strings
    applied to it (a key that does not exist is an error; prefix ``++`` to add one). ``checkpoint`` is a
    ``.pt``/``.pth`` (tensors only) or ``.safetensors`` file, local or any fsspec URI; ``None`` keeps the
    seeded random initialisation (tiny configurations).

    ``prompt_heads``: ``shared`` (Sa2VA) decodes language-prompted key frames with SAM2's own prompt encoder
    and mask decoder, so training them on prompted frames also changes the tracker that decodes every
    propagated frame. ``separate`` gives the prompted path its own copy of both
    (``Sam2Bridge.separate_prompt_heads``): RefVOS training and ``sam2_decoder.safetensors`` own the copy,
    the video session keeps SAM2's as its tracking objective trained it (the train/inference gap Sa2VA-i
    names; on the procedural model, labeled static J 0.285 with the tracker's own decoder against 0.094 with
    the prompt-trained one).
    """

    config_name: str = "configs/sam2.1/sam2.1_hiera_t.yaml"
    overrides: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    seed: int = 0
    prompt_heads: str = "shared"

    def __post_init__(self) -> None:
        if self.prompt_heads not in PROMPT_HEADS:
            raise ValueError(f"sam2.prompt_heads must be one of {list(PROMPT_HEADS)}, got '{self.prompt_heads}'")
        if not (SAM2_CONFIG_ROOT / self.config_name).is_file():
            known = sorted(str(p.relative_to(SAM2_CONFIG_ROOT)) for p in SAM2_CONFIG_ROOT.glob("configs/*/*.yaml"))
            raise ValueError(f"sam2 config_name '{self.config_name}' is not in the sam2 package; known: {known}")


@dataclass
class ImageFeatures:
    """SAM2 backbone features of a batch of frames, flattened the way ``SAM2Base`` consumes them.

    ``vision_feats[i]`` / ``vision_pos[i]`` are (H_i*W_i, B, C_i) for each feature level (high-res first),
    ``feat_sizes[i]`` is (H_i, W_i); ``frame_size`` is the (height, width) of the original frames;
    ``images`` the (B, 3, S, S) normalised input the encoder read (``LocationMap`` with ``pixels`` reads it).
    """

    vision_feats: list[torch.Tensor]
    vision_pos: list[torch.Tensor]
    feat_sizes: list[tuple[int, int]]
    frame_size: tuple[int, int]
    images: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.vision_feats[-1].shape[1]

    def expand(self, batch_size: int) -> ImageFeatures:
        """The same features repeated (as a view) for ``batch_size`` prompts; needs a batch of one."""
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise ValueError(f"cannot expand features of {self.batch_size} frames to a batch of {batch_size}")
        return dataclasses.replace(
            self,
            vision_feats=[x.expand(-1, batch_size, -1) for x in self.vision_feats],
            vision_pos=[x.expand(-1, batch_size, -1) for x in self.vision_pos],
            images=None if self.images is None else self.images.expand(batch_size, -1, -1, -1),
        )

    def maps(self) -> list[torch.Tensor]:
        """Every level as a (B, C, H, W) map, high-res first."""
        return [
            x.permute(1, 2, 0).reshape(x.shape[1], x.shape[2], *size)
            for x, size in zip(self.vision_feats, self.feat_sizes, strict=True)
        ]

    def high_res_maps(self) -> list[torch.Tensor] | None:
        """The high-resolution levels as (B, C, H, W) maps for the mask decoder (``None`` if unused)."""
        return self.maps()[:-1] if len(self.vision_feats) > 1 else None


def select_mask(
    masks: torch.Tensor, ious: torch.Tensor, object_score_logits: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM2's pick among the mask decoder's (B, M, h, w) candidates (as ``SAM2Base._forward_sam_heads``):
    per object the one with the highest predicted IoU (the only one for single-mask output), as (B, 1, h, w)
    float32 logits, hard-gated to ``NO_OBJ_SCORE`` where ``object_score_logits`` (B, 1), when given, says
    the object is absent. Returns the masks and each object's chosen candidate (B,)."""
    best = ious.argmax(dim=-1)
    chosen = masks[torch.arange(masks.shape[0], device=masks.device), best][:, None].float()
    if object_score_logits is not None:
        chosen = torch.where(object_score_logits[:, :, None, None] > 0, chosen, NO_OBJ_SCORE)
    return chosen, best


@dataclass
class MaskPrediction:
    """Masks decoded from prompt embeddings, one per prompt.

    ``mask_logits`` (B, H, W) at frame resolution, ``low_res_logits`` (B, 1, S/4, S/4) at the decoder's
    resolution (feed them back as ``dense_prompt``), ``ious`` (B,) the predicted IoU of the returned mask,
    ``object_score_logits`` (B,) SAM2's object-presence logit; ``location_logits`` (B, 1, h, w) the dense
    prompt ``LocationMap`` made from the prompts (``None`` without location_map).
    """

    mask_logits: torch.Tensor
    low_res_logits: torch.Tensor
    ious: torch.Tensor
    object_score_logits: torch.Tensor
    location_logits: torch.Tensor | None = None


def _compose_model_config(config: Sam2Config) -> OmegaConf:
    overrides = [*config.overrides, *VIDEO_POSTPROCESSING_OVERRIDES]
    try:
        cfg = compose(config_name=config.config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(
            f"sam2 config '{config.config_name}' with overrides {list(config.overrides)}: {exc}"
        ) from None
    OmegaConf.resolve(cfg)
    model = cfg.model
    if not model.get("multimask_output_in_sam", False) and not model.get("multimask_output_for_tracking", False):
        # One mask per prompt: the decoder's three multimask tokens are never trained, and in eval mode dynamic
        # multimask via stability swaps an unstable single mask for the best of them. On the procedural model,
        # trained from scratch with one mask, that turned held-out key-frame IoU 0.33 into 0.04.
        model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability = False
    return cfg


def build_sam2_model(config: Sam2Config, storage_options: Mapping | None = None) -> SAM2Base:
    """The package's ``SAM2Base`` built from ``config`` (seeded init; checkpoint loaded if given, read with
    ``storage_options``), in eval mode.

    Config errors (unknown override keys, inconsistent sizes) raise ``ConfigError`` before any weights
    are read.
    """
    cfg = _compose_model_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        try:
            model = instantiate(cfg.model, _recursive_=True)
        except Exception as exc:  # Hydra wraps constructor errors (shape asserts, bad kwargs) in many types
            raise ConfigError(f"sam2 config '{config.config_name}' does not build: {exc}") from None
    if not isinstance(model, SAM2Base):
        raise ConfigError(f"sam2 config '{config.config_name}' builds {type(model).__name__}, not a SAM2Base")
    if config.checkpoint is not None:
        load_weights(model, config.checkpoint, storage_options)
    return model.eval()


def build_sam2(config: Sam2Config, storage_options: Mapping | None = None) -> Sam2Bridge:
    """``Sam2Bridge`` around ``build_sam2_model(config, storage_options)``."""
    return Sam2Bridge(build_sam2_model(config, storage_options), config.prompt_heads == "separate").eval()


def read_state_dict(uri: str, storage_options: Mapping | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pt``/``.pth`` file (local path or fsspec URI).

    ``.pt`` files are read with ``torch.load(weights_only=True)``: a file that would need to run code to
    load (any pickled object other than tensors and plain containers) is refused. A ``{"model": ...}``
    wrapper (the official SAM2 checkpoints) is unwrapped.
    """
    suffix = Path(uri.split("?")[0]).suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise CheckpointError(f"{uri}: unknown checkpoint format '{suffix}' (expected .safetensors, .pt or .pth)")
    fs, path = filesystem_for(uri, storage_options)
    if not fs.exists(path):
        raise CheckpointError(f"{uri}: checkpoint not found")
    local = isinstance(fs, LocalFileSystem)  # local files are read in place (memory-mapped), not copied
    if suffix == ".safetensors":
        try:
            if local:
                return safetensors.torch.load_file(path)
            with fs.open(path, "rb") as handle:
                return safetensors.torch.load(handle.read())
        except Exception as exc:  # safetensors raises its own error types for malformed headers
            raise CheckpointError(f"{uri}: not a valid safetensors file: {exc}") from None
    try:
        if local:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        else:
            with fs.open(path, "rb") as handle:
                loaded = torch.load(io.BytesIO(handle.read()), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"{uri}: refusing to load: the checkpoint needs code execution to unpickle ({first_line})"
        ) from None
    except Exception as exc:  # truncated or foreign files fail in zipfile / pickle in many ways
        raise CheckpointError(f"{uri}: not a readable torch checkpoint: {exc}") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{uri}: expected a state dict of tensors (optionally under 'model')")
    return loaded


def load_weights(
    model: torch.nn.Module, uri: str, storage_options: Mapping | None = None, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load a checkpoint into ``model``; returns (missing, unexpected) key names.

    With ``strict`` any missing or unexpected key, or a shape mismatch, raises ``CheckpointError`` naming
    the keys (and nothing is changed).
    """
    state = read_state_dict(uri, storage_options)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if mismatched:
        details = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:10])
        raise CheckpointError(f"{uri}: shape mismatch for {len(mismatched)} keys: {details}")
    if strict and (missing or unexpected):
        raise CheckpointError(f"{uri}: missing keys {missing}; unexpected keys {unexpected}")
    model.load_state_dict(state, strict=False)
    return missing, unexpected


def save_weights(model: torch.nn.Module, uri: str, storage_options: Mapping | None = None) -> None:
    """Write ``model``'s state dict as safetensors (local path or fsspec URI)."""
    if not uri.endswith(".safetensors"):
        raise CheckpointError(f"{uri}: weights are saved as safetensors; the name must end in .safetensors")
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    payload = safetensors.torch.save(tensors)
    fs, path = filesystem_for(uri, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(payload)


FrameBatch = np.ndarray | torch.Tensor | Sequence[np.ndarray]


class Sam2Bridge(torch.nn.Module):
    """A ``SAM2Base`` plus frame preprocessing, image features and prompt-embedding mask decoding.

    ``state_dict`` keys are the SAM2 keys prefixed with ``sam.``; ``load_weights``/``save_weights`` on
    ``bridge.sam`` use the package's own key names (as in the official checkpoints).

    ``prompt_encoder`` and ``mask_decoder`` are what ``decode_masks`` (language-prompted frames) runs: SAM2's
    own, or with ``separate`` prompt heads, once ``separate_prompt_heads`` has run, copies of them under
    ``prompt_heads`` (``Sam2Config.prompt_heads``). The video session always runs SAM2's own.
    """

    def __init__(self, sam: SAM2Base, separate: bool = False) -> None:
        super().__init__()
        self.sam = sam
        self.separate = separate
        self.prompt_heads: torch.nn.ModuleDict | None = None
        self.register_buffer("_mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def separate_prompt_heads(self) -> None:
        """With ``separate`` prompt heads, copy SAM2's prompt encoder and mask decoder as they are now (once):
        called before the prompted path is trained or loaded, so the copies start from the tracker's weights
        (SAM2's checkpoint, e.g. the tracking stage's) and SAM2's own stay the tracker's. No-op when shared."""
        if self.separate and self.prompt_heads is None:
            self.prompt_heads = torch.nn.ModuleDict({
                "sam_prompt_encoder": copy.deepcopy(self.sam.sam_prompt_encoder),
                "sam_mask_decoder": copy.deepcopy(self.sam.sam_mask_decoder),
            })

    @property
    def prompt_encoder(self) -> torch.nn.Module:
        """The prompt encoder of language-prompted decoding (SAM2's own until ``separate_prompt_heads``)."""
        return self.sam.sam_prompt_encoder if self.prompt_heads is None else self.prompt_heads["sam_prompt_encoder"]

    @property
    def mask_decoder(self) -> torch.nn.Module:
        """The mask decoder of language-prompted decoding (SAM2's own until ``separate_prompt_heads``)."""
        return self.sam.sam_mask_decoder if self.prompt_heads is None else self.prompt_heads["sam_mask_decoder"]

    @property
    def prompt_dim(self) -> int:
        """Width of a sparse prompt embedding (the ``[SEG]`` projection's output width)."""
        return self.sam.sam_prompt_embed_dim

    @property
    def image_size(self) -> int:
        return self.sam.image_size

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each level of ``ImageFeatures`` (high-res first), as ``LocationMap`` reads them."""
        if not self.sam.use_high_res_features_in_sam:
            return [self.prompt_dim]
        decoder = self.sam.sam_mask_decoder
        return [decoder.conv_s0.out_channels, decoder.conv_s1.out_channels, self.prompt_dim]

    def preprocess(self, frames: FrameBatch) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, H, W, 3) uint8 frames -> (B, 3, S, S) normalised float input, and (H, W).

        Resizing uses bilinear interpolation with antialiasing (none when H = W = S).
        """
        if isinstance(frames, np.ndarray | torch.Tensor):
            batch = torch.as_tensor(frames)
        else:
            batch = torch.stack([torch.as_tensor(np.asarray(f)) for f in frames])
        if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != torch.uint8:
            raise ValueError(
                f"frames must be (B, H, W, 3) uint8, got shape {tuple(batch.shape)} dtype {batch.dtype}"
            )
        height, width = batch.shape[1:3]
        images = batch.to(self._mean.device).permute(0, 3, 1, 2).float() / 255.0
        if (height, width) != (self.image_size, self.image_size):
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return (images - self._mean) / self._std, (height, width)

    def encode_images(self, frames: FrameBatch) -> ImageFeatures:
        """SAM2 image encoder (``SAM2Base.forward_image``) on a batch of frames."""
        images, frame_size = self.preprocess(frames)
        backbone_out = self.sam.forward_image(images)
        _, vision_feats, vision_pos, feat_sizes = self.sam._prepare_backbone_features(backbone_out)
        return ImageFeatures(vision_feats, vision_pos, [tuple(s) for s in feat_sizes], frame_size, images)

    def decode_masks(
        self,
        frames: FrameBatch | ImageFeatures,
        prompt_embeddings: torch.Tensor,
        dense_prompt: torch.Tensor | None = None,
        location_map: LocationMap | None = None,
    ) -> MaskPrediction:
        """Masks for (B, prompt_dim) or (B, N, prompt_dim) prompt embeddings on B frames (or one frame).

        ``frames`` are uint8 (B, H, W, 3) frames or their ``ImageFeatures``; one frame is shared by all
        prompts. ``dense_prompt`` (B, 1, h, w) mask logits (e.g. a previous ``low_res_logits``) are fed to the
        prompt encoder's mask input (DeSa2VA's mask re-prompt). Without one, ``location_map`` (the MLLM's
        ``LocationMap``) makes it from the prompts and the frame's features, and with its ``residual`` the map is
        also added to the decoder's low-resolution logits (before SAM2's object-score gate). Differentiable w.r.t. the
        prompts and the SAM2 weights.
        """
        if prompt_embeddings.ndim == 2:
            prompt_embeddings = prompt_embeddings[:, None]
        if prompt_embeddings.ndim != 3 or prompt_embeddings.shape[-1] != self.prompt_dim:
            raise ValueError(
                f"prompt_embeddings must be (B, {self.prompt_dim}) or (B, N, {self.prompt_dim}), "
                f"got {tuple(prompt_embeddings.shape)}"
            )
        batch = prompt_embeddings.shape[0]
        features = frames if isinstance(frames, ImageFeatures) else self.encode_images(frames)
        features = features.expand(batch)
        sam, prompt_encoder = self.sam, self.prompt_encoder
        location_logits = None
        if dense_prompt is None and location_map is not None:
            location_logits = dense_prompt = location_map(features.maps(), prompt_embeddings, features.images)
        # First-frame conditioning: no memory (adds ``no_mem_embed`` with the published configs). (B, C, h, w)
        pix_feat = sam._prepare_memory_conditioned_features(
            frame_idx=0,
            is_init_cond_frame=True,
            current_vision_feats=features.vision_feats[-1:],
            current_vision_pos_embeds=features.vision_pos[-1:],
            feat_sizes=features.feat_sizes[-1:],
            output_dict={},
            num_frames=1,
        )
        if dense_prompt is not None:
            if dense_prompt.ndim == 3:
                dense_prompt = dense_prompt[:, None]
            if dense_prompt.ndim != 4 or dense_prompt.shape[:2] != (batch, 1):
                raise ValueError(f"dense_prompt must be ({batch}, 1, h, w), got {tuple(dense_prompt.shape)}")
            if dense_prompt.shape[-2:] != prompt_encoder.mask_input_size:
                dense_prompt = F.interpolate(
                    dense_prompt.float(),
                    size=prompt_encoder.mask_input_size,
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
        # "No point" padding tokens, then the language prompt tokens: (B, 1 + N, prompt_dim) as in Sa2VA.
        no_points = (
            torch.zeros(batch, 1, 2, device=pix_feat.device),
            -torch.ones(batch, 1, dtype=torch.int32, device=pix_feat.device),
        )
        sparse, dense = prompt_encoder(points=no_points, boxes=None, masks=dense_prompt)
        sparse = torch.cat([sparse, prompt_embeddings.to(sparse.dtype)], dim=1)
        multimask = sam._use_multimask(is_init_cond_frame=True, point_inputs=None)
        low_res, ious, _, object_score_logits = self.mask_decoder(
            image_embeddings=pix_feat,
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=features.high_res_maps(),
        )
        if location_logits is not None and location_map is not None and location_map.residual:
            low_res = low_res + F.interpolate(location_logits, size=low_res.shape[-2:], mode="bilinear",
                                              align_corners=False).to(low_res.dtype)
        gate = object_score_logits if sam.pred_obj_scores and not sam.training else None
        low_res, best = select_mask(low_res, ious, gate)  # (B, 1, S/4, S/4)
        ious = ious.gather(1, best[:, None])[:, 0]
        mask_logits = F.interpolate(low_res, size=features.frame_size, mode="bilinear", align_corners=False)
        return MaskPrediction(mask_logits[:, 0], low_res, ious, object_score_logits[:, 0], location_logits)
