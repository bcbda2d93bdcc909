"""SAM2 bridge and video session on the tiny SAM2.1 configuration (128 px, real ``sam2`` modules)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from actors.config import ConfigError, load_config
from actors.model.config import ModelConfig
from actors.model.sam2_bridge import (
    CheckpointError,
    Sam2Bridge,
    Sam2Config,
    build_sam2,
    build_sam2_model,
    load_weights,
    read_state_dict,
    save_weights,
)
from actors.model.sam2_session import Sam2VideoSession

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml"

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def config() -> Sam2Config:
    return load_config(ModelConfig, TINY_YAML).sam2


@pytest.fixture(scope="module")
def bridge(config: Sam2Config) -> Sam2Bridge:
    return build_sam2(config)


def moving_discs(num_frames: int, num_objects: int, size: tuple[int, int] = (128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames with ``num_objects`` coloured discs moving over a textured background,
    and their (num_objects, T, H, W) masks."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    masks = np.zeros((num_objects, num_frames, height, width), bool)
    for t in range(num_frames):
        wave = np.sin(xx / 9.0 + t / 3.0)[..., None] * np.array([1.0, 0.5, 0.2])
        frames[t] = (60 + 30 * wave).astype(np.uint8)
        for k in range(num_objects):
            cx, cy = (20 + 4 * t + 37 * k) % width, (30 + 23 * k + 2 * t) % height
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (10 + k) ** 2
            masks[k, t] = disc
            frames[t][disc] = [200, (70 + 60 * k) % 256, 40]
    return frames, masks


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0, b > 0
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def run_session(bridge: Sam2Bridge, frames: np.ndarray, seeds: dict, passes: list[tuple[int, bool]]) -> dict:
    """Seed ``{obj: (frame, mask)}``, run ``[(start, reverse)]`` passes; {(frame, obj): mask logits}."""
    session = Sam2VideoSession(bridge, frames)
    for obj, (frame_idx, mask) in seeds.items():
        session.add_mask(obj, frame_idx, mask)
    out = {}
    for start, reverse in passes:
        for result in session.propagate(start, reverse=reverse):
            for i, obj in enumerate(result.obj_ids):
                out[(result.frame_idx, obj)] = result.mask_logits[i]
    return out


# ---------------------------------------------------------------- build and config


def test_tiny_config_builds_a_small_sam2(bridge: Sam2Bridge) -> None:
    params = sum(p.numel() for p in bridge.sam.parameters())
    assert 1_500_000 < params < 2_500_000
    assert bridge.image_size == 128
    assert bridge.prompt_dim == 64 == bridge.sam.hidden_dim
    assert len(bridge.sam.memory_attention.layers) == 1
    assert not bridge.sam.training


def test_same_seed_builds_identical_weights(config: Sam2Config, bridge: Sam2Bridge) -> None:
    again = build_sam2_model(config).state_dict()
    assert all(torch.equal(again[k], v) for k, v in bridge.sam.state_dict().items())


def test_misspelled_keys_fail_before_weights_are_read(config: Sam2Config, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="seeed"):
        load_config(ModelConfig, TINY_YAML, ["sam2.seeed=3"])
    with pytest.raises(ConfigError, match="config_name"):
        load_config(ModelConfig, TINY_YAML, ["sam2.config_name=configs/sam2.1/sam2.1_hiera_tt.yaml"])
    typo = Sam2Config(
        config_name=config.config_name,
        overrides=[*config.overrides, "model.image_encoder.trunk.embed_dimm=24"],
        checkpoint=str(tmp_path / "does-not-exist.safetensors"),
    )
    with pytest.raises(ConfigError, match="embed_dimm"):
        build_sam2_model(typo)


# ---------------------------------------------------------------- decode_masks


def test_decode_masks_shapes(bridge: Sam2Bridge) -> None:
    frames, _ = moving_discs(2, 1, size=(96, 160))
    with torch.no_grad():
        pred = bridge.decode_masks(frames, torch.randn(2, bridge.prompt_dim))
        assert pred.mask_logits.shape == (2, 96, 160)
        assert pred.low_res_logits.shape == (2, 1, 32, 32)
        assert pred.ious.shape == pred.object_score_logits.shape == (2,)
        shared = bridge.decode_masks(frames[:1], torch.randn(3, 2, bridge.prompt_dim))
        assert shared.mask_logits.shape == (3, 96, 160)
        features = bridge.encode_images(frames[:1])
        prompts = torch.randn(3, bridge.prompt_dim)
        from_frames = bridge.decode_masks(frames[:1], prompts)
        from_features = bridge.decode_masks(features, prompts)
        assert torch.equal(from_frames.mask_logits, from_features.mask_logits)
    with pytest.raises(ValueError, match="prompt_embeddings"):
        bridge.decode_masks(frames, torch.randn(2, 256))
    with pytest.raises(ValueError, match="uint8"):
        bridge.decode_masks(frames.astype(np.float32), torch.randn(2, bridge.prompt_dim))


def test_decode_masks_is_differentiable_and_takes_a_dense_prompt(config: Sam2Config) -> None:
    bridge = build_sam2(config).train()
    frames, masks = moving_discs(2, 1)
    prompts = torch.randn(2, bridge.prompt_dim, requires_grad=True)
    first = bridge.decode_masks(frames, prompts)
    second = bridge.decode_masks(frames, prompts, dense_prompt=first.low_res_logits)
    assert not torch.allclose(first.mask_logits, second.mask_logits)
    target = torch.as_tensor(masks[0, :2]).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(second.mask_logits, target)
    loss.backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    decoder_grads = [p.grad for p in bridge.sam.sam_mask_decoder.parameters() if p.grad is not None]
    assert decoder_grads and sum(g.abs().sum() for g in decoder_grads) > 0
    assert bridge.sam.image_encoder.trunk.patch_embed.proj.weight.grad.abs().sum() > 0


def test_absent_objects_are_gated_in_eval_only(config: Sam2Config) -> None:
    bridge = build_sam2(config)
    with torch.no_grad():
        bridge.sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(-50.0)
    frames, _ = moving_discs(1, 1)
    prompts = torch.randn(1, bridge.prompt_dim)
    with torch.no_grad():
        gated = bridge.decode_masks(frames, prompts)
        raw = bridge.train().decode_masks(frames, prompts)
    assert gated.object_score_logits.item() < 0
    assert torch.all(gated.low_res_logits == -1024.0)
    assert raw.low_res_logits.std() > 0


# ---------------------------------------------------------------- checkpoints


def perturbed(config: Sam2Config) -> Sam2Bridge:
    bridge = build_sam2(config)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in bridge.sam.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=generator))
    return bridge


def test_checkpoint_round_trip_is_bit_exact(config: Sam2Config, tmp_path: Path) -> None:
    source = perturbed(config)
    frames, _ = moving_discs(1, 1)
    prompts = torch.randn(2, source.prompt_dim)
    with torch.no_grad():
        expected = source.decode_masks(frames, prompts).mask_logits
    save_weights(source.sam, str(tmp_path / "sam2.safetensors"))
    torch.save({"model": source.sam.state_dict()}, tmp_path / "sam2.pt")
    for name in ("sam2.safetensors", "sam2.pt"):
        loaded = build_sam2(Sam2Config(config.config_name, list(config.overrides), str(tmp_path / name)))
        with torch.no_grad():
            assert torch.equal(loaded.decode_masks(frames, prompts).mask_logits, expected), name


def test_checkpoint_round_trip_through_s3(config: Sam2Config, s3) -> None:
    source = perturbed(config)
    uri = s3.uri("models/sam2.safetensors")
    save_weights(source.sam, uri, s3.storage_options)
    target = build_sam2(config)
    assert load_weights(target.sam, uri, s3.storage_options) == ([], [])
    assert all(torch.equal(target.sam.state_dict()[k], v) for k, v in source.sam.state_dict().items())


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(bridge: Sam2Bridge, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": bridge.sam.state_dict(), "extra": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="code execution") as info:
        read_state_dict(str(path))
    assert "evil.pt" in str(info.value)
    assert not marker.exists()


def test_wrong_keys_are_reported_by_name(config: Sam2Config, tmp_path: Path) -> None:
    target = build_sam2(config)
    state = dict(target.sam.state_dict())
    del state["no_mem_embed"]
    state["sam_mask_decoder.bogus_weight"] = torch.zeros(3)
    path = str(tmp_path / "partial.safetensors")
    import safetensors.torch

    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(CheckpointError, match="no_mem_embed") as info:
        load_weights(target.sam, path)
    assert "sam_mask_decoder.bogus_weight" in str(info.value)
    assert load_weights(target.sam, path, strict=False) == (["no_mem_embed"], ["sam_mask_decoder.bogus_weight"])
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_weights(target.sam, str(tmp_path / "weights.bin"))


# ---------------------------------------------------------------- video session


def test_session_matches_stock_video_predictor(config: Sam2Config, bridge: Sam2Bridge, tmp_path: Path) -> None:
    from sam2.build_sam import build_sam2_video_predictor

    frames, masks = moving_discs(12, 1)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{t:05d}.jpg", quality=95)
    decoded = np.stack([np.asarray(Image.open(tmp_path / f"{t:05d}.jpg").convert("RGB")) for t in range(12)])
    predictor = build_sam2_video_predictor(
        config.config_name, device="cpu", hydra_overrides_extra=list(config.overrides)
    )
    predictor.load_state_dict(bridge.sam.state_dict())
    stock = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hole filling needs the CUDA extension; stock skips it with a warning
        state = predictor.init_state(str(tmp_path))
        predictor.add_new_mask(state, 4, "disc", masks[0, 4])
        for reverse in (False, True):
            for frame_idx, _, video_masks in predictor.propagate_in_video(state, start_frame_idx=4, reverse=reverse):
                stock[frame_idx] = video_masks[0, 0].clone()
    ours = run_session(bridge, decoded, {"disc": (4, masks[0, 4])}, [(4, False), (4, True)])
    assert sorted(stock) == sorted(f for f, _ in ours) == list(range(12))
    for frame_idx, expected in stock.items():
        assert (expected > 0).sum() > 0
        assert iou(ours[(frame_idx, "disc")], expected) >= 0.99, frame_idx
        torch.testing.assert_close(ours[(frame_idx, "disc")], expected, atol=1e-3, rtol=0)


def test_batched_objects_equal_per_object_runs(bridge: Sam2Bridge) -> None:
    """Objects seeded together (``add_masks``) and tracked as one batch give each object's single run."""
    frames, masks = moving_discs(10, 3)
    anchors = {0: 3, 1: 3, 2: 6}  # objects 0 and 1 share a memory layout; object 2 is seeded elsewhere
    seeds = {k: (a, masks[k, a]) for k, a in anchors.items()}
    session = Sam2VideoSession(bridge, frames)
    session.add_masks(3, {0: masks[0, 3], 1: masks[1, 3]})  # seeded as one batch
    session.add_mask(2, 6, masks[2, 6])
    batched = {}
    for reverse, start in ((False, 3), (True, 6)):
        for result in session.propagate(start, reverse=reverse, object_starts=anchors):
            for i, obj in enumerate(result.obj_ids):
                batched[(result.frame_idx, obj)] = result.mask_logits[i]
    for obj, anchor in anchors.items():
        single = run_session(bridge, frames, {obj: seeds[obj]}, [(anchor, False), (anchor, True)])
        assert {f for f, o in batched if o == obj} == set(range(10))
        for frame_idx in range(10):
            assert iou(batched[(frame_idx, obj)], single[(frame_idx, obj)]) >= 0.999
            torch.testing.assert_close(batched[(frame_idx, obj)], single[(frame_idx, obj)], atol=1e-4, rtol=0)


