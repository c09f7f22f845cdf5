"""build_pairs candidate datasets on a tiny random-init SD1.5-SG: schema, seeds, scores re-computed from the stored
PNGs, rejects and failures with reasons, leftovers of a crash, settings guard, the trainer reading the folder."""
import hashlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from data_builders import laion_sg, shards
from data_builders.laion_sg import build_candidates, candidate_seed, load_candidates, plan_annotations
from data_builders.scoring import build_reward
from data_builders.shapes import plan_world
from sgalign.scene_graph import SceneGraph, write_split
from sgalign.world import sample_split, split_records
from build_pairs_helpers import rows, small_config, tiny  # noqa: F401 (tiny: a fixture)


@pytest.fixture(scope="module")
def split_file(tmp_path_factory):
    """4 world records, one invalid record (relation names a missing item), one repeated img_id."""
    recs = [r.to_json_dict() for r in split_records("train", sample_split("train", 4, seed=3))]
    bad = json.loads(json.dumps(recs[1]))
    bad["img_id"], bad["relations"][0]["item2"] = "999", 77
    raws = recs[:2] + [bad] + recs[2:] + [recs[0]]
    p = tmp_path_factory.mktemp("in") / "split.json"
    write_split(raws, p)
    return p


@pytest.fixture(scope="module")
def built(tiny, split_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    cfg = small_config(tiny, source="laion-sg", shards={"annotations_per_shard": 2})  # calls of 2 x 4 images
    summary = build_candidates(plan_annotations(split_file), cfg, out, rank=0, world_size=1, progress=False,
                               log=lambda *_: None)
    return out, cfg, summary


def test_schema_seeds_and_scores(built, tiny):
    from sgalign.pair_schema import candidate_features
    out, cfg, summary = built
    ds = load_candidates(out)
    assert len(ds) == 4 and ds.features == candidate_features(
        ["dpg", "compbench_3in1", "compbench_3in1/A", "compbench_3in1/S", "compbench_3in1/C", "compbench_3in1/T"])
    assert summary["candidates"] == 16 and summary["annotations"]["built"] == 4
    reward = build_reward(cfg.rewards)
    for row in rows(ds):
        rec = json.loads(row["annotation"])
        # seed of candidate k: blake2b-64 of "seed:img_id:k", top bit cleared (recomputed here independently)
        want = [int.from_bytes(hashlib.blake2b(f"0:{rec['img_id']}:{k}".encode(), digest_size=8).digest(), "big")
                & (2 ** 63 - 1) for k in range(4)]
        assert row["seeds"] == want == [candidate_seed(0, rec["img_id"], k) for k in range(4)]
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in row["candidates"]]
        assert all(im.size == (16, 16) for im in images) and len(set(row["candidates"])) == 4
        # every stored score is what the configured reward gives on the stored (lossless) PNG
        again = reward(images, [SceneGraph.from_record(rec) for _ in images])
        assert row["scores"]["dpg"] == [s["dpg"] for s in again.scores]
        assert row["scores"]["compbench_3in1"] == [s["compbench_3in1"] for s in again.scores]
        assert row["scores"]["compbench_3in1/A"] == [p["compbench_3in1/A"] for p in again.parts]
        # Eq. 17: combined reward = mean of the two components
        assert row["reward"] == pytest.approx([(d + c) / 2 for d, c in
                                               zip(row["scores"]["dpg"], row["scores"]["compbench_3in1"])], abs=1e-15)
        prov = json.loads(row["provenance"])
        assert prov["base_model"]["random_init"]  # the tiny model is labelled random-init
        assert prov["any_fallback"] is False  # world-oracle backends are not fallbacks
        assert prov["base_model"]["sha256"] == shards.folder_sha256(tiny)
        assert prov["generation"]["k"] == 4 and prov["generation"]["num_inference_steps"] == 2
        # the graph guidance the candidates were sampled with (the tiny folder has none: plain)
        assert prov["generation"]["graph_guidance_scale"] is None
        assert {r["reward"] for r in prov["rewards"]} == {"dpg", "compbench_3in1"}


def test_candidates_match_generating_one_annotation_alone(built):
    """The batched call (2 annotations x 4 seeds) gives each annotation the images it gets alone with its seeds."""
    out, cfg, _ = built
    row = load_candidates(out)[1]
    rec = json.loads(row["annotation"])
    pipe, _ = laion_sg.load_pipeline(cfg.model)
    gens = [torch.Generator().manual_seed(s) for s in row["seeds"]]
    alone = pipe([rec], num_images_per_graph=4, generator=gens, num_inference_steps=2, guidance_scale=3.0,
                 height=16, width=16, output_type="np").images
    stored = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in row["candidates"]])
    assert np.abs(stored.astype(int) - np.round(alone * 255).astype(int)).max() <= 1


