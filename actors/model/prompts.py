"""Prompt templates (MomentSeg Table 16) and their tokenization into a shared prefix and per-expression suffixes.

A conversation is rendered with the processor's own chat template (the real Qwen template for real
checkpoints, the Qwen format of ``tiny_factory`` for the tiny model) and cut into three pieces that are
tokenized separately, in training and inference alike:

- the *prefix*: everything up to the last ``<|vision_end|>``: system turn, the video and/or images. It
  does not depend on the expression, so its vision encoding and KV cache are shared by all expressions;
- the *question*: the rest of the user turn (carries the expression) and the assistant header;
- the *answer*: the teacher-forced assistant reply carrying ``[FIND]``/``[SEG]`` (or ``<SEG>``.. ``<TAK>``).

Because the pieces end at special tokens or at the same text boundaries every time, the token ids are
identical whether a sequence is run whole (training) or as prefix + suffix with a KV cache (inference).
Template choice: the first variant of each list of Table 16 (the paper samples variants at random during
training; ``template`` picks one deterministically).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SEG_TOKEN = "[SEG]"
FIND_TOKEN = "[FIND]"
FRAME_SEG_TOKEN = "<SEG>"
TAK_TOKEN = "<TAK>"
ADDED_TOKENS = (SEG_TOKEN, FIND_TOKEN, FRAME_SEG_TOKEN, TAK_TOKEN)

VIDEO_PROMPTS = (
    "\nThis is a low-resolution video.",
    "\nYou can view this low-resolution video for reference.",
    "\nThis is a low-resolution video for analysis.",
    "\nHere is a low-resolution video you can refer to.",
)
FIND_QUESTIONS = (
    " Can you find the key frames range of the text query '{query}' in this video?",
    " Could you identify the key frames range for the text query '{query}' in this low-resolution video?",
    " Please locate the key frames range where the text query '{query}' appears in this video?",
    " Can you determine the key frames range containing the text query '{query}' in this video?",
)
FIND_ANSWERS = ("It is [FIND].", "Sure, [FIND].", "Sure, it is [FIND].", "[FIND].")
SEG_QUESTIONS = (
    "\nCan you segment the {query} in this video?",
    "\nPlease segment {query} in this video.",
    "\nWhat is {query} in this video? Please respond with segmentation mask.",
    "\nCould you provide a segmentation mask for the {query} in this video?",
)
SEG_ANSWERS = ("Sure, [SEG].", "It is [SEG].", "Sure, it is [SEG].", "[SEG].")
# VRS-HQ: one <SEG> per key frame (frame-level spatial prior) and one <TAK> (video-level temporal token).
TDA_ANSWER = "Sure, {frame_tokens}{tak}."

_PAD_PATTERN = re.compile(r"(<\|image_pad\|>|<\|video_pad\|>)")


@dataclass(frozen=True)
class TokenizedPrompts:
    """Token ids of one prompt family for E expressions sharing one visual prefix.

    ``prefix_ids``: (P,) ids up to the last ``<|vision_end|>`` (vision pads expanded).
    ``suffix_ids[e]``: question ids followed by answer ids of expression e.
    ``answer_starts[e]``: index in ``suffix_ids[e]`` where the answer begins (LM labels start there).
    """

    prefix_ids: list[int]
    suffix_ids: list[list[int]]
    answer_starts: list[int]


def _tda_answer(num_frames: int) -> str:
    return TDA_ANSWER.format(frame_tokens=FRAME_SEG_TOKEN * num_frames, tak=TAK_TOKEN)


def find_conversation(query: str, template: int = 0) -> list[dict[str, Any]]:
    """TSG turn: ``<video> This is a low-resolution video. Can you find ... '<query>' ...?`` -> ``It is [FIND].``"""
    question = VIDEO_PROMPTS[template] + FIND_QUESTIONS[template].format(query=query)
    return [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": FIND_ANSWERS[template]}]},
    ]


def seg_conversation(
    query: str, num_images: int, with_video: bool, tda: bool, template: int = 0
) -> list[dict[str, Any]]:
    """RefVOS turn: ``[<video> ...] <images> Can you segment the <query> in this video?`` -> ``Sure, [SEG].``

    With ``tda`` the answer carries one ``<SEG>`` per key frame and a ``<TAK>`` (VRS-HQ) instead of ``[SEG]``.
    """
    content: list[dict[str, Any]] = []
    if with_video:
        content += [{"type": "video"}, {"type": "text", "text": VIDEO_PROMPTS[template]}]
    content += [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": SEG_QUESTIONS[template].format(query=query)})
    answer = _tda_answer(num_images) if tda else SEG_ANSWERS[template]
    return [
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def _expand_vision_pads(text: str, image_tokens: list[int], video_tokens: list[int]) -> str:
    """Replace each ``<|image_pad|>``/``<|video_pad|>`` placeholder by as many pads as the visual has tokens."""
    images, videos = iter(image_tokens), iter(video_tokens)
    pieces = []
    for piece in _PAD_PATTERN.split(text):
        if piece == "<|image_pad|>":
            pieces.append(piece * next(images))
        elif piece == "<|video_pad|>":
            pieces.append(piece * next(videos))
        else:
            pieces.append(piece)
    return "".join(pieces)


def tokenize_conversations(
    processor: Any,
    conversations: list[list[dict[str, Any]]],
    image_tokens: list[int],
    video_tokens: list[int],
) -> TokenizedPrompts:
    """Render ``conversations`` (one per expression, same visuals) and cut them into prefix/question/answer ids.

    ``image_tokens``/``video_tokens``: LLM tokens of each image/video in order (grid t*h*w / merge**2).
    Raises ``ValueError`` if the rendered prefixes differ between expressions (a template that puts text
    that depends on the expression before the visuals cannot share a prefix).
    """
    tokenizer = processor.tokenizer
    prefix_text: str | None = None
    suffix_ids, answer_starts = [], []
    for conversation in conversations:
        full = processor.apply_chat_template(conversation, tokenize=False)
        prompt = processor.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True)
        if not full.startswith(prompt):
            raise ValueError("chat template renders the prompt differently with and without the answer")
        cut = prompt.rfind("<|vision_end|>") + len("<|vision_end|>")
        if prefix_text is None:
            prefix_text = prompt[:cut]
        elif prompt[:cut] != prefix_text:
            raise ValueError(
                "prompt prefix before the visuals differs between expressions; it cannot be shared"
            )
        question = tokenizer(prompt[cut:], add_special_tokens=False).input_ids
        answer = tokenizer(full[len(prompt) :].rstrip("\n"), add_special_tokens=False).input_ids
        suffix_ids.append(question + answer)
        answer_starts.append(len(question))
    if prefix_text is None:
        raise ValueError("no expressions given")
    prefix = _expand_vision_pads(prefix_text, image_tokens, video_tokens)
    prefix_ids = tokenizer(prefix, add_special_tokens=False).input_ids
    return TokenizedPrompts(prefix_ids=prefix_ids, suffix_ids=suffix_ids, answer_starts=answer_starts)