def test_objects_seeded_on_different_frames_share_memory_attention_once_their_memory_fills(bridge: Sam2Bridge) -> None:
    """Anchors 2 and 5: once both objects' memories hold as many frames and pointers, memory attention runs
    once for both, and each object's masks still equal its single run."""
    frames, masks = moving_discs(40, 2)
    anchors = {"a": 2, "b": 5}
    calls = []
    # the objects' cross-attention to their memories: (B, HW, C) per call
    cross_attention = bridge.sam.memory_attention.layers[0].cross_attn_image
    hook = cross_attention.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    try:
        session = Sam2VideoSession(bridge, frames)
        for obj, anchor in anchors.items():
            session.add_mask(obj, anchor, masks[0 if obj == "a" else 1, anchor])
        together = {(r.frame_idx, o): r.mask_logits[i]
                    for r in session.propagate(2, object_starts=anchors) for i, o in enumerate(r.obj_ids)}
    finally:
        hook.remove()
    tracked_pairs = sum(1 for (f, o) in together if f != anchors[o])
    assert tracked_pairs == 37 + 34
    # pointers fill up 15 frames after a seed: from frame 21 on the two memories have the same shape
    assert calls.count(2) >= 18, calls
    assert len(calls) == tracked_pairs - calls.count(2)
    for obj, anchor in anchors.items():
        k = 0 if obj == "a" else 1
        single = run_session(bridge, frames, {obj: (anchor, masks[k, anchor])}, [(anchor, False)])
        for frame_idx in range(anchor, 40):
            torch.testing.assert_close(together[(frame_idx, obj)], single[(frame_idx, obj)], atol=1e-4, rtol=0)


