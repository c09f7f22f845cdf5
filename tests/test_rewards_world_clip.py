"""world-CLIP as 3-in-1's C on the shapes world: a real cosine through the CLIP adapter, the world reward's default C
(the oracle score behind ``similarity="oracle"``), its provenance, the config plumbing and the missing-weights error."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_builders.config import BuildPairsConfig, RewardsSection
from data_builders.scoring import build_reward
from sgalign.config import load_config
from sgalign.rewards.backends import BackendUnavailable, CLIPSimilarity, ImageTextSimilarity, build_backend
from sgalign.rewards.backends import world_clip
from sgalign.rewards.backends.world import world_reward
from sgalign.rewards.backends.world_clip import WorldCLIPSimilarity, default_world_clip_dir
from sgalign.scene_graph import clip_tokenizer
from sgalign.world import render, render_array, sample_split
from sgalign.world.models.clip import pixel_values
from sgalign.world.models.data import caption, corrupt, to_tensor
from sgalign.world.sampler import WorldObject, WorldScene

# a red small circle smaller than a blue large square: no spatial relation -> 3-in-1 type "action" (T = (C + A) / 2)
ACTION = WorldScene((WorldObject("circle", "red", "small", (6, 26, 17, 37)),
                     WorldObject("square", "blue", "large", (36, 22, 55, 41))), ((0, "smaller than", 1),))


@pytest.fixture(scope="module")
def wclip():
    torch.set_num_threads(1)
    return WorldCLIPSimilarity.from_pretrained()


def _pooled(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_similarity_is_the_cosine_of_world_clip_features(wclip):
    """Hand cosine with independent preprocessing (the training's pixel_values, clip_tokenizer, one unpadded text at
    a time) equals the adapter's batched, padded value."""
    assert isinstance(wclip, CLIPSimilarity) and isinstance(wclip, ImageTextSimilarity)
    scenes = sample_split("test", 4, seed=0)
    arr = render_array(scenes)
    texts = [caption(s) for s in scenes[:3]] + ["circle left of square"]  # different lengths: padding in the batch
    got = wclip.similarity([Image.fromarray(a) for a in arr], texts)
    tok, model = clip_tokenizer(), wclip.model
    with torch.no_grad():
        img = _pooled(model.get_image_features(pixel_values=pixel_values(to_tensor(arr))))
        hand = []
        for i, t in enumerate(texts):
            txt = _pooled(model.get_text_features(input_ids=tok(t, return_tensors="pt").input_ids))[0]
            hand.append(float(img[i] @ txt / (img[i].norm() * txt.norm())))
    assert got == pytest.approx(hand, abs=1e-5)
    assert all(-1.0 <= g <= 1.0 for g in got) and max(got) > 0.5  # raw cosine: no x100, no clipping
    assert wclip.similarity([], []) == []
    with pytest.raises(ValueError, match="world-clip-similarity: 2 images but 1 texts"):
        wclip.similarity([Image.fromarray(arr[0])] * 2, ["circle"])


def test_true_caption_beats_a_wrong_colour_caption(wclip):
    """docs/WORLD_MODELS.md measures 0.994 (500 test graphs) for true caption > wrong-colour caption; on 60 graphs
    through the adapter (processor, tokenizer of the folder) at least 57 / 60 must hold."""
    scenes = sample_split("test", 60, seed=0)
    images = [Image.fromarray(a) for a in render_array(scenes)]
    rng = np.random.default_rng(5)
    good = np.array(wclip.similarity(images, [caption(s) for s in scenes]))
    bad = np.array(wclip.similarity(images, [caption(corrupt(s, "colour", rng)) for s in scenes]))
    assert (good > bad).mean() >= 0.95, (good > bad).mean()


