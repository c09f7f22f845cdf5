import json
import subprocess
import sys
from pathlib import Path

import pytest

from laion_sg_factory import MALFORMATIONS, write_mixed_split
from sgalign.scene_graph import LaionSGRecord, SplitFileError, load_split, validate_record, write_split

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "sgalign" / "scene_graph" / "data" / "laion_sg_card_example.json"


def test_card_example_round_trips_exactly(tmp_path):
    raw = json.loads(CARD.read_text())
    res = load_split(CARD)
    assert res.summary == "1 valid, 0 rejected"
    rec = res.records[0]
    assert isinstance(rec.img_id, str) and isinstance(rec.score, str)
    assert rec.score_value == pytest.approx(6.669650077819824)
    # field order and values survive: the dumped JSON is byte-identical
    assert json.dumps(rec.to_json_dict()) == json.dumps(raw[0])
    out = tmp_path / "again.json"
    write_split(res.records, out)
    assert json.loads(out.read_text()) == raw


def test_unknown_fields_are_kept_not_dropped():
    raw = json.loads(CARD.read_text())[0]
    raw["extra_note"] = "kept"
    rec = validate_record(raw)
    assert isinstance(rec, LaionSGRecord)
    assert rec.to_json_dict()["extra_note"] == "kept"


def test_1000_records_50_malformed(tmp_path):
    path = tmp_path / "split.json"
    expected = write_mixed_split(path)
    rejects_path = tmp_path / "rejects.jsonl"
    res = load_split(path, rejects_path=rejects_path)
    assert res.summary == "950 valid, 50 rejected"
    assert {r.index for r in res.rejects} == set(expected)
    for r in res.rejects:
        assert r.field == expected[r.index], (r.index, r.field, r.reason)
        assert r.reason
    # every kind of malformation occurred
    assert len(MALFORMATIONS) <= len(res.rejects)
    # nothing lost: valid records + rejects' raw records reassemble the input, index by index
    raws = json.loads(path.read_text())
    lines = [json.loads(l) for l in rejects_path.read_text().splitlines()]
    assert len(lines) == 50
    rebuilt = {i: rec.to_json_dict() for i, rec in zip(res.indices, res.records)}
    rebuilt.update({l["index"]: l["record"] for l in lines})
    assert [rebuilt[i] for i in range(1000)] == raws
    # each reject line names index, img_id, field and reason
    by_index = {l["index"]: l for l in lines}
    some = by_index[min(expected)]
    assert set(some) >= {"index", "img_id", "field", "reason", "errors", "record"}


def test_reasons_are_specific():
    raw = json.loads(CARD.read_text())[0]
    raw["relations"][1]["item1"] = 42
    rej = validate_record(raw, index=7)
    assert rej.index == 7 and rej.img_id == "482027"
    assert rej.field == "relations.1.item1" and "unknown item_id 42" in rej.reason
    raw = json.loads(CARD.read_text())[0]
    raw["img_id"] = 482027
    rej = validate_record(raw)
    assert rej.field == "img_id" and "string" in rej.reason and rej.img_id == "482027"


def test_relations_required_option():
    raw = json.loads(CARD.read_text())[0]
    raw["relations"] = []
    assert isinstance(validate_record(raw), LaionSGRecord)
    rej = validate_record(raw, require_relations=True)
    assert rej.field == "relations"


@pytest.mark.parametrize("content,msg", [("{not json", "not valid JSON"), ('{"a": 1}', "expected an array")])
def test_file_level_errors_name_the_file(tmp_path, content, msg):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(SplitFileError, match=msg) as exc:
        load_split(p)
    assert "bad.json" in str(exc.value)
    with pytest.raises(SplitFileError, match="no such file"):
        load_split(tmp_path / "missing.json")


def test_validate_sg_cli(tmp_path):
    path = tmp_path / "split.json"
    write_mixed_split(path)
    rejects = tmp_path / "r.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "validate_sg.py"), str(path), "--rejects",
                           str(rejects)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "950 valid, 50 rejected"
    assert "REJECT record" in proc.stdout
    assert len(rejects.read_text().splitlines()) == 50
    ok = subprocess.run([sys.executable, str(ROOT / "scripts" / "validate_sg.py"), str(CARD)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip().endswith("1 valid, 0 rejected")
