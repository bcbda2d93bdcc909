"""The expression's own words in the SAM2 prompt (``mllm.text_prompt``, actors.model.heads.TextPrompt): the
prompt SAM2 decodes is the ``[SEG]`` projection plus the projected, normalised mean token embedding of the
expression, the heads file carries it, and training reaches both it and the words' embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from actors.config import load_config
from actors.model.checkpoints import build_model
from actors.model.config import ModelConfig
from actors.model.segmllm import TrainSample

TINY_YAML = Path(__file__).resolve().parents[1] / "configs/model/tiny.yaml"
EXPRESSIONS = ["the red circle", "the blue square"]


def test_the_prompt_is_the_seg_projection_plus_the_projected_words() -> None:
    model = build_model(load_config(ModelConfig, TINY_YAML, ["mllm.text_prompt=true"]))
    assert "text_prompt" not in build_model(load_config(ModelConfig, TINY_YAML)).mllm.heads()
    mllm = model.mllm
    assert {"text_prompt.proj.weight", "text_prompt.proj.bias"} <= set(mllm.heads().state_dict())
    frames = np.random.default_rng(0).integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)
    with torch.no_grad():
        with_words = mllm.seg_prompts(frames, EXPRESSIONS).prompts
        head, mllm.text_prompt = mllm.text_prompt, None
        without = mllm.seg_prompts(frames, EXPRESSIONS).prompts
        mllm.text_prompt = head
        embeddings = mllm.hf_model.get_input_embeddings()
        for row, text in enumerate(EXPRESSIONS):
            ids = mllm.processor.tokenizer(text, add_special_tokens=False).input_ids
            mean = embeddings(torch.tensor(ids)).mean(0)
            words = head.proj(F.layer_norm(mean, mean.shape))
            assert torch.allclose(with_words[row] - without[row], words, atol=1e-5)
    assert not torch.allclose(with_words[0] - without[0], with_words[1] - without[1])


def test_training_reaches_the_projection_and_the_words_embeddings() -> None:
    model = build_model(load_config(ModelConfig, TINY_YAML, ["mllm.text_prompt=true"]))
    model.enable_training("full")
    frames = np.random.default_rng(1).integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)
    masks = torch.zeros(2, 112, 112)
    masks[:, 30:70, 20:60] = 1
    lowres = np.random.default_rng(2).integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    parts = model.forward_train([TrainSample("the red circle", lowres, key_frames=frames, masks=masks)])
    (parts["mask_bce"] + parts["mask_dice"]).backward()
    assert model.mllm.text_prompt.proj.weight.grad.abs().sum() > 0
    # the text part alone reaches exactly the rows of the expression's words
    embeddings = model.mllm.hf_model.get_input_embeddings().weight
    embeddings.grad = None
    model.mllm.text_prompt(model.mllm._expression_embedding("the red circle")[None]).sum().backward()
    ids = model.mllm.processor.tokenizer("the red circle", add_special_tokens=False).input_ids
    touched = embeddings.grad.abs().sum(dim=1) > 0
    assert touched[ids].all() and int(touched.sum()) == len(set(ids))
