"""Pick-a-Pic v2 import: ties dropped, a corrupt image skips its pair, labels both ways come out winner first, the
three input layouts agree, relabel scores stored, and the trainer's t2i reader takes the output."""
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_builders.config import PickapicSection
from data_builders.pickapic import PICKAPIC_V2_COLUMNS, import_pickapic, load_pairs
from sgalign.rewards.backends import ScriptedSimilarity

# (label_0, label_1, corrupt side or None) per input row
ROWS = [(1.0, 0.0, None), (0.0, 1.0, None), (0.5, 0.5, None), (1.0, 0.0, 1), (0.0, 1.0, None), (1.0, 0.0, None)]
WINNER = {0: 0, 1: 1, 4: 1, 5: 0}  # input row -> winning side, for the rows that survive


def png(colour) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def table() -> pa.Table:
    cols = {c: [] for c in PICKAPIC_V2_COLUMNS}
    for i, (l0, l1, bad) in enumerate(ROWS):
        row = {"are_different": True, "best_image_uid": f"u{i}_{0 if l0 == 1 else 1}" if l0 != 0.5 else "",
               "caption": f"caption {i}", "created_at": "2023-05-01 00:00:00", "has_label": True,
               "image_0_uid": f"u{i}_0", "image_0_url": f"http://x/{i}_0.jpg", "image_1_uid": f"u{i}_1",
               "image_1_url": f"http://x/{i}_1.jpg", "jpg_0": png(10 * i), "jpg_1": png(10 * i + 5),
               "label_0": l0, "label_1": l1, "model_0": "sdxl", "model_1": "sd21", "ranking_id": 100 + i,
               "user_id": 7, "num_example_per_prompt": 1, "__index_level_0__": i}
        if bad is not None:
            row[f"jpg_{bad}"] = b"\x89PNG\r\n\x1a\n truncated"
        for c in PICKAPIC_V2_COLUMNS:
            cols[c].append(row[c])
    return pa.table(cols)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pickapic")
    t = table()
    pq.write_table(t, d / "one.parquet")
    (d / "shards").mkdir()
    pq.write_table(t.slice(0, 3), d / "shards" / "train-00000.parquet")
    pq.write_table(t.slice(3), d / "shards" / "train-00001.parquet")
    from datasets import Dataset
    Dataset(t).save_to_disk(str(d / "saved"))
    return d


def run(src, out, **cfg):
    return import_pickapic(src, PickapicSection(rows_per_shard=4, **cfg.pop("section", {})), out, rank=0,
                           world_size=1, progress=False, log=lambda *_: None, **cfg)


def test_ties_corrupt_and_winner_first(inputs, tmp_path):
    s = run(inputs / "one.parquet", tmp_path)
    assert s["pairs"] == 4 and s["ties_dropped"] == 1 and s["undecodable_pairs"] == 1
    assert s["swapped_to_winner_first"] == 2 and s["input_rows"] == 6
    ds = load_pairs(tmp_path)
    assert ds["source_row"] == [0, 1, 4, 5] and ds["swapped"] == [False, True, True, False]
    assert ds["label_0"] == [1.0] * 4 and ds["label_1"] == [0.0] * 4
    for row in ds:
        i, w = row["source_row"], WINNER[row["source_row"]]
        assert row["jpg_0"] == png(10 * i + 5 * w) and row["jpg_1"] == png(10 * i + 5 * (1 - w))
        assert row["image_0_uid"] == f"u{i}_{w}" == row["best_image_uid"]
        assert row["image_1_url"] == f"http://x/{i}_{1 - w}.jpg"
        assert (row["model_0"], row["model_1"]) == (("sdxl", "sd21") if w == 0 else ("sd21", "sdxl"))
    assert set(PICKAPIC_V2_COLUMNS) <= set(ds.column_names)
    rej = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert len(rej) == 1 and rej[0]["row"] == 3 and rej[0]["image"] == "jpg_1" and "pair skipped" in rej[0]["reason"]


def test_layouts_agree(inputs, tmp_path):
    outs = []
    for name in ("one.parquet", "shards", "saved"):
        run(inputs / name, tmp_path / name)
        outs.append(load_pairs(tmp_path / name).to_list())
    assert outs[0] == outs[1] == outs[2]


def test_missing_column_is_named(inputs, tmp_path):
    pq.write_table(table().drop(["created_at"]), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['created_at'\]"):
        run(tmp_path / "bad.parquet", tmp_path / "o")


def brightness(im, text):
    return float(np.asarray(im).mean()) / 255.0


def test_relabel_stores_both_scores(inputs, tmp_path):
    sim = ScriptedSimilarity(brightness, name="mean-brightness")
    s = run(inputs / "one.parquet", tmp_path / "label", similarity=sim, section={"relabel": {"name": "scripted"}})
    ds = load_pairs(tmp_path / "label")
    for row in ds:  # human label decides, scores follow their images
        i, w = row["source_row"], WINNER[row["source_row"]]
        assert row["ps_0"] == pytest.approx((10 * i + 5 * w) / 255) and row["ps_1"] == pytest.approx(
            (10 * i + 5 * (1 - w)) / 255)
    assert s["relabel"]["name"] == "mean-brightness" and s["score_columns"] == ["ps_0", "ps_1"]
    # winner_by score: the brighter image (side 1, +5) wins every pair, the tie row too; human labels kept
    run(inputs / "one.parquet", tmp_path / "score", similarity=sim,
        section={"relabel": {"name": "scripted"}, "winner_by": "score"})
    ds = load_pairs(tmp_path / "score")
    assert ds["source_row"] == [0, 1, 2, 4, 5]
    assert all(r["ps_0"] > r["ps_1"] and r["jpg_0"] == png(10 * r["source_row"] + 5) for r in ds)
    assert ds["human_label_0"] == [0.0, 1.0, 0.5, 1.0, 0.0]


def test_trainer_t2i_reader(inputs, tmp_path):
    from sgalign.training.data import PickapicPairs
    run(inputs / "one.parquet", tmp_path)
    src = PickapicPairs(tmp_path, score_columns=None)
    assert len(src.rows) == 4 and src.ties_dropped == 0
    out = load_pairs(tmp_path)
    it = src.stream()
    for _ in range(4):
        p = next(it)
        assert p.id_w.endswith("/0")  # winner first: image 0 always wins
        i = out[p.row]["source_row"]
        want = Image.open(io.BytesIO(png(10 * i + 5 * WINNER[i]))).convert("RGB")
        assert np.array_equal(np.asarray(p.image_w), np.asarray(want))
