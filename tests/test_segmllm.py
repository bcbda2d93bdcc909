"""SegMLLM / SegModel on the tiny configuration: shapes, shared prefix, training gradients, input errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from peft import PeftModel

from actors.config import load_config
from actors.model.checkpoints import build_model
from actors.model.config import DecoupleConfig, ModelConfig, ScratchConfig, TDAConfig
from actors.model.prompts import ADDED_TOKENS, find_conversation, seg_conversation
from actors.model.scratch_backbone import build_scratch_backbone, build_tokenizer
from actors.model.segmllm import SegMLLM, SegPrompts, TrainSample, decode_seg_prompts

TINY_YAML = "configs/model/tiny.yaml"
EXPRESSIONS = ["red circle", "the blue square moving left", "dog", "a small green triangle that stops"]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(1)


def _mllm(**mllm_overrides: object) -> SegMLLM:
    config = load_config(ModelConfig, TINY_YAML).mllm
    config = dataclasses.replace(config, **mllm_overrides)
    qwen, processor = build_scratch_backbone(ScratchConfig())
    return SegMLLM(qwen, processor, config, prompt_dim=64).eval()


@pytest.fixture(scope="module")
def mllm() -> SegMLLM:
    return _mllm(suffix_batch=3)


def _frames(count: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_tiny_tokenizer_is_deterministic_and_has_qwen_tokens():
    a, b = build_tokenizer(), build_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    for token in ("<|im_start|>", "<|vision_start|>", "<|image_pad|>", "<|video_pad|>"):
        assert token in a.get_vocab()


def test_added_tokens_get_new_rows(mllm: SegMLLM):
    vocab = mllm.processor.tokenizer.get_vocab()
    rows = mllm.hf_model.get_input_embeddings().weight.shape[0]
    assert all(token in vocab for token in ADDED_TOKENS)
    assert max(mllm.token_ids.values()) < rows == len(mllm.processor.tokenizer)


@pytest.mark.parametrize("num_frames", [6, 7])
def test_moment_scores_give_a_curve_per_expression_over_all_frames(mllm: SegMLLM, num_frames: int):
    scores = mllm.moment_scores(_frames(num_frames, 56, 0), EXPRESSIONS)
    assert scores.shape == (len(EXPRESSIONS), num_frames)
    assert torch.isfinite(scores).all()
    assert scores.abs().max() <= 1 / mllm.config.find_tau + 1e-4  # cos / tau
    assert not torch.allclose(scores[0], scores[1])  # the expression matters


def test_shared_prefix_equals_per_expression_computation(mllm: SegMLLM):
    video = _frames(7, 56, 1)
    shared = mllm.moment_scores(video, EXPRESSIONS)  # 4 expressions in suffix batches of 3
    alone = torch.cat([mllm.moment_scores(video, [e]) for e in EXPRESSIONS])
    torch.testing.assert_close(shared, alone, rtol=0, atol=1e-5)
    visual = mllm.visual_inputs(lowres_video=video)
    tokens = mllm._tokenize([find_conversation(e) for e in EXPRESSIONS], visual)
    with torch.no_grad():
        full_prefix, full_suffix = mllm.hidden_states_full(tokens, visual)
        prefix, suffixes = mllm.hidden_states_shared(tokens, visual)
    torch.testing.assert_close(prefix, full_prefix[0], rtol=0, atol=1e-5)
    for a, b in zip(suffixes, full_suffix, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_seg_prompts_shapes_with_and_without_video(mllm: SegMLLM):
    keys = _frames(2, 112, 2)
    with_video = mllm.seg_prompts(keys, EXPRESSIONS[:3], lowres_video=_frames(6, 56, 3))
    images_only = mllm.seg_prompts(keys, EXPRESSIONS[:3])
    assert with_video.prompts.shape == images_only.prompts.shape == (3, 64)
    assert with_video.frame_prompts is None and with_video.text_prompts is None
    assert not torch.allclose(with_video.prompts, images_only.prompts)
    alone = mllm.seg_prompts(keys, EXPRESSIONS[1:2])
    torch.testing.assert_close(images_only.prompts[1:2], alone.prompts, rtol=0, atol=1e-5)


def test_mean_pooled_video_tokens_are_one_per_temporal_index(mllm: SegMLLM):
    """VideoLISA's sparse frames: each temporal token's merged visual tokens averaged into one LLM token."""
    pooled = _mllm(video_token_pooling="mean")
    video = _frames(8, 56, 7)
    plain_visual, pooled_visual = mllm.visual_inputs(lowres_video=video), pooled.visual_inputs(lowres_video=video)
    t = int(plain_visual.video_grid_thw[0, 0])
    plain_tokens = mllm._vision_embeddings(plain_visual)[0]
    pooled_tokens = pooled._vision_embeddings(pooled_visual)[0]
    assert plain_tokens.shape[0] > t and pooled_tokens.shape[0] == t
    torch.testing.assert_close(pooled_tokens, plain_tokens.view(t, -1, plain_tokens.shape[-1]).mean(1))
    tokens = pooled._tokenize([seg_conversation("red circle", 0, True, False)], pooled_visual)
    assert tokens.prefix_ids.count(pooled.hf_model.config.video_token_id) == t
    scores = pooled.moment_scores(video, EXPRESSIONS[:2])
    assert scores.shape == (2, 8) and torch.isfinite(scores).all()
    with torch.no_grad():
        _, shared = pooled.hidden_states_shared(tokens, pooled_visual)
        _, full = pooled.hidden_states_full(tokens, pooled_visual)
    torch.testing.assert_close(shared[0], full[0], atol=1e-4, rtol=1e-4)


def test_tda_and_decoupled_outputs():
    mllm = _mllm(tda=TDAConfig(enabled=True), decouple=DecoupleConfig(enabled=True, club_hidden=16))
    out = mllm.seg_prompts(_frames(3, 112, 4), EXPRESSIONS[:2], lowres_video=_frames(4, 56, 5))
    assert out.prompts.shape == (2, 64)
    assert out.frame_prompts.shape == (2, 3, 64) and out.frame_similarity.shape == (2, 3)
    assert out.frame_similarity.abs().max() <= 1 + 1e-5
    assert out.text_prompts.shape == out.visual_prompts.shape == (2, 64)


def test_bad_inputs_are_named(mllm: SegMLLM):
    with pytest.raises(ValueError, match="expressions must be a non-empty list"):
        mllm.moment_scores(_frames(4, 56, 0), [])
    with pytest.raises(ValueError, match="expression 1 is empty"):
        mllm.moment_scores(_frames(4, 56, 0), ["dog", " "])
    with pytest.raises(ValueError, match="low-resolution video must be"):
        mllm.moment_scores(_frames(4, 56, 0).astype(np.float32), ["dog"])
    with pytest.raises(ValueError, match="key frames must be"):
        mllm.seg_prompts(_frames(2, 112, 0)[..., :2], ["dog"])


def _samples() -> list[TrainSample]:
    masks = torch.zeros(2, 112, 112)
    masks[:, 20:70, 30:90] = 1
    return [
        TrainSample("red circle", _frames(6, 56, 10), key_frames=_frames(2, 112, 11), masks=masks),
        TrainSample(
            "blue square",
            _frames(6, 56, 12),
            frame_labels=torch.tensor([0, 0, 1, 1, 1, 0.0]),
            frame_valid=torch.tensor([True, True, True, True, True, False]),
        ),
    ]


def test_gradients_reach_exactly_the_trainable_parts():
    model = build_model(load_config(ModelConfig, TINY_YAML))
    model.enable_training()
    parts = model.forward_train(_samples())
    assert set(parts) == {"lm", "find", "mask_bce", "mask_dice", "mask_object", "loss"}
    parts["loss"].backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    assert isinstance(model.mllm.qwen, PeftModel)

    def reached(fragment: str) -> bool:
        grads = [p.grad for n, p in trainable.items() if fragment in n]
        return bool(grads) and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)

    for fragment in (
        "lora_B",
        "embed_tokens.token_adapter.trainable_tokens_delta",
        "lm_head.token_adapter.trainable_tokens_delta",
        "seg_proj",
        "find_head",
        "sam2.sam.sam_mask_decoder.transformer",
    ):
        assert reached(fragment), fragment
    # Only the added rows are trainable copies; base matrices, vision tower and SAM2 encoder are frozen.
    delta = next(p for n, p in trainable.items() if "embed_tokens.token_adapter.trainable_tokens_delta" in n)
    assert delta.shape[0] == len(ADDED_TOKENS)
    assert all(not n.startswith("sam2.") or ".sam_mask_decoder." in n for n in trainable)
    assert not any(".visual." in n or "base_layer" in n for n in trainable)


def test_object_presence_loss_trains_the_gate_inference_applies():
    """Key frame 0 holds the target, key frame 1 does not: ``mask_object`` is SAM2's BCE of the object scores
    against (1, 0), and with its weight the presence head (which gates masks to empty at inference) learns."""
    model = build_model(load_config(ModelConfig, TINY_YAML))
    model.enable_training()
    masks = torch.zeros(2, 112, 112)
    masks[0, 20:70, 30:90] = 1
    sample = TrainSample("red circle", _frames(6, 56, 10), key_frames=_frames(2, 112, 11), masks=masks)
    model.train()
    scores = model.sam2.decode_masks(sample.key_frames, model.mllm.train_outputs(sample)[0].seg.prompts.expand(2, -1))
    expected = -(torch.nn.functional.logsigmoid(scores.object_score_logits[0])
                 + torch.nn.functional.logsigmoid(-scores.object_score_logits[1])) / 2
    model.losses.mask_object = 0.0
    without = model.forward_train([sample])
    assert without["mask_object"].item() == pytest.approx(expected.item(), rel=1e-4)
    without["loss"].backward()
    head = model.sam2.sam.sam_mask_decoder.pred_obj_score_head
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in head.parameters())
    model.zero_grad()
    model.losses.mask_object = 1.0
    model.forward_train([sample])["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_full_mode_trains_the_whole_mllm_and_a_loaded_adapter_trains_on(tmp_path):
    model = build_model(load_config(ModelConfig, TINY_YAML))
    model.enable_training("full")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {f"mllm.{n}" for n, _ in model.mllm.named_parameters()} <= trainable
    assert all(not n.startswith("sam2.") or ".sam_mask_decoder." in n for n in trainable)
    model.forward_train(_samples())["loss"].backward()
    assert all(p.grad is not None for n, p in model.mllm.hf_model.model.visual.named_parameters())

    lora = build_model(load_config(ModelConfig, TINY_YAML))
    lora.enable_training()
    lora.mllm.qwen.save_pretrained(str(tmp_path / "adapter"), save_embedding_layers=False)
    loaded = build_model(load_config(ModelConfig, TINY_YAML, [f"mllm.adapter_uri={tmp_path / 'adapter'}"]))
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if "lora_" in n)  # inference: frozen
    loaded.enable_training()
    names = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert {n for n, p in lora.named_parameters() if p.requires_grad} == names
    with pytest.raises(ValueError, match="LoRA adapter attached"):
        loaded.enable_training("full")


def test_decoupled_training_parts():
    config = load_config(ModelConfig, TINY_YAML, ["mllm.decouple.enabled=true"])
    model = build_model(config)
    model.enable_training()
    samples = _samples()
    samples[1] = dataclasses.replace(samples[0], expression="green star")
    parts = model.forward_train(samples)
    assert {"adversarial", "club", "club_likelihood", "mask_bce"} <= set(parts)
    parts["loss"].backward()
    decoupler = model.mllm.decoupler
    assert decoupler.text_proj.weight.grad.abs().sum() > 0
    assert decoupler.text_adversary[0].weight.grad.abs().sum() > 0
    assert decoupler.club.mu[0].weight.grad.abs().sum() > 0


def test_decoupled_reprompt_decodes_the_trained_text_and_visual_prompts_again():
    """DeSa2VA re-prompt: the fused mask is the dense prompt of a second decode of the same text and visual
    prompts (fused again); the [SEG] projection, which decoupled training never supervises, is not read,
    and the gradient of the re-prompted masks reaches both decoupler projections."""
    model = build_model(load_config(ModelConfig, TINY_YAML, ["mllm.decouple.enabled=true"]))
    sam2, decoupler = model.sam2.eval(), model.mllm.decoupler
    states = torch.randn(1, decoupler.text_proj.in_features, generator=torch.Generator().manual_seed(0))
    text, visual = decoupler(states)
    frames = _frames(1, sam2.image_size, seed=5)
    prompts = SegPrompts(prompts=torch.zeros_like(text), text_prompts=text, visual_prompts=visual)
    out = decode_seg_prompts(sam2, frames, prompts, reprompt=True)

    def mean(a, b):  # noqa: ANN001, ANN202
        return [None if x is None else (x + y) / 2 for x, y in zip(vars(a).values(), vars(b).values(), strict=True)]

    first = mean(sam2.decode_masks(frames, text), sam2.decode_masks(frames, visual))
    again = mean(sam2.decode_masks(frames, text, dense_prompt=first[1]),
                 sam2.decode_masks(frames, visual, dense_prompt=first[1]))
    assert out.location_logits is None and again[-1] is None  # no location map head: no location map
    for got, expected in zip(list(vars(out).values())[:-1], again[:-1], strict=True):
        torch.testing.assert_close(got, expected)
    untrained = dataclasses.replace(prompts, prompts=torch.randn_like(text))
    torch.testing.assert_close(decode_seg_prompts(sam2, frames, untrained, reprompt=True).mask_logits, out.mask_logits)
    (out.mask_logits.sum() + out.object_score_logits.sum()).backward()
    assert decoupler.text_proj.weight.grad.abs().sum() > 0
    assert decoupler.visual_proj.weight.grad.abs().sum() > 0
