"""The world Pick-a-Pic file (``build_pairs --source world-pickapic``) on the shipped world SD1.5-SG, 4 rows x 2 DDIM
steps: exact Pick-a-Pic v2 schema, labels = the world reward re-computed here on the stored images, uids, ties,
build_pairs --source pickapic and the trainer's t2i loader, and interrupted output never read as finished."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_builders.cli import main as build_pairs
from data_builders.pickapic import PICKAPIC_V2_COLUMNS
from sgalign.pair_schema import decode_image
from sgalign.training.data import PickapicPairs, load_table
from sgalign.world.paths import world_model_path
from data_builders.world_pickapic import (COLUMN_DTYPES, RECORD_FILE, TIE_BEST_IMAGE_UID, WorldPickapicConfig,
                                          build_world_pickapic, preference_labels)

pytestmark = pytest.mark.skipif(not (world_model_path() / "model_index.json").exists(),
                                reason="needs the shipped world SD1.5-SG")
ARGS = ["--source", "world-pickapic", "--n", "4", "--set", "world_pickapic.steps=2", "--set",
        "world_pickapic.rows_per_shard=2", "--set", "torch_threads=1", "--no-progress"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("wpp") / "pickapic"
    assert build_pairs(["--out", str(out), *ARGS]) == 0
    return out


def _table(out):
    return load_table(out).to_pandas()


def test_schema_is_exactly_pickapic_v2(built):
    assert list(COLUMN_DTYPES) == list(PICKAPIC_V2_COLUMNS) and len(PICKAPIC_V2_COLUMNS) == 19
    expect = {"bool": "bool", "string": "string", "binary": "binary", "float64": "double", "int64": "int64",
              "timestamp[ns]": "timestamp[ns]"}
    for shard in sorted(built.glob("shard-*.parquet")):
        schema = pq.read_schema(shard)
        assert schema.names == list(PICKAPIC_V2_COLUMNS)
        assert {f.name: str(f.type) for f in schema} == {c: expect[t] for c, t in COLUMN_DTYPES.items()}
    df = _table(built)
    assert len(df) == 4 and df["__index_level_0__"].tolist() == df["ranking_id"].tolist() == [0, 1, 2, 3]
    assert df["has_label"].all() and (df["model_0"] == "world-sd15-sg").all() and (df["model_1"] == df["model_0"]).all()
    assert (df["num_example_per_prompt"] == 1).all() and (df["image_0_url"] == "").all()
    for b in (*df["jpg_0"], *df["jpg_1"]):
        assert b[:2] == b"\xff\xd8" and decode_image(b).size == (64, 64)  # JPEG bytes of a 64 px world image
    assert (df["are_different"] == (df["jpg_0"] != df["jpg_1"])).all()


def test_labels_are_the_world_reward_of_the_stored_images(built):
    from sgalign.world.prompts import parse_world_prompt
    from sgalign.rewards import world_reward
    from sgalign.world import sample_split

    df = _table(built)
    # captions: the serialised train-split graphs, in order (evaluate --task t2i's prompt form)
    assert df["caption"].tolist() == [s.graph().serialize().strip() for s in sample_split("train", 4, seed=0)]
    imgs = [decode_image(b) for pair in zip(df["jpg_0"], df["jpg_1"]) for b in pair]
    graphs = [parse_world_prompt(c) for c in df["caption"] for _ in (0, 1)]
    r = np.array([s["reward"] for s in world_reward()(imgs, graphs).scores]).reshape(-1, 2)
    for (r0, r1), l0, l1 in zip(r, df["label_0"], df["label_1"]):
        want = (0.5, 0.5) if r0 == r1 else ((1.0, 0.0) if r0 > r1 else (0.0, 1.0))
        assert (l0, l1) == want
    rec = json.loads((built / RECORD_FILE).read_text())
    lab = rec["labels"]
    assert lab["wins_image_0"] == int((df["label_0"] == 1).sum()) and lab["ties"] == int((df["label_0"] == 0.5).sum())
    assert lab["wins_image_0"] + lab["wins_image_1"] + lab["ties"] == 4 and lab["tie_tolerance"] == 0.0
    assert rec["model"]["sha256"] and rec["generation"]["steps"] == 2 and "cpu" in rec["machine"]
    np.testing.assert_allclose([m for i in (0, 1) for m in json.loads(
        (built / "index" / f"shard-{i:05d}.json").read_text())["rewards"]], r)


def test_uids_and_best_image_uid(built):
    df = _table(built)
    uids = [*df["image_0_uid"], *df["image_1_uid"]]
    assert len(set(uids)) == 8
    for _, row in df.iterrows():
        want = {1.0: row["image_0_uid"], 0.0: row["image_1_uid"], 0.5: TIE_BEST_IMAGE_UID}[row["label_0"]]
        assert row["best_image_uid"] == want and row["label_0"] + row["label_1"] == 1.0


def test_tie_rule_and_ties_as_half():
    assert preference_labels(0.3, 0.3, 0.0) == (0.5, 0.5)
    assert preference_labels(0.30, 0.31, 0.02) == (0.5, 0.5)
    assert preference_labels(0.30, 0.31, 0.0) == (0.0, 1.0)
    assert preference_labels(0.5, 0.2, 0.1) == (1.0, 0.0)


def test_every_row_a_tie_under_a_wide_tolerance(tmp_path):
    out = tmp_path / "ties"
    rec = build_world_pickapic(out, WorldPickapicConfig(n=2, steps=2, tie_tolerance=1.0), progress=False,
                               log=lambda m: None)
    df = _table(out)
    assert (df["label_0"] == 0.5).all() and (df["label_1"] == 0.5).all()
    assert (df["best_image_uid"] == TIE_BEST_IMAGE_UID).all() and rec["labels"]["ties"] == 2
    # build_pairs drops ties (Diffusion-DPO convention): nothing left to train on, so the stage fails (exit 1)
    assert build_pairs(["--source", "pickapic", "--input", str(out), "--out", str(tmp_path / "p"),
                        "--no-progress"]) == 1
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["pairs"] == 0 and summary["ties_dropped"] == 2 and not (tmp_path / "p" / "index.json").exists()


def test_round_trip_through_build_pairs_and_the_t2i_loader(built, tmp_path):
    pairs = tmp_path / "pairs"
    assert build_pairs(["--source", "pickapic", "--input", str(built), "--out", str(pairs), "--set",
                        "pickapic.relabel={name: world-clip}", "--no-progress"]) == 0
    src = _table(built)
    summary = json.loads((pairs / "summary.json").read_text())
    untied = src[src["label_0"] != 0.5]
    assert summary["pairs"] == len(untied) and summary["ties_dropped"] == int((src["label_0"] == 0.5).sum())
    out = _table(pairs)
    assert (out["label_0"] == 1.0).all()  # winner first
    for _, row in out.iterrows():
        s = src.iloc[int(row["source_row"])]
        win = s["jpg_0"] if s["label_0"] == 1.0 else s["jpg_1"]
        assert row["jpg_0"] == win and row["best_image_uid"] == s["best_image_uid"] == row["image_0_uid"]
    ds = PickapicPairs(pairs, score_columns=["ps_0", "ps_1"])
    assert len(ds.rows) == len(untied)
    if len(ds.rows):
        pair = next(ds.stream())
        row = out.iloc[pair.row]  # the trainer sees the stored winner image and its world-CLIP score
        assert pair.prompt == row["caption"] and pair.score_w == pytest.approx(float(row["ps_0"]))
        assert np.array_equal(np.asarray(pair.image_w), np.asarray(decode_image(row["jpg_0"])))


def test_interrupted_output_is_never_taken_for_finished(built, tmp_path, capsys):
    import shutil

    out = tmp_path / "partial"
    shutil.copytree(built, out)
    # as killed after shard 0: shard 1's manifest and the final files missing, a stale temp file left
    (out / "index.json").unlink()
    (out / RECORD_FILE).unlink()
    (out / "index" / "shard-00001.json").unlink()
    (out / ".shard-00001.parquet.abc.tmp").write_bytes(b"half")
    with pytest.raises(ValueError, match="has not finished"):
        load_table(out)
    with pytest.raises(ValueError, match="has not finished"):
        PickapicPairs(out)
    assert build_pairs(["--source", "pickapic", "--input", str(out), "--out", str(tmp_path / "p"),
                        "--no-progress"]) == 2  # a user error: one line, exit 2
    shard0 = (out / "shard-00000.parquet").stat().st_mtime_ns
    assert build_pairs(["--out", str(out), *ARGS]) == 0  # the same command completes it; shard 0 is kept
    assert (out / "shard-00000.parquet").stat().st_mtime_ns == shard0
    assert not list(out.glob(".*.tmp")) and json.loads((out / "index.json").read_text())["complete"]
    a, b = _table(out), _table(built)
    assert a.drop(columns=["created_at"]).equals(b.drop(columns=["created_at"]))  # deterministic rows
    capsys.readouterr()
    assert build_pairs(["--out", str(out), *ARGS, "--set", "world_pickapic.steps=3"]) == 2
    assert "other settings" in capsys.readouterr().err