def test_world_reward_default_c_is_world_clip_with_provenance(wclip):
    image = render(ACTION)
    reward = world_reward()
    out = reward([image], [ACTION.graph()])
    p = out.parts[0]
    assert p["compbench_3in1/type"] == "action" and p["compbench_3in1/C_text"] == "circle smaller than square"
    assert p["compbench_3in1/C"] == pytest.approx(wclip.similarity([image], ["circle smaller than square"])[0],
                                                  abs=1e-6)
    assert p["compbench_3in1/T"] == pytest.approx((p["compbench_3in1/A"] + p["compbench_3in1/C"]) / 2)
    info = out.provenance[1].backends["similarity"]
    assert (info.name, info.kind, info.fallback) == ("world-clip-similarity", "world", False)
    d = info.details
    assert d["cosine"] is True and d["trained"] is True and d["folder"] == "world-clip"
    assert d["weights_files"] == ["model-vision.safetensors", "text_encoder/model.safetensors"]
    assert d["training"]["test_metrics"]["vs_colour"] > 0.97
    assert not out.any_fallback
    rec = out.to_records()[0]["provenance"][1]["backends"]["similarity"]
    assert rec["name"] == "world-clip-similarity" and rec["details"]["weights_sha256"] == d["weights_sha256"]
    # the oracle score stays available, labelled as such; a ready backend object is used as is
    oracle = world_reward(similarity="oracle").rewards[1].similarity.info
    assert (oracle.name, oracle.details["cosine"]) == ("world-oracle-similarity", False)
    assert world_reward(similarity=wclip).rewards[1].similarity is wclip
    with pytest.raises(ValueError, match="unknown world similarity 'clip'"):
        world_reward(similarity="clip")
    with pytest.raises(ValueError, match="reads no files"):
        world_reward(similarity="oracle", world_clip_path="somewhere")


def _linked(tmp_path, skip=()):
    """The shipped world-CLIP folder as symlinks, without the files in ``skip`` (a stripped checkout)."""
    root, dst = default_world_clip_dir(), tmp_path / "world-clip"
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and rel not in skip:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).symlink_to(f)
    dst.mkdir(exist_ok=True)
    return dst


def test_missing_weights_raise_a_clear_error(tmp_path, monkeypatch):
    no_text = _linked(tmp_path / "a", skip={"text_encoder/model.safetensors"})
    shard = r"missing weight shard\(s\) \['text_encoder/model.safetensors'\]"
    with pytest.raises(BackendUnavailable, match=shard) as e:
        world_reward(world_clip_path=no_text)
    assert "pretrain_clip.py" in str(e.value) and "similarity='oracle'" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BackendUnavailable, match="missing 4 required file.*config.json.*tokenizer/tokenizer.json"):
        build_backend("similarity", "world-clip", path=str(empty))  # strict: no fallback
    # a stripped checkout (no shipped folder): the default reward fails, naming the folder and what to do
    monkeypatch.setattr(world_clip, "default_world_clip_dir", lambda: tmp_path / "gone" / "world-clip")
    with pytest.raises(BackendUnavailable, match=r"world-clip is not a folder.*restore it.*similarity='oracle'"):
        world_reward()
    with pytest.raises(BackendUnavailable, match="world-clip-similarity"):
        build_reward(RewardsSection())
    assert build_reward(RewardsSection(world_similarity="oracle")).rewards[1].similarity.info.name == \
        "world-oracle-similarity"  # the explicit option needs no files


def test_untrained_folder_is_marked_fallback(tmp_path):
    sim = WorldCLIPSimilarity.from_pretrained(_linked(tmp_path, skip={"training_record.json"}))
    assert sim.info.fallback is True and sim.info.details["trained"] is False and sim.info.details["training"] is None


def test_build_pairs_config_reaches_the_option(tmp_path):
    yaml = Path(__file__).resolve().parent.parent / "configs" / "build_pairs" / "world.yaml"
    assert load_config(BuildPairsConfig, yaml).rewards.world_similarity == "world-clip"
    cfg = load_config(BuildPairsConfig, yaml, ["rewards.world_similarity=oracle"])
    assert cfg.rewards.world_similarity == "oracle" and cfg.fingerprint()["rewards"]["world_similarity"] == "oracle"
    reward = build_reward(cfg.rewards)
    assert reward.rewards[1].similarity.info.name == "world-oracle-similarity"
    assert [r.name for r in build_reward(RewardsSection(members=["dpg"])).rewards] == ["dpg"]  # no C, no load
    with pytest.raises(ValueError, match="world_clip_path is only read with rewards.world_similarity: world-clip"):
        build_reward(RewardsSection(world_similarity="oracle", world_clip_path="x"))
    with pytest.raises(ValueError, match="only read with rewards.preset: world"):
        build_reward(RewardsSection(preset="custom", world_similarity="oracle",
                                    backends={"vqa": {"name": "scripted"}}, members=["dpg"]))
    with pytest.raises(BackendUnavailable, match="world-clip-similarity: missing"):
        build_reward(RewardsSection(world_clip_path=str(tmp_path / "nowhere")))
