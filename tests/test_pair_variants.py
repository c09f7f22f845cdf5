"""Gold and shuffled candidate datasets (data_builders.variants) derived from a tiny shapes build: the gold winner is
the exact true render, the loser the base's min-reward candidate; shuffled permutes rewards and scores together;
the source is never touched; the trainer's reader takes both."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from build_pairs_helpers import rows, small_config
from data_builders import shards
from data_builders.laion_sg import build_candidates, load_candidates
from data_builders.shapes import plan_world
from data_builders.variants import GOLD_REWARD, VariantError, derive_variant
from sgalign.hashing import folder_sha256
from sgalign.pipelines.tiny import make_tiny
from sgalign.training.data import CandidatePairs
from sgalign.world import render, sample_split


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    torch.set_num_threads(1)
    tiny = make_tiny("sd15-sg", tmp_path_factory.mktemp("m") / "tiny", gate_init=0.5)
    out = tmp_path_factory.mktemp("src") / "pairs"
    cfg = small_config(tiny, source="shapes", world={"split": "train", "n": 3, "seed": 5},
                       generation={"k": 3}, rewards={"world_similarity": "oracle"})
    build_candidates(plan_world(cfg.world), cfg, out, rank=0, world_size=1, progress=False, log=lambda *_: None)
    return out


def test_gold_winner_is_the_true_render_and_loser_the_worst(source, tmp_path):
    before = folder_sha256(source)
    summary = derive_variant(source, tmp_path / "gold", "gold")
    src, gold = rows(load_candidates(source)), rows(load_candidates(tmp_path / "gold"))
    scenes = sample_split("train", 3, seed=5)
    assert len(gold) == 3 and summary["k"] == 2 and summary["variant"] == "gold"
    for i, (s, g) in enumerate(zip(src, gold)):
        size = Image.open(io.BytesIO(s["candidates"][0])).size
        truth = render(scenes[i]).resize(size, Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(g["candidates"][0]))), np.asarray(truth))
        lose = int(np.argmin(s["reward"]))
        assert g["candidates"][1] == s["candidates"][lose] and g["seeds"][1] == s["seeds"][lose]
        assert g["reward"] == [GOLD_REWARD, min(s["reward"])]
        assert g["annotation"] == s["annotation"]
        # the render's scores are the source reward's own verdict (the oracle reads a true render perfectly)
        assert g["scores"]["dpg"][0] == pytest.approx(1.0) and g["scores"]["dpg"][1] == s["scores"]["dpg"][lose]
        prov = json.loads(g["provenance"])["variant"]
        assert prov == {"variant": "gold", "source_dataset_id": summary["source_dataset_id"], "seed": 0}
    build = json.loads((tmp_path / "gold" / shards.BUILD_FILE).read_text())
    assert build["variant"] == "gold" and build["source_dataset_id"] == summary["source_dataset_id"]
    assert summary["render_reward"]["n"] == 3
    # the trainer's reader: every annotation with a pair yields render-over-worst
    pairs = CandidatePairs(tmp_path / "gold", margin=0.05)
    assert all(it.win == 0 and it.lose == 1 for it in pairs.sampler.epoch_items(0))
    assert folder_sha256(source) == before
    # a rerun is a no-op returning the same summary
    assert derive_variant(source, tmp_path / "gold", "gold") == summary


def test_shuffled_is_a_seeded_permutation(source, tmp_path):
    before = folder_sha256(source)
    summary = derive_variant(source, tmp_path / "sh", "shuffled", seed=3)
    src, shf = rows(load_candidates(source)), rows(load_candidates(tmp_path / "sh"))
    moved = 0
    for s, t in zip(src, shf):
        assert t["candidates"] == s["candidates"] and t["seeds"] == s["seeds"]
        assert sorted(t["reward"]) == sorted(s["reward"])
        perm = np.random.default_rng([3, src.index(s)]).permutation(len(s["reward"]))
        assert t["reward"] == [s["reward"][j] for j in perm]
        for c, v in s["scores"].items():  # every column moves with the reward
            assert t["scores"][c] == [v[j] for j in perm]
        moved += t["reward"] != s["reward"]
    assert moved > 0 and summary["seed"] == 3
    assert json.loads(shf[0]["provenance"])["variant"]["variant"] == "shuffled"
    assert folder_sha256(source) == before
    derive_variant(source, tmp_path / "sh4", "shuffled", seed=4)
    assert [r["reward"] for r in rows(load_candidates(tmp_path / "sh4"))] != [r["reward"] for r in shf]


def test_bad_requests(source, tmp_path):
    with pytest.raises(VariantError, match="unknown variant 'best'"):
        derive_variant(source, tmp_path / "x", "best")
    with pytest.raises(VariantError, match="inside it"):
        derive_variant(source, source / "gold", "gold")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VariantError, match="not a finished build_pairs"):
        derive_variant((tmp_path / "empty").resolve(), tmp_path / "y", "shuffled")
    derive_variant(source, tmp_path / "z", "shuffled", seed=1)
    with pytest.raises(shards.BuildMismatch, match="other settings"):
        derive_variant(source, tmp_path / "z", "shuffled", seed=2)
