"""Qwen2.5-VL backbones built from a config with seeded random weights, and their offline processors.

Two vocabularies, both byte-level BPEs trained with the ``tokenizers`` library on a fixed text below (the
Qwen pre-tokenizer, Qwen's special tokens and the Qwen chat format), so no file has to come from a model hub:

- ``tiny``: the prompt templates and a few object words (unit tests, benches);
- ``procedural``: the prompt templates and the whole grammar of ``vrseg synth``'s expressions and grounding
  queries (every shape, colour, direction, wall, event and relation word), trained until every word is one
  token, so the model the project trains from scratch reads each word as one symbol.

The network is the real ``Qwen2_5_VLForConditionalGeneration`` class with a small ``Qwen2_5_VLConfig`` sized by
``actors.model.config.ScratchConfig``; the processor is the real ``Qwen2_5_VLProcessor`` around the real Qwen2
image and video processors and a ``Qwen2Tokenizer``. Building it takes about a second and gives the same
vocabulary and the same weights every time (fixed text, fixed seed). A trained model is exported as an
ordinary Hugging Face directory and loaded from there; this module only makes the starting point.
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

from actors.model.config import VOCABULARIES, ScratchConfig

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

# The fixed text the tiny BPE is trained on: the prompt templates and a few object words, so prompts
# tokenize into few, stable pieces.
_TINY_TEXT = """
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

# The procedural grammar: every word ``pipelines.synthetic_text`` writes into an expression or a grounding
# query, in the phrases it writes them (``tests/test_scratch_backbone.py`` checks a generated corpus against it).
_PROCEDURAL_TEXT = _TINY_TEXT + """
the red green blue yellow purple orange cyan white square circle triangle diamond hexagon shape
the squares circles triangles diamonds hexagons shapes
the red shape the green shapes the biggest shape the smallest shape
the shape moving left the shapes moving right the circle moving up the squares moving down
the shape that never moves the shapes that never move the fastest shape the slowest moving shape
the shape that bounces off the left wall the shapes that bounce off the right wall the top wall the bottom wall
the shape that bounces the most the shape that appears first the shape that appears last
the triangle after it stops the hexagon that stops the shape that leaves the frame the shapes that leave the frame
the shape closest to the blue circle when it stops the shape farthest from the red square when it stops
the diamond in front of the cyan hexagon the squares partly hidden behind the white triangle
the shapes with the same colour as the purple diamond
the orange circle bounces off the left wall the yellow square stays still the green triangle enters the frame
the blue diamond appears the red hexagon leaves the frame the cyan circle is in front of the white square
"""

_VOCABULARIES = {"tiny": (_TINY_TEXT, 640), "procedural": (_PROCEDURAL_TEXT, 4096)}


def build_tokenizer(vocabulary: str = "tiny") -> Qwen2Tokenizer:
    """A ``Qwen2Tokenizer`` over a byte-level BPE trained on the vocabulary's fixed text, with Qwen's special
    tokens. ``procedural``'s merge budget exceeds what its text can use, so training stops when every word of
    the grammar is a single token."""
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"vocabulary must be one of {list(VOCABULARIES)}, got '{vocabulary}'")
    text, vocab_size = _VOCABULARIES[vocabulary]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([line for line in text.splitlines() if line], trainer)
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


def build_processor(config: ScratchConfig) -> Qwen2_5_VLProcessor:
    """The real Qwen2.5-VL processor around the offline tokenizer; image sizes are chosen per call."""
    vision = {
        "patch_size": config.patch_size,
        "merge_size": config.merge_size,
        "temporal_patch_size": config.temporal_patch_size,
    }
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**vision),
        tokenizer=build_tokenizer(config.vocabulary),
        video_processor=Qwen2VLVideoProcessor(**vision),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


def qwen_config(config: ScratchConfig, tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    """A ``Qwen2_5_VLConfig`` of ``config``'s sizes with Qwen's token ids (untied LM head).

    mRoPE sections split the rotary half-dimension (head_dim / 2) 1 : 1.5 : 1.5 between time, height and width,
    the proportions of Qwen2.5-VL's [16, 24, 24]."""
    ids = tokenizer.convert_tokens_to_ids
    half = config.hidden_size // config.num_heads // 2
    temporal = half // 4
    spatial = (half - temporal) // 2
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [temporal, spatial, half - temporal - spatial],
        },
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }
    vision_config = {
        "depth": config.vision_depth,
        "hidden_size": config.vision_hidden_size,
        "intermediate_size": config.vision_intermediate_size,
        "num_heads": config.vision_heads,
        "patch_size": config.patch_size,
        "spatial_merge_size": config.merge_size,
        "temporal_patch_size": config.temporal_patch_size,
        "window_size": config.patch_size * config.merge_size * 2,
        "out_hidden_size": config.hidden_size,
        "fullatt_block_indexes": [config.vision_depth - 1],  # windowed attention below, full in the last block
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


def build_scratch_backbone(
    config: ScratchConfig,
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """Randomly initialised Qwen2.5-VL of ``config`` and its processor; the same weights on every call
    (seed ``config.seed``), the global RNG left as it was."""
    processor = build_processor(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Qwen2_5_VLForConditionalGeneration(qwen_config(config, processor.tokenizer))
    return model.eval(), processor
