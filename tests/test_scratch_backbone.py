"""The backbones built from a config: the procedural vocabulary reads every word ``vrseg synth`` writes as one
token, both vocabularies are the same on every build, and the sizes come from ``mllm.scratch``."""

from __future__ import annotations

import pytest

from actors.config import ConfigError, load_config
from actors.model.config import ModelConfig, ScratchConfig
from actors.model.scratch_backbone import build_scratch_backbone, build_tokenizer
from pipelines.synthetic import generate_corpus
from pipelines.synthetic_cli import SynthConfig


def test_every_word_of_a_generated_corpus_is_one_procedural_token() -> None:
    synth = load_config(SynthConfig, "configs/synth/default.yaml", ["text.per_kind=4", "text.no_target=2",
                                                                    "text.moments=6", "scene.num_frames=48"])
    texts = []
    for video in generate_corpus(12, 7, synth.scene, synth.text):
        texts += [e.text for e in video.expressions] + [m.text for m in video.moments]
    words = {word for text in texts for word in text.split()}
    assert len(texts) > 100 and len(words) > 40
    tokenizer = build_tokenizer("procedural")
    split = {word: tokenizer.tokenize(f" {word}") for word in words}
    assert {word: pieces for word, pieces in split.items() if len(pieces) != 1} == {}
    tiny = build_tokenizer("tiny")  # the tiny vocabulary does not cover the grammar: the check can fail
    assert any(len(tiny.tokenize(f" {word}")) > 1 for word in words)


def test_vocabularies_and_weights_are_the_same_on_every_build() -> None:
    assert build_tokenizer("procedural").get_vocab() == build_tokenizer("procedural").get_vocab()
    sizes = ScratchConfig(vocabulary="procedural", hidden_size=32, intermediate_size=64, num_layers=1)
    (a, _), (b, _) = build_scratch_backbone(sizes), build_scratch_backbone(sizes)
    assert all(a.state_dict()[k].equal(v) for k, v in b.state_dict().items())
    assert a.config.text_config.hidden_size == 32 and a.config.text_config.num_hidden_layers == 1


def test_procedural_model_config_builds_its_sizes_and_rejects_bad_ones() -> None:
    config = load_config(ModelConfig, "configs/model/procedural.yaml")
    assert config.mllm.backbone == "scratch" and config.mllm.scratch.vocabulary == "procedural"
    with pytest.raises(ConfigError, match="mllm.scratch.vocabulary"):
        load_config(ModelConfig, "configs/model/procedural.yaml", ["mllm.scratch.vocabulary=english"])
    with pytest.raises(ConfigError, match="divide by num_heads"):
        load_config(ModelConfig, "configs/model/procedural.yaml", ["mllm.scratch.num_heads=3"])
