"""A tiny Qwen2.5-VL (2 LLM layers, 2 vision blocks) and its processor, built offline and deterministically.

The tiny model is the real ``Qwen2_5_VLForConditionalGeneration`` class with a small
``Qwen2_5_VLConfig``; its processor is the real ``Qwen2_5_VLProcessor`` around the real Qwen2 image and
video processors and a ``Qwen2Tokenizer``. Only the vocabulary is home-made: a byte-level BPE trained
with the ``tokenizers`` library on a fixed text written below (the Qwen pre-tokenizer, the Qwen special
tokens and the Qwen chat format), so no file has to come from a model hub. Building it takes about a
second and gives the same vocabulary and the same weights every time (fixed text, fixed seed).
"""

from __future__ import annotations

import json

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

TINY_SEED = 1234

# Qwen's special tokens, in Qwen's order (their ids follow the BPE vocabulary, as in Qwen).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The Qwen2-VL chat format: a default system turn, image/video placeholders inside user turns.
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The fixed text the tiny BPE is trained on: the prompt templates and the vocabulary of the
# procedural corpus (shapes, colours, motions), so prompts tokenize into few, stable pieces.
_BPE_TEXT = """
You are a helpful assistant. This is a low-resolution video. You can view this low-resolution video for
reference. Here is a low-resolution video you can refer to. Can you find the key frames range of the text
query in this video? Could you identify the key frames range for the text query in this low-resolution video?
Please locate the key frames range where the text query appears in this video? It is. Sure, it is.
Can you segment the object in this video? Please segment it in this video. What is it in this video? Please
respond with segmentation mask. Could you provide a segmentation mask for the object in this video? Please
identify and segment it. Where is it? Can you highlight it with a segmentation mask? Sure, the segmentation
result is. the a an red green blue yellow purple orange white black gray small large big tiny circle square
triangle star ring disk box ball shape object person dog cat car bird that which who moves left right up down
moving jumping rotating bouncing fast slow first second third last appears disappears enters leaves stops
starts turns becomes the one closest farthest biggest smallest top bottom middle corner center 0 1 2 3 4 5 6 7
8 9 when after before while during between frames seconds and or not with of on in at to from by is are was.
"""

_BPE_VOCAB_SIZE = 640


def build_tiny_tokenizer() -> Qwen2Tokenizer:
    """A ``Qwen2Tokenizer`` over a byte-level BPE trained on ``_BPE_TEXT``, with Qwen's special tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([line for line in _BPE_TEXT.splitlines() if line], trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(QWEN_SPECIAL_TOKENS),
    )
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tokenizer


def build_tiny_processor(
    patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2
) -> Qwen2_5_VLProcessor:
    """The real Qwen2.5-VL processor around the tiny tokenizer; image sizes are chosen per call."""
    vision = {"patch_size": patch_size, "merge_size": merge_size, "temporal_patch_size": temporal_patch_size}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**vision),
        tokenizer=build_tiny_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(**vision),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


def tiny_qwen_config(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    """2 decoder layers (hidden 64), 2 vision blocks (hidden 32, patch 14, merge 2), Qwen's token ids."""
    ids = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "out_hidden_size": 64,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def build_tiny_qwen(processor: Qwen2_5_VLProcessor) -> Qwen2_5_VLForConditionalGeneration:
    """Randomly initialised tiny Qwen2.5-VL; the same weights on every call (seed ``TINY_SEED``)."""
    config = tiny_qwen_config(processor.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = Qwen2_5_VLForConditionalGeneration(config)
    return model.eval()