def test_objects_join_at_their_start_and_seeds_are_returned(bridge: Sam2Bridge) -> None:
    frames, masks = moving_discs(8, 2)
    session = Sam2VideoSession(bridge, frames)
    session.add_mask("a", 2, masks[0, 2])
    session.add_mask("b", 5, masks[1, 5])
    results = list(session.propagate(0, object_starts={"a": 2, "b": 5}))
    assert [r.frame_idx for r in results] == list(range(2, 8))
    assert [r.obj_ids for r in results] == [["a"]] * 3 + [["a", "b"]] * 3
    seed_b = results[3]
    assert seed_b.is_seed == [False, True]
    # the seed comes back through SAM2's low-resolution (S/4) mask, as in the stock predictor
    assert iou(seed_b.mask_logits[1], torch.as_tensor(masks[1, 5]).float()) > 0.85
    for r in results:
        assert torch.all((r.object_scores > 0) & (r.object_scores < 1))
        assert r.mask_logits.shape == (len(r.obj_ids), 128, 128)


def test_backward_propagation_from_the_last_frame(bridge: Sam2Bridge) -> None:
    frames, masks = moving_discs(8, 1)
    session = Sam2VideoSession(bridge, frames)
    session.add_mask("x", 7, masks[0, 7])
    results = list(session.propagate(7, reverse=True))
    assert [r.frame_idx for r in results] == list(range(7, -1, -1))
    assert results[0].is_seed == [True] and not any(r.is_seed[0] for r in results[1:])
    assert all((r.mask_logits > 0).sum() > 0 for r in results)
    with pytest.raises(ValueError, match="before start"):
        next(session.propagate(3, end=1))


