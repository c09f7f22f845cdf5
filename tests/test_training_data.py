"""Data: the candidate-dataset schema and dynamic pairs, the Pick-a-Pic reader (ties, winners, undecodable pairs),
and the once-per-batch conditioning, which must equal sgalign.models.build_conditioning exactly."""
import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from sgalign.diffusion import cat_rows, zeros_like_cond
from sgalign.models import build_conditioning
from sgalign.pair_schema import candidate_features, decode_image
from sgalign.pipelines.tiny import tiny_components
from sgalign.scene_graph import SceneGraph
from sgalign.training.data import BatchStream, CandidatePairs, PickapicPairs, load_table
from sgalign.training.modeling import ConditionEncoder, Denoiser
from sgalign.training.synthetic import write_candidate_dataset, write_pickapic


def test_candidate_dataset_schema_and_dynamic_pairs(tmp_path):
    path = write_candidate_dataset(tmp_path / "c", rows=5, k=4, seed=3, corrupt=[(2, 1)])
    ds = load_table(path)
    assert ds.features == candidate_features(["dpg", "compbench_3in1"])
    row = ds[0]
    assert len(row["candidates"]) == len(row["seeds"]) == len(row["reward"]) == len(row["scores"]["dpg"]) == 4
    assert np.allclose(row["reward"], (np.array(row["scores"]["dpg"]) + row["scores"]["compbench_3in1"]) / 2)
    src = CandidatePairs(path, margin=0.02, seed=0, mode="all-pairs")
    pairs = list(itertools.islice(src.stream(), 30))
    for p in pairs:
        r = ds[p.row]["reward"]
        w, l = (int(i.split("/")[1]) - 1000 * p.row for i in (p.id_w, p.id_l))
        assert (p.score_w, p.score_l) == (r[w], r[l]) and r[w] - r[l] > 0.02
        assert isinstance(p.prompt, SceneGraph) and p.image_w.size == (16, 16)
    # pairs touching the corrupt candidate are skipped as pairs and reported with the row
    assert src.skipped and all(s["row"] == 2 and "candidate 1" in s["reason"] for s in src.skipped)
    assert not any(p.row == 2 and "/2001" in (p.id_w + p.id_l) for p in pairs)


def test_candidate_dataset_errors_name_the_row(tmp_path):
    from datasets import Dataset
    good = json.loads(load_table(write_candidate_dataset(tmp_path / "g", rows=1))[0]["annotation"])
    rows = {"annotation": [json.dumps(good), "{\"img_id\": 1}"], "candidates": [[b"x", b"y"]] * 2,
            "seeds": [[1, 2], [1]], "scores": [{"dpg": [0.1, 0.2]}] * 2, "reward": [[0.1, 0.2]] * 2,
            "provenance": ["{}"] * 2}
    Dataset.from_dict(rows, features=candidate_features(["dpg"])).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"row 1: \['seeds'\]"):
        CandidatePairs(tmp_path / "bad")
    rows["seeds"] = [[1, 2]] * 2
    Dataset.from_dict(rows, features=candidate_features(["dpg"])).save_to_disk(str(tmp_path / "bad2"))
    with pytest.raises(ValueError, match="row 1: annotation is not a valid LAION-SG record"):
        CandidatePairs(tmp_path / "bad2").graph(1)
    with pytest.raises(ValueError, match="missing column"):
        CandidatePairs(write_pickapic(tmp_path / "p.parquet", rows=2))


def test_pickapic_ties_winners_and_undecodable_pairs(tmp_path):
    path = write_pickapic(tmp_path / "p.parquet", rows=8, ties=[1, 5], corrupt=[3], scores=True, seed=4)
    df = pd.read_parquet(path)
    src = PickapicPairs(path, score_columns=["ps_0", "ps_1"])
    assert src.ties_dropped == 2 and len(src.rows) == 6
    stream = BatchStream(src, 1)
    seen = [stream.next()[0] for _ in range(5)]  # one epoch = 6 pairs, one undecodable
    assert sorted(p.row for p in seen) == [0, 2, 4, 6, 7]
    assert src.skipped == [{"row": 3, "reason": src.skipped[0]["reason"]}] and "jpg_1" in src.skipped[0]["reason"]
    for p in seen:
        r = df.iloc[p.row]
        win = 0 if r.label_0 == 1.0 else 1
        assert np.array_equal(np.asarray(p.image_w), np.asarray(decode_image(r[f"jpg_{win}"])))
        assert np.array_equal(np.asarray(p.image_l), np.asarray(decode_image(r[f"jpg_{1 - win}"])))
        assert (p.score_w, p.score_l) == (r[f"ps_{win}"], r[f"ps_{1 - win}"]) and p.prompt == r.caption


@pytest.mark.parametrize("arch", ["sd15-sg", "sdxl-sg"])
def test_batch_conditioning_equals_build_conditioning(arch):
    c = tiny_components(arch, gate_init=0.7)
    toks = [c["tokenizer"]] + ([c["tokenizer_2"]] if "tokenizer_2" in c else [])
    tes = [c["text_encoder"]] + ([c["text_encoder_2"]] if "text_encoder_2" in c else [])
    sgs = [SceneGraph.from_triples([("cube", ["red"]), ("ball", []), ("cone", ["big"])],
                                   [(0, "left of", 1), (2, "above", 1)]),
           SceneGraph.from_triples([("tile", ["blue"])], []), SceneGraph([])]
    want = build_conditioning(sgs, c["sg_encoder"], toks, tes, height=16, width=16)
    cond = ConditionEncoder(toks, tes, sg_mode="object", height=16, width=16).batch(sgs, [0, 1, 2])
    den = Denoiser(c["unet"], c["sg_encoder"], pad_with_eos_copies=True)
    kw = den.unet_kwargs(cond)
    # rows are text-encoded one at a time (batch-independent); build_conditioning encodes the batch: equal up to
    # float rounding of batched matmuls
    torch.testing.assert_close(kw["encoder_hidden_states"], want.prompt_embeds, atol=1e-5, rtol=0)
    assert (want.prompt_embeds - build_conditioning(sgs, None, toks, tes, height=16, width=16).prompt_embeds
            ).abs().max() > 1e-3  # the graph really contributes
    if arch == "sdxl-sg":
        torch.testing.assert_close(kw["added_cond_kwargs"]["text_embeds"], want.pooled_prompt_embeds, atol=1e-5, rtol=0)
        assert torch.equal(kw["added_cond_kwargs"]["time_ids"], want.add_time_ids)
    # guidance's zero branch is exactly zero embeddings (SDXL convention), time ids kept
    assert den.encoder_hidden_states(zeros_like_cond(cond)).abs().max() == 0
    # stacking rows (winners + losers) keeps each row's conditioning
    both = den.encoder_hidden_states(cat_rows([cond, cond]))
    assert torch.equal(both[:3], kw["encoder_hidden_states"]) and torch.equal(both[3:], kw["encoder_hidden_states"])


def test_unfinished_build_folder_is_refused(tmp_path):
    from sgalign.training.data import load_table

    (tmp_path / "build.json").write_text("{}")
    (tmp_path / "shard-00000.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="has not finished"):
        load_table(tmp_path)