def test_rejects_listed_with_reasons(built):
    out, _, summary = built
    rej = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["index"]) for r in rej] == [("invalid-record", 2), ("duplicate-img-id", 5)]
    assert "item2" in rej[0]["field"] and rej[0]["img_id"] == "999"
    assert "already used by record 0" in rej[1]["reason"]
    assert summary["rejects"] == {"input": 2, "failures": 0}
    idx = json.loads((out / "index.json").read_text())
    assert idx["complete"] and idx["rows"] == 4 and idx["num_shards"] == 2


def test_trainer_reads_the_folder(built):
    from sgalign.training.data import CandidatePairs
    out, cfg, _ = built
    src = CandidatePairs(out, margin=0.0, seed=0)
    ds = load_candidates(out)
    it = src.stream()
    for _ in range(3):
        p = next(it)
        r = ds[p.row]["reward"]
        assert p.score_w == max(r[i] for i in range(4) if f"{p.row}/{ds[p.row]['seeds'][i]}" == p.id_w)
        assert p.score_w > p.score_l


class _FailOn:
    """The world reward, raising for one graph (a backend crash on one annotation)."""

    def __init__(self, reward, bad_phrase):
        self.reward, self.bad = reward, bad_phrase
        self.rewards, self.name = reward.rewards, reward.name

    def __call__(self, images, graphs):
        if any(self.bad in g.serialize() for g in graphs):
            raise RuntimeError("backend crashed")
        return self.reward(images, graphs)


def test_failure_costs_only_its_annotation(tiny, tmp_path):
    # 1 of 4 failing is over the default max_failed_share (0.1); allowed here to see what the failure costs
    cfg = small_config(tiny, world={"n": 4}, shards={"annotations_per_shard": 4}, max_failed_share=0.5)
    plan = plan_world(cfg.world)
    bad = SceneGraph.from_record(plan.records[2]).serialize()
    builder = laion_sg.CandidateBuilder(cfg, reward=_FailOn(build_reward(cfg.rewards), bad))
    s = build_candidates(plan, cfg, tmp_path, builder=builder, progress=False, log=lambda *_: None)
    ids = [json.loads(a)["img_id"] for a in load_candidates(tmp_path)["annotation"]]
    assert ids == [r.img_id for i, r in enumerate(plan.records) if i != 2]
    rej = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert rej == [{"kind": "failure", "img_id": plan.records[2].img_id, "stage": "scoring", "shard": 0,
                    "reason": "RuntimeError: backend crashed"}]
    assert s["annotations"] == {"input_valid": 4, "built": 3, "failed": 1}


def test_crash_leftovers_are_redone(built, tiny, split_file, tmp_path):
    """A temp file of a killed write and a shard whose manifest was never written: the rerun ignores the first,
    rebuilds the second, and ends with exactly the uninterrupted dataset."""
    ref, cfg, _ = built
    for f in ref.iterdir():
        if f.name.endswith(".parquet") or f.name == "build.json":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "shard-00000.json").write_bytes((ref / "index" / "shard-00000.json").read_bytes())
    (tmp_path / ".shard-00001.parquet.x.tmp").write_bytes(b"half a parquet file")
    (tmp_path / "shard-00001.parquet").write_bytes(b"garbage: no manifest, so not finished")
    assert laion_sg.sh.is_done(tmp_path, 0) and not laion_sg.sh.is_done(tmp_path, 1)
    with pytest.raises(FileNotFoundError, match="not finished"):
        load_candidates(tmp_path)
    s = build_candidates(plan_annotations(split_file), cfg, tmp_path, progress=False, log=lambda *_: None)
    assert rows(load_candidates(tmp_path)) == rows(load_candidates(ref))
    assert s["stale_temp_files_removed"] == 1 and not list(tmp_path.glob(".*.tmp"))


def test_resume_with_other_settings_is_refused(built, split_file):
    out, cfg, _ = built
    other = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"seed": 1})})
    with pytest.raises(ValueError, match="other settings.*config"):
        build_candidates(plan_annotations(split_file), other, out, progress=False, log=lambda *_: None)


def test_missing_world_model_names_the_fix(monkeypatch, tmp_path):
    from data_builders.config import ModelSection
    monkeypatch.setattr(laion_sg, "WORLD_MODEL", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="pass --model"):
        laion_sg.resolve_model_path(ModelSection())
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        laion_sg.resolve_model_path(ModelSection(path=str(tmp_path)))