def test_clear_semantics(bridge: Sam2Bridge) -> None:
    frames, masks = moving_discs(10, 1)
    session = Sam2VideoSession(bridge, frames)
    session.add_mask("x", 0, masks[0, 0])
    first = [r.mask_logits[0] for r in session.propagate(0)]
    assert session.memory_frames("x")[1]  # tracked memory held
    session.clear("x")
    assert session.memory_frames("x") == ([0], [])
    again = [r.mask_logits[0] for r in session.propagate(0)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))

    # BAP's update: at frame 4 drop everything and re-seed; later frames equal a fresh session seeded at 4.
    session = Sam2VideoSession(bridge, frames)
    session.add_mask("x", 0, masks[0, 0])
    reseeded = {}
    for result in session.propagate(0):
        reseeded[result.frame_idx] = result.mask_logits[0]
        if result.frame_idx == 4:
            session.clear("x", keep_seeds=False)
            session.add_mask("x", 4, masks[0, 4])
    fresh = run_session(bridge, frames, {"x": (4, masks[0, 4])}, [(4, False)])
    for frame_idx in range(5, 10):
        assert torch.equal(reseeded[frame_idx], fresh[(frame_idx, "x")]), frame_idx

    session.clear("x", keep_seeds=False)
    with pytest.raises(RuntimeError, match="'x' has no seed mask"):
        list(session.propagate(0, object_starts={"x": 0}))
    with pytest.raises(KeyError, match="unknown object 'y'"):
        session.clear("y")
    session.remove("x")
    assert session.obj_ids == []


def test_memory_stays_bounded_and_frames_are_fetched_once_per_pass(bridge: Sam2Bridge) -> None:
    frames, masks = moving_discs(48, 2, size=(64, 96))
    fetched: list[int] = []

    def source(frame_idx: int) -> np.ndarray:
        fetched.append(frame_idx)
        return frames[frame_idx]

    session = Sam2VideoSession(bridge, source, num_frames=48)
    session.add_mask("a", 20, masks[0, 20])
    session.add_mask("b", 20, masks[1, 20])
    for result in session.propagate(20):
        assert result.mask_logits.shape == (2, 64, 96)
    for _ in session.propagate(20, reverse=True):
        pass
    # one fetch per tracked frame; the seed frame is fetched once, by add_mask (its output is the seed)
    assert sorted(fetched) == sorted([20, *range(21, 48), *range(19, -1, -1)])
    reach = session._reach
    seeds, tracked = session.memory_frames("a")
    assert seeds == [20]
    assert all(min(abs(t - 0), abs(t - 20)) <= reach for t in tracked)
    assert len(tracked) <= 3 * reach + 2


def test_bad_frames_and_masks_are_named(bridge: Sam2Bridge) -> None:
    frames, masks = moving_discs(4, 1)
    uneven = [frames[0], frames[1], frames[2][:64]]
    session = Sam2VideoSession(bridge, uneven)
    session.add_mask("x", 0, masks[0, 0])
    with pytest.raises(ValueError, match="frame 2: size"):
        list(session.propagate(0))
    with pytest.raises(ValueError, match="mask for object 'x' at frame 1"):
        session.add_mask("x", 1, masks[0, 0, :64])
    with pytest.raises(IndexError, match="frame_idx=9"):
        session.add_mask("x", 9, masks[0, 0])
    with pytest.raises(ValueError, match="num_frames is required"):
        Sam2VideoSession(bridge, lambda i: frames[i])


def test_one_mask_per_prompt_turns_off_dynamic_multimask() -> None:
    """A decoder trained with one mask per prompt has untrained multimask tokens: eval mode must not swap an
    unstable mask for one of them (the video predictor's dynamic multimask via stability), and its decoded
    masks are the same in eval and train mode; the published configs keep the predictor's setting."""
    tiny = load_config(ModelConfig, "configs/model/tiny.yaml").sam2
    assert build_sam2(tiny).sam.sam_mask_decoder.dynamic_multimask_via_stability
    one = [*tiny.overrides, "model.multimask_output_in_sam=false", "model.multimask_output_for_tracking=false"]
    bridge = build_sam2(dataclasses.replace(tiny, overrides=one))
    assert not bridge.sam.sam_mask_decoder.dynamic_multimask_via_stability
    frames = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    prompts = torch.randn(2, bridge.prompt_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        evaluated = bridge.eval().decode_masks(frames, prompts)
        trained = bridge.train().decode_masks(frames, prompts)
    torch.testing.assert_close(evaluated.ious, trained.ious)  # the same mask chosen (eval mode also gates it)


def test_tracking_a_seed_frame_holds_its_seed_out_and_changes_nothing_else(bridge: Sam2Bridge) -> None:
    """``track_seeds``: on a seed frame besides an object's start, the object is also tracked from its memory with
    that seed held out (the mask anchor updating replaces: MomentSeg Table 13's "w/o updating"); every output and
    the memory later frames read stay as without it."""
    frames, masks = moving_discs(10, 2)

    def seeded() -> Sam2VideoSession:
        session = Sam2VideoSession(bridge, frames)
        session.add_masks(0, {"a": masks[0, 0], "b": masks[1, 0]})
        session.add_mask("a", 5, masks[0, 5])  # "a" is re-seeded on frame 5; "b" has its start only
        return session

    plain = list(seeded().propagate(0))
    probed = list(seeded().propagate(0, track_seeds=True))
    assert [sorted(r.tracked_at_seed) for r in probed] == [[]] * 5 + [["a"]] + [[]] * 4
    for a, b in zip(plain, probed, strict=True):
        assert a.obj_ids == b.obj_ids and a.is_seed == b.is_seed and a.tracked_at_seed == {}
        torch.testing.assert_close(a.mask_logits, b.mask_logits, atol=1e-4, rtol=0)
    held_out = probed[5].tracked_at_seed["a"]
    assert held_out.shape == (128, 128)
    assert not torch.equal(held_out > 0, probed[5].mask_logits[0] > 0)  # not the seed it stands beside

    # the same as taking the seed away just before the frame: frame 5 tracked from the seed on 0 and frames 1-4
    session = seeded()
    for result in session.propagate(0, end=5):
        if result.frame_idx == 4:
            del session._objects["a"].seeds[5]
        if result.frame_idx == 5:
            torch.testing.assert_close(result.mask_logits[0], held_out, atol=1e-4, rtol=0)
